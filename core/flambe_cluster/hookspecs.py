"""The provider contract: every hook a provider may implement.

A provider is a module (or object) registered under the entry-point group
``flambe_cluster.providers``.  It implements hooks with the
``flambe_cluster.hookimpl`` marker; each Cluster builds its own plugin
manager holding exactly one provider plus the core's defaults
(:mod:`flambe_cluster.defaults`, registered ``trylast``).

Required hooks: :func:`flambe_cluster_options_class`,
:func:`flambe_cluster_validate`, :func:`flambe_cluster_load_instances`,
:func:`flambe_cluster_find_instances`.  Every other hook is optional.

Everything a provider may use is exported by :mod:`flambe_cluster.provider`
(the face); records passed across this boundary are its frozen classes, SDK
objects never cross it.  A hook that fails
raises a :class:`flambe_cluster.errors.FlambeClusterError` subclass whose
message names what failed and what to do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .progress import Progress
    from .records import ClusterInstances, CreatedResource, Instance, PlannedChange, TaggedCluster
    from .settings import ClusterConfig
    from .state import RunJournal

PROJECT = "flambe_cluster"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec(firstresult=True)
def flambe_cluster_options_class() -> type:
    """Return the class holding this provider's own options, declared with
    :func:`flambe_cluster.provider.config_class` (a provider whose class is
    not is refused when it is selected).

    Every key of the user's configuration that is not a common cluster field
    (``name``, ``factories_num``, ``key``, ``username``, ``setup_cmds``, ...)
    is passed to this class.  The core builds it and reports every problem at
    once: unknown keys (with the closest known name), missing required fields
    (those without default; metadata ``help`` says what they expect), and
    each converter or validator that raises ``ValueError``/``TypeError`` (its
    message should say what was expected and what was given).  Each
    converter runs once, by attrs.

    If the class has an attribute ``implied_factories_num`` (an int or
    ``None``), it is used when the user gave no ``factories_num``.
    Required.
    """
    raise NotImplementedError  # a specification: pluggy never calls it


@hookspec(firstresult=True)
def flambe_cluster_config_defaults(raw: dict[str, Any]) -> dict[str, Any] | None:
    """Return defaults for common fields the user may leave out (``key``, ``username``).

    Called with the user's raw mapping before it is validated; values the
    user gave always win.  A provider that manages its own machines (the
    ``local`` one) may create what the defaults point at (a client key in
    its state folder).  Optional.
    """


@hookspec
def flambe_cluster_validate(config: ClusterConfig) -> list[str]:
    """Return the problems that stop this cluster from running (may be empty).

    The seed's ``parse``.  Called after the options were built, before
    anything is created.  May look things up (credentials, instance types,
    images) but must not create, change or pay for anything.  Each problem is
    one sentence naming the field, what was expected and what was found; the
    core raises one ``ClusterConfigurationError`` listing all of them.
    Required.
    """
    raise NotImplementedError  # a specification: pluggy never calls it


@hookspec(firstresult=True)
def flambe_cluster_load_instances(
    config: ClusterConfig, journal: RunJournal, progress: Progress
) -> ClusterInstances:
    """Find or create the orchestrator and ``config.factories_num`` factories.

    The seed's ``load_all_instances``.  Idempotent: instances that already
    belong to this cluster are reused, only what is missing is created.
    Every resource created is passed to ``journal.record(...)`` as soon as it
    exists — before waiting on it, before returning — so a failure at any
    later point can be rolled back.  ``journal.run_id`` is unique to this run
    (use it for idempotency tokens).  Returns instances whose addresses are
    known; waiting for SSH is the core's job.  Required.

    ``progress(subject, state, *, done=None, total=None)`` (see
    :mod:`flambe_cluster.progress`) shows what happens while instances
    boot: call it with each instance's name (:func:`host_name`) and its
    state in a few words whenever that changes (``"launching"``,
    ``"pending (i-0abc)"``, ``"running"``); the command line shows a row per
    instance on a terminal and timestamped lines otherwise.  Report through
    it, never print.  An implementation that does not list ``progress``
    among its parameters is not given it (older providers keep working).
    """
    raise NotImplementedError  # a specification: pluggy never calls it


@hookspec(firstresult=True)
def flambe_cluster_find_instances(config: ClusterConfig) -> ClusterInstances | None:
    """Return the cluster's existing instances without creating anything.

    Used by ``status``, ``exec``, ``down`` and re-runs.  Returns ``None`` when
    the cluster does not exist (yet).  Never creates, starts or changes
    anything.  Required.
    """


@hookspec
def flambe_cluster_rollback(
    config: ClusterConfig, created: list[CreatedResource]
) -> None:
    """Destroy the resources one run created (the seed's ``rollback_env``).

    ``created`` is what that run recorded in its journal and has not been
    destroyed yet; nothing else may be touched.  Idempotent: a resource that
    is already gone is not an error.  Waits until the resources are gone.
    Optional (a provider that creates nothing has nothing to roll back).
    """


@hookspec
def flambe_cluster_terminate(config: ClusterConfig, instances: ClusterInstances | None) -> None:
    """Release the cluster's machines for ``down``.

    Cloud providers terminate the instances and anything attached to the
    cluster (alarms); providers of machines the user brought leave them
    running.  ``instances`` is ``None`` when the cluster could not be found
    whole (``find_instances`` raised, e.g. an idle alarm already terminated
    some factories): the provider then releases whatever of the cluster it
    can find.  Idempotent; waits until they are gone.  The machines whose
    records carry an ``instance_id`` are the ones destroyed: the command
    line asks before ``down`` on a terminal when there are any.  Optional.
    """


@hookspec
def flambe_cluster_release_instances(config: ClusterConfig, instances: list[Instance]) -> None:
    """Release factories that a resize removed from the cluster (``factories_num`` lowered, an address dropped).

    ``instances`` were factories of the cluster at its last ``up`` and are
    not among what :func:`flambe_cluster_load_instances` returned now; their
    Ray nodes are stopped already (or they did not answer).  Cloud providers
    terminate exactly these and remove what is attached to them alone (an
    idle alarm), and wait until they are gone; providers of machines the
    user brought leave them running.  Afterwards the core forgets them: their
    pinned host keys, and the journal records of their instance ids (a
    record of several keeps the others).  Idempotent: an instance already
    gone is not an error.  Optional.
    """


@hookspec(firstresult=True)
def flambe_cluster_idle_removed(config: ClusterConfig, instances: list[Instance]) -> list[Instance] | None:
    """Of ``instances`` (factories the provider no longer lists, or that no longer answer), return those that the
    cluster's own idle policy released (an idle alarm, an on-host watchdog).

    ``up --watch`` leaves those alone (and says so) instead of replacing
    them: the user asked for idle factories to go.  Read only; ``None`` or
    no implementation: none.  Optional.
    """


@hookspec
def flambe_cluster_configure_idle_shutdown(
    config: ClusterConfig,
    instances: ClusterInstances,
    journal: RunJournal,
    run: Callable[[Instance, str], str],
    map: Callable[..., dict[Instance, Any]],
) -> None:
    """Arrange for idle machines to be released when the client is gone (cloud providers).

    Called at the end of every successful ``up``, after Ray is running.
    Idempotent: a second ``up`` must not add a second alarm or watchdog.
    Anything created (an alarm) is passed to ``journal.record(...)``; it is
    removed by ``flambe_cluster_terminate``.  ``run(instance, command)``
    runs a shell command on a host and returns its stdout (for an on-host
    watchdog).  ``map(instances, action)`` runs ``action(instance)`` for
    every instance at once and returns ``{instance: result}`` (see
    :meth:`SSHPool.map <flambe_cluster.ssh.SSHPool.map>`): use it, not
    threads of your own, so an interrupt stops the work at once.  Optional.
    """


@hookspec(firstresult=True)
def flambe_cluster_detect_gpus(
    config: ClusterConfig, instance: Instance, run: Callable[[str], str]
) -> int | None:
    """Return how many GPUs ``instance`` can use, or ``None`` to let the next impl answer.

    ``run(command)`` runs a shell command on the host and returns its stdout
    (raising ``RemoteCommandError`` on failure).  The core's default counts
    the GPUs ``nvidia-smi`` lists over SSH: what a process on the host can
    really use.  A provider should not answer from the instance type (a GPU
    without its driver is no GPU to Ray); it states what the type promises
    with :func:`flambe_cluster_promised_gpus` instead.
    """


@hookspec(firstresult=True)
def flambe_cluster_promised_gpus(config: ClusterConfig, instance: Instance) -> int | None:
    """Return how many GPUs ``instance``'s type promises, or ``None`` when the provider cannot tell.

    Cloud providers answer from the instance type or accelerator
    configuration, without SSH; providers of machines the user brought
    answer nothing.  The GPUs Ray is told about always come from
    :func:`flambe_cluster_detect_gpus`: when a factory is promised GPUs and
    sees none (no NVIDIA driver), ``up`` fails naming the factory; when it
    sees fewer, a warning says so.  Optional.
    """


@hookspec(firstresult=True)
def flambe_cluster_place(config: ClusterConfig) -> dict[str, str] | None:
    """Return where the cluster lives beyond its name: the values that tell two clusters of one name apart.

    For example ``{"region": ..., "creator": ...}`` (AWS), ``{"project": ...,
    "zone": ...}`` (GCP), ``{"orchestrator": address}`` (machines the user
    brought).  The core records it in the cluster's state folder with the
    provider's name on the first ``up``, and refuses, before anything is
    touched, a file that names the same cluster in another place.  Computed
    from ``config`` alone: never calls an API.  Optional (default: none,
    the provider's name alone).
    """


@hookspec(firstresult=True)
def flambe_cluster_host_keys(config: ClusterConfig, instance: Instance) -> list[str] | None:
    """Return the host keys the provider vouches for, or ``None`` if it knows none.

    Each item is an OpenSSH public key line (``"ssh-ed25519 AAAA..."``), for
    example read from a cloud console's output.  When given, the host's key
    must be one of them on first contact, whatever the host-key policy.
    """


@hookspec(firstresult=True)
def flambe_cluster_sweep(where: dict[str, str]) -> list[TaggedCluster] | None:
    """Return every cluster with live machines carrying this provider's tags, for ``list --provider``.

    Needs no cluster file: ``where`` says where to look, from the command
    line (``{"region": "eu-west-1"}`` for ``--region``; empty: the
    provider's default place, e.g. the configured region).  One
    :class:`~flambe_cluster.records.TaggedCluster` per cluster name, with a
    command line that destroys its machines; the core shows those no state
    folder knows (leaks).  Looks only: never creates, changes or destroys
    anything.  Optional (a provider whose machines are the user's has
    nothing to sweep).
    """


@hookspec(firstresult=True)
def flambe_cluster_plan(config: ClusterConfig) -> list[PlannedChange] | None:
    """Return the changes to paid machines that ``up`` with ``config`` would make now, without making any.

    One :class:`~flambe_cluster.records.PlannedChange` per role and action:
    the machines ``load_instances`` would launch (what is missing, lost ones
    included) and those ``up`` would terminate (factories beyond
    ``factories_num``), each with its :class:`~flambe_cluster.records.Offer`
    (type, market, price per hour).  An empty list: ``up`` changes no paid
    machine.  Looks only (describe calls, price lookups): never creates,
    changes or destroys anything.  The core prints the plan before such an
    ``up``, asks on a terminal, and ``up --dry-run`` prints it and stops.
    A provider that creates machines records each one's offer in its journal
    entry (``details`` gets :meth:`Offer.details`), from which the core
    computes what a cluster has cost.  Optional (machines the user brought
    cost nothing to plan).
    """
