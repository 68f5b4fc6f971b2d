"""The generic Cluster and the seed's classes: the seed's API, driven by one provider's hooks.

:class:`Cluster` owns the lifecycle — building from the seed's parameters,
a configuration or a YAML file, bringing a cluster up, rolling back what a
failed run created, taking it down, the context manager — and the instance
objects (:mod:`~flambe_cluster.handles`); every other operation of the seed
comes from :class:`~flambe_cluster.operations.ClusterOperations`, one-line
delegations to the layers below.  :class:`SSHCluster`, :class:`AWSCluster`
and :class:`GCPCluster` take the seed's parameters in its order and pick
their provider, still found through its entry point.  The provider finds or
creates machines; everything done on the machines is done the same way for
every provider.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import attrs
import pluggy

from . import costs, hostfiles, hostlock, keys, plugins, raycluster, repair, resize, secrets, setupsteps
from .config import load_config, parse_config, provider_of, read_config_file
from .errors import ClusterBusyError, FlambeClusterError, UsageError
from .handles import InstanceHandle, handle, record_of
from .operations import ClusterOperations
from .progress import Progress
from .providerhooks import ProviderHooks
from .records import Instance, PlannedChange, Role, factory_name, orchestrator_name
from .session import HostSession, cluster_key_name
from .settings import ClusterConfig
from .ssh import SSHPool
from .state import ClusterState, RunJournal
from .sync import UPLOAD_WARN_LIMIT_MB

logger = logging.getLogger(__name__)

#: The port Flambé's seed classes give the Ray head (its ``Experiment`` connects there).
FLAMBE_RAY_PORT = 12345

REMOTE_DIRS = ("extensions",)


class Cluster(ClusterOperations):
    """One orchestrator and ``factories_num`` factories, on any provider.

    Build it from a validated :class:`ClusterConfig`, from the seed's keyword
    parameters (``Cluster(name=..., factories_num=..., key=..., username=...,
    provider="ssh", orchestrator_ip=..., ...)``) or from a YAML file
    (:meth:`from_yaml`).  A cluster holds exactly one plugin manager (the
    provider plus the core's defaults).  Use it as a context manager: on an
    error inside the block it rolls back what this run created, logs the
    error, keeps it in :attr:`error` and suppresses it (the seed's contract);
    library code never exits the process.
    """

    UPLOAD_WARN_LIMIT_MB = UPLOAD_WARN_LIMIT_MB
    #: The provider a seed subclass (``SSHCluster``, ...) stands for; YAML files naming it load as that class.
    PROVIDER: str | None = None
    _classes: ClassVar[dict[str, type[Cluster]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.PROVIDER is not None:
            Cluster._classes.setdefault(cls.PROVIDER, cls)

    def __init__(self, name: str, factories_num: int, key: str, username: str, setup_cmds: list[str] | None = None,
                 *, provider: str | None = None, plugin_manager: pluggy.PluginManager | None = None,
                 **options: Any) -> None:
        """The seed's constructor.  ``provider`` defaults to ``local`` (this machine), or to ``given`` for a
        0.4-style subclass that lists its machines itself (see :meth:`lists_its_machines`)."""
        provider = provider or ("given" if self.lists_its_machines() else "local")
        self._configure(dict(provider=provider, name=name, factories_num=factories_num, key=key, username=username,
                             setup_cmds=setup_cmds, **options), plugin_manager)

    @classmethod
    def lists_its_machines(cls) -> bool:
        """Whether this class is a 0.4-style subclass: it overrides :meth:`load_all_instances` (assigning
        :attr:`orchestrator` and :attr:`factories`) and names no provider.  Its machines are then the ones it
        lists, for ``down``, ``status`` and the watch too (:meth:`find_instances` calls it); nothing is created
        or destroyed here.  A class whose ``load_all_instances`` creates machines overrides
        :meth:`find_instances` too, so that looking never creates."""
        return cls.PROVIDER is None and cls.load_all_instances is not Cluster.load_all_instances

    def _configure(self, raw: dict[str, Any], plugin_manager: pluggy.PluginManager | None) -> None:
        """Validate the seed's parameters (``None`` meaning "the default") and adopt the configuration.

        Ray listens on Flambé's port, :data:`FLAMBE_RAY_PORT`, unless ``ray_port`` is given (Flambé's
        ``Experiment`` dials it); a cluster file keeps Ray's own default."""
        raw = {k: v for k, v in raw.items() if v is not None}
        raw.setdefault("ray_port", FLAMBE_RAY_PORT)
        plugin_manager = plugin_manager or plugins.make_plugin_manager(provider_of(raw))
        self._adopt(parse_config(raw, manager=plugin_manager), plugin_manager)

    def _adopt(self, config: ClusterConfig, plugin_manager: pluggy.PluginManager) -> None:
        self.plugin_manager = plugin_manager
        self.session = HostSession(config, ProviderHooks(plugin_manager),
                                   ClusterState.for_cluster(config.name, config.state_dir))
        self.error: BaseException | None = None
        self._rolled_back_for: BaseException | None = None  # the error a rollback already answered
        self._held: contextlib.ExitStack | None = None  # locks taken on the hosts by the running step
        # What Flambé's runner sets on every Runnable (flambe.runnable.Runnable), the cluster included:
        self.secrets = secrets.parse("")  # Flambé's `config`: the secrets (keys as written), see inject_secrets
        self.extensions: dict[str, str] = {}
        self.content: str | None = None
        self.user_provider: Callable[[], str] = getpass.getuser
        self.debug = False

    # --- what Flambé's runner calls on a Runnable

    def inject_secrets(self, secrets: str) -> None:
        """Read the secrets file ``secrets`` (an INI file) into :attr:`secrets`; :meth:`send_secrets` then sends
        them."""
        self.secrets.read(secrets)

    def inject_content(self, content: str) -> None:
        """Keep the YAML text the cluster was made from (:attr:`content`)."""
        self.content = content

    def inject_extensions(self, extensions: dict[str, str]) -> None:
        """Keep the extensions of the run (:attr:`extensions`)."""
        self.extensions = extensions

    @classmethod
    def from_config(cls, config: ClusterConfig, plugin_manager: pluggy.PluginManager | None = None) -> Cluster:
        """The cluster of a validated configuration (as the seed class of its provider, when called on Cluster)."""
        chosen = cls._classes.get(config.provider, cls) if cls is Cluster else cls
        cluster = chosen.__new__(chosen)
        cluster._adopt(config, plugin_manager or plugins.make_plugin_manager(config.provider))
        return cluster

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], validate: bool = True) -> Cluster:
        """A cluster described by a YAML file (``provider:`` key or a seed tag such as ``!SSHCluster``).

        ``validate=False`` skips the provider's (possibly online) validation:
        for commands on a cluster that already exists.
        """
        raw = read_config_file(path)  # read once: the provider's name and the configuration come from one text
        manager = plugins.make_plugin_manager(provider_of(raw, str(path)))
        return cls.from_config(parse_config(raw, source=str(path), validate=validate, manager=manager), manager)

    # --- the seed's fields, and what the session holds

    config = property(lambda self: self.session.config, doc="The validated configuration.")
    hooks = property(lambda self: self.session.hooks, doc="The provider's hooks (and the core's defaults), typed.")
    state = property(lambda self: self.session.state, doc="The cluster's local state folder.")
    name = property(lambda self: self.config.name)
    factories_num = property(lambda self: self.config.factories_num)
    key = property(lambda self: self.config.key)
    username = property(lambda self: self.config.username)
    setup_cmds = property(lambda self: list(self.config.setup_cmds))

    @property
    def orchestrator(self) -> InstanceHandle | None:
        """The orchestrator's :class:`OrchestratorInstance` (None before loading).

        Assignable, as a 0.4-style subclass's ``load_all_instances`` does
        (``self.orchestrator = self.get_orchestrator(ip)``)."""
        return handle(self.session.orchestrator, self.session)

    @orchestrator.setter
    def orchestrator(self, host: Instance | InstanceHandle | None) -> None:
        self.session.orchestrator = None if host is None else record_of(host)

    @property
    def factories(self) -> list[InstanceHandle]:
        """The factories' :class:`FactoryInstance` objects (empty before loading); assignable (a list), as
        :attr:`orchestrator` is.  Factories all named by :meth:`get_factory_basename` get their index appended."""
        return [h for h in (handle(f, self.session) for f in self.session.factories) if h is not None]

    @factories.setter
    def factories(self, hosts: list[Instance | InstanceHandle]) -> None:
        base = self.get_factory_basename()
        records = [record_of(h) for h in hosts]
        self.session.factories = [attrs.evolve(r, name=f"{base}{i}") if r.name == base else r
                                  for i, r in enumerate(records)]
    pool: SSHPool = property(lambda self: self.session.pool, doc="The cluster's SSH connections.")  # type: ignore[assignment]
    journal: RunJournal = property(lambda self: self.session.journal, doc="This run's journal.")  # type: ignore[assignment]
    remote_key_name = property(lambda self: cluster_key_name(self.name))

    @property
    def on_step(self) -> Callable[[str], None]:
        """Receives one line per step of a long operation (default: the log)."""
        return self.session.on_step

    @on_step.setter
    def on_step(self, callback: Callable[[str], None]) -> None:
        self.session.on_step = callback

    @property
    def on_progress(self) -> Progress:
        """Receives what happens inside a step, per host (see :mod:`flambe_cluster.progress`; default: the debug
        log)."""
        return self.session.on_progress

    @on_progress.setter
    def on_progress(self, callback: Progress) -> None:
        self.session.on_progress = callback

    # --- names and instance records

    def get_orchestrator_name(self) -> str:
        """The orchestrator's name: ``<name>_orchestrator``."""
        return orchestrator_name(self.name)

    def get_factory_basename(self) -> str:
        """The factories' base name: ``<name>_factory`` (append an index per factory)."""
        return factory_name(self.name)

    def get_orchestrator(self, ip: str, private_ip: str | None = None, use_public: bool = True) -> InstanceHandle:
        """The :class:`OrchestratorInstance` of the host at ``ip`` (``private_ip`` defaults to ``ip``)."""
        return self._handle(Instance.at(Role.ORCHESTRATOR, self.get_orchestrator_name(), ip, private_ip, use_public,
                                        gpus=0))

    def get_factory(self, ip: str, private_ip: str | None = None, use_public: bool = True) -> InstanceHandle:
        """The :class:`FactoryInstance` of a CPU factory (no GPUs) at ``ip``."""
        return self._handle(Instance.at(Role.FACTORY, self.get_factory_basename(), ip, private_ip, use_public, gpus=0))

    def get_gpu_factory(self, ip: str, private_ip: str | None = None, use_public: bool = True) -> InstanceHandle:
        """The :class:`FactoryInstance` of a factory known to have GPUs (their count is still to be detected)."""
        return self._handle(Instance.at(Role.FACTORY, self.get_factory_basename(), ip, private_ip, use_public,
                                        gpus=None))

    def _handle(self, record: Instance) -> InstanceHandle:
        made = handle(record, self.session)
        assert made is not None
        return made

    def all_hosts(self) -> list[Instance]:
        """The orchestrator followed by every factory (raises ClusterError before loading)."""
        return self.session.hosts()

    def _get_all_hosts(self) -> list[Instance]:
        """The seed's name for :meth:`all_hosts`."""
        return self.session.hosts()

    # --- lifecycle

    def load_all_instances(self) -> None:
        """Find or create every instance through the provider (idempotent; creations journaled)."""
        self._check_place(record=True)
        self.on_step(f"finding or creating {1 + self.factories_num} instances ({self.config.provider})")
        self.session.set_instances(self.hooks.load_instances(self.config, self.journal, self.on_progress))

    def find_instances(self) -> bool:
        """Load the existing instances without creating anything; False if the cluster does not exist."""
        if self.lists_its_machines():
            self.load_all_instances()
            return True
        self._check_place(record=False)
        instances = self.hooks.find_instances(self.config)
        if instances is None:
            return False
        self.session.set_instances(instances)
        return True

    def place(self) -> dict[str, str]:
        """Where this cluster lives: the provider's name and its ``flambe_cluster_place`` (no API is called)."""
        return {"provider": self.config.provider, **(self.hooks.place(self.config) or {})}

    def _check_place(self, record: bool) -> None:
        """Refuse, before the provider is asked anything, a file naming this cluster in another place than the
        one its state folder records (provider and ``flambe_cluster_place``) while that cluster is in use there
        (members recorded, or resources not destroyed); ``record`` remembers the place."""
        place = self.place()
        in_use = self.state.members() is not None or bool(self.state.journal.outstanding())
        self.state.check_place(place, record, in_use)

    def wait_until_accessible(self) -> None:
        """Connect to every host (one deadline for all); raises naming each host that failed."""
        hosts = self.all_hosts()
        self.on_step(f"connecting to {len(hosts)} hosts")
        self.pool.connect_all(hosts, lambda name, state: self.on_progress(name, state))

    def run(self, force: bool = False, **kwargs: Any) -> None:
        """Make the cluster ready for work, as the seed's ``run``: load, connect, keys, folders, setup, software.

        Ray is not started (Flambé starts it with :meth:`launch_ray_cluster`;
        :meth:`up` does everything).  Idempotent: on a cluster that is
        already prepared it reuses the instances, the key pair and the
        environments, and runs on each host only the setup commands it has
        not completed as they read now (:mod:`flambe_cluster.setupsteps`;
        ``rerun_setup=True`` runs them all again).  With
        ``force`` (the seed's flag) a running job is stopped.  Holds the
        cluster's lock for its whole duration, a rollback after a failure
        included, so another process never reuses what is being rolled back.
        ``lock_wait`` (seconds) waits for another process's lock.
        """
        self.refuse_past_max_cost()
        self._locked(lambda: self._prepare(lock_wait=float(kwargs.get("lock_wait", 0.0)),
                                           rerun_setup=bool(kwargs.get("rerun_setup", False))), force, kwargs)

    def up(self, force: bool = False, confirm: Callable[[str], bool] | None = None,
           approve: Callable[[list[PlannedChange]], bool] | None = None, **kwargs: Any) -> None:
        """:meth:`run`, then the Ray cluster and the provider's idle shutdown: what ``flambe-cluster up`` does.

        ``confirm(question)``, when given, is asked before factories are
        removed while a job runs (see :func:`flambe_cluster.resize.shrink`);
        a no leaves the cluster as it is and raises :class:`UsageError`.
        ``approve(changes)``, when given, gets the changes to paid machines this
        ``up`` will make (:meth:`plan`), under the cluster's lock and before
        anything changes (not called when there are none); a no raises
        :class:`UsageError`, nothing changed.  Refused past ``max_cost``.
        """
        self.refuse_past_max_cost()
        self._locked(lambda: self._up(confirm, float(kwargs.get("lock_wait", 0.0)), approve,
                                      bool(kwargs.get("rerun_setup", False))), force, kwargs)

    def plan(self) -> list[PlannedChange]:
        """The changes to paid machines :meth:`up` would make now (launches, terminations, with their prices).

        The provider's ``flambe_cluster_plan``, its terminations narrowed to
        the factories this state folder records as members (those ``up``
        removes); empty when it plans nothing (machines the user brought).
        Looks only: changes nothing.
        """
        self._check_place(record=False)
        changes = self.hooks.plan(self.config)
        members = {h.instance_id for h in self.state.members() or () if h.instance_id}
        planned = []
        for change in changes:
            if change.action == "terminate":  # up removes only factories it recorded as members (resize.shrink)
                ids = [i for i in change.names if i in members]
                if not ids:
                    continue
                change = attrs.evolve(change, count=len(ids), names=ids)
            planned.append(change)
        return planned

    def cost_so_far(self) -> float:
        """USD the cluster's machines have cost since its last ``down``, by its journal (see
        :mod:`flambe_cluster.costs`)."""
        return costs.total_usd(costs.since_last_down(self.state.journal.entries()))

    def reconcile_record(self) -> None:
        """Record as destroyed, now, the machines the journal still counts that the provider no longer lists
        (ended by an idle alarm, a watchdog, a spot interruption), so that their cost stops.

        Only the provider's listing is read; when it cannot list the cluster whole (an error, an incomplete
        cluster) the record is left as it is (it then errs high).  The machines' resources stay in the
        provider's hands: ``down`` still finds what exists by its tags.
        """
        recorded = costs.bought(self.state.journal.entries())
        if not recorded:
            return
        try:
            found = self.hooks.find_instances(self.config)
        except FlambeClusterError:
            return
        listed = {h.instance_id for h in ([found.orchestrator, *found.factories] if found else [])}
        gone = set(recorded) - listed
        if gone:
            logger.info("cluster %r: %d recorded machines are gone (%s); their cost stops", self.name, len(gone),
                        ", ".join(sorted(gone)))
            self.state.journal.forget_instances(gone)

    def past_max_cost(self) -> str | None:
        """Why the cluster may cost no more (the file's ``max_cost`` reached by the recorded cost since the last
        ``down``, once the record is reconciled with the provider's listing), or None.  Machines of unknown
        price count nothing: a warning names their types."""
        limit = self.config.max_cost
        if limit is None:
            return None
        self.reconcile_record()
        entries = costs.since_last_down(self.state.journal.entries())
        unpriced = sorted({m.offer.instance_type for m in costs.bought(entries).values()
                           if m.offer.usd_per_hour is None})
        if unpriced:
            logger.warning("cluster %r: max_cost counts only machines of known price; %s has none: add it to "
                           "prices: in the cluster file (USD per hour; 'TYPE spot' for spot)", self.name,
                           ", ".join(unpriced))
        spent = costs.total_usd(entries)
        if spent < limit:
            return None
        return (f"cluster {self.name!r} has cost ${spent:.2f} since it was brought up, by its record, which reaches "
                f"its max_cost of ${limit:.2f}")

    def refuse_past_max_cost(self) -> None:
        """Raise UsageError when the file sets ``max_cost`` and the recorded cost has reached it."""
        reason = self.past_max_cost()
        if reason:
            raise UsageError(f"{reason}; nothing was changed. Raise max_cost in the cluster file to go on, or take "
                             "the cluster down with `flambe-cluster down` (a later up starts a new budget)")

    def watch(self, interval: float = 30.0, lost_after: float | None = None, rounds: int | None = None,
              since: float | None = None) -> None:
        """Keep the cluster whole until interrupted: replace lost factories and join them to Ray (see
        :mod:`~flambe_cluster.repair`).  A ``down`` after ``since`` (a :func:`time.time`; default now) ends it;
        so does the cluster's recorded cost reaching the file's ``max_cost``, after taking it down."""
        def locked_repair(before: Callable[[], None]) -> None:
            def step() -> None:
                before()
                self._up(setup_new_only=True)  # never the healthy hosts' setup, under a running job
            self._locked(step, False, {})

        def down_past_max_cost() -> bool:
            reason = self.past_max_cost()
            if reason:
                self.on_step(f"{reason}: taking it down (max_cost in the cluster file)")
                self.down()
            return reason is not None

        find = ((lambda: self.session.instances() if self.find_instances() else None)
                if self.lists_its_machines() else None)
        repair.watch(self.session, locked_repair, interval, lost_after, rounds, since, self._rereader(), find,
                     down_past_max_cost)

    def _rereader(self) -> Callable[[], ClusterConfig | None] | None:
        """For the watch: the cluster file's configuration when the file changed since the last call (or
        ``always``), else None (None when the cluster was not made from a file)."""
        source = self.config.source
        if not source or not os.path.isfile(source):
            return None
        last = [Path(source).read_bytes()]

        def reread(always: bool = False) -> ClusterConfig | None:
            data = Path(source).read_bytes()
            if data == last[0] and not always:
                return None
            last[0] = data
            return load_config(source, manager=self.plugin_manager)
        return reread

    @contextlib.contextmanager
    def locked(self, wait: float = 0.0) -> Iterator[None]:
        """Hold the cluster's lock for the block, waiting up to ``wait`` seconds for another process's (and saying
        so)."""
        with self.state.lock(wait=wait, on_wait=self._waiting_for("", wait)):
            yield

    def _waiting_for(self, whom: str, wait: float = 0.0) -> Callable[[str], None]:
        """What to say while waiting for ``holder`` (``whom``: who that is) to release the cluster."""
        def waiting(holder: str) -> None:
            self.on_step(f"waiting up to {wait:g} s for {holder}{f' ({whom})' if whom else ''} to release "
                         f"cluster {self.name!r}")
        return waiting

    def _locked(self, step: Callable[[], None], force: bool, kwargs: dict[str, Any]) -> None:
        """Run ``step`` under the lock; on any failure or interrupt stop all work, then roll back, still locked.

        Closing the connections first ends the commands other threads are
        running (they fail at once), so nothing of this run goes on during
        or after the rollback; the lock on the orchestrator (its own
        connection) is let go only after the rollback.  The error is
        remembered as rolled back: :meth:`__exit__` does not roll back a
        second time.  When another client holds the orchestrator's lock
        (:class:`ClusterBusyError`), nothing is rolled back: that client may
        have adopted what this run created (it stays journaled; ``down``
        removes it).
        """
        with self.locked(float(kwargs.get("lock_wait", 0.0))), contextlib.ExitStack() as held:
            self._held = held  # what _prepare takes on the hosts (the orchestrator's lock), let go after a rollback
            try:
                step()
                if force:
                    self.shutdown_flambe_execution()
            except ClusterBusyError as exc:  # another client prepares the hosts: what this run made may be theirs
                self.close()
                self._rolled_back_for = exc
                raise
            except BaseException as exc:
                self.close()
                self._rollback_keeping_error()
                self._rolled_back_for = exc
                raise
            finally:
                self._held = None

    def _prepare(self, start_ray: bool = False, confirm: Callable[[str], bool] | None = None,
                 lock_wait: float = 0.0, rerun_setup: bool = False, setup_new_only: bool = False) -> None:
        """What :meth:`run` does; with ``start_ray`` the Ray nodes start as their hosts become ready (:meth:`up`);
        ``confirm`` as for :meth:`up`.  Holds the cluster's lock on the orchestrator once it is loaded, waiting
        up to ``lock_wait`` seconds for another client's (see :mod:`flambe_cluster.hostlock`).  Each host runs
        the setup commands it has not completed (all of them with ``rerun_setup``; with ``setup_new_only``, a
        repair's, only hosts without a record; see :mod:`flambe_cluster.setupsteps`)."""
        self.load_all_instances()
        self.wait_until_accessible()
        assert self._held is not None, "runs under _locked, which lets go of the lock after a rollback"
        self._held.enter_context(hostlock.held(self.session, lock_wait, self._waiting_for("another client", lock_wait)))
        resize.shrink(self.session, confirm)  # factories no longer in the cluster: drained, released, forgotten
        if start_ray and not self.setup_cmds:  # the head's answer cannot change before the Ray launch asks
            raycluster.ask_head_early(self.session)
        if self.cluster_has_key():
            self.on_step("cluster key already on every host")
        else:
            self.distribute_keys()
        self.create_dirs(list(REMOTE_DIRS))
        setupsteps.run(self.session, self.setup_cmds, rerun=rerun_setup, new_only=setup_new_only)
        self._prepare_software(start_ray)

    def _up(self, confirm: Callable[[str], bool] | None = None, lock_wait: float = 0.0,
            approve: Callable[[list[PlannedChange]], bool] | None = None, rerun_setup: bool = False,
            setup_new_only: bool = False) -> None:
        if approve is not None:
            changes = self.plan()  # under the cluster's lock: what is approved is what this up does
            if changes and not approve(changes):
                raise UsageError(f"cluster {self.name!r} was left as it is: nothing was launched or terminated "
                                 "(`up -y` goes ahead without asking)")
        self._prepare(start_ray=True, confirm=confirm, lock_wait=lock_wait, rerun_setup=rerun_setup,
                      setup_new_only=setup_new_only)
        self.hooks.configure_idle_shutdown(self.config, self.session.instances(), self.journal,
                                           lambda host, command: self.pool.run(host, command).stdout, self.pool.map)

    def _rollback_keeping_error(self) -> None:
        """Roll back after a failure; a failing rollback is logged, the original error stays the one raised."""
        try:
            self.rollback_env()
        except Exception as rollback_error:  # noqa: BLE001 - reported; the run's own error is what the user sees
            logger.error("rollback of cluster %r failed: %s", self.name, rollback_error)

    def _loaded(self) -> list[Instance]:
        """The instances loaded so far (empty before loading)."""
        return self.session.hosts() if self.session.orchestrator is not None else []

    def rollback_env(self) -> None:
        """Destroy what this run created (per the journal) through the provider; idempotent."""
        if self.session.run_journal is None:
            return
        created = self.journal.created()
        if not created:
            return
        self.on_step(f"rolling back {len(created)} resources created by this run")
        self.hooks.rollback(self.config, created)
        self.journal.journal.record_destroyed(created, run_id=self.journal.run_id)
        destroyed = {r.resource_id for r in created} | {i for r in created for i in r.details.get("instance_ids", ())}
        gone = [h for h in self._loaded() if h.instance_id in destroyed]
        self.session.forget_host_keys(gone)
        self.state.drop_members(gone)

    def down(self, wait: float = 0.0) -> bool:
        """Stop the job and Ray on every host, then release the machines through the provider.

        Returns False when the cluster does not exist and the journal holds
        nothing of it (otherwise the provider is still asked to release what
        is left, e.g. alarms of instances an idle alarm terminated).  When the provider
        manages the machines (every instance has an ``instance_id``), stopping
        the job and Ray is best effort — a stopped or unreachable machine is
        terminated anyway — and a cluster found incomplete is still released;
        machines the user brought must be reachable.  Terminated machines'
        pinned host keys are forgotten (their addresses may be reused); the
        journal records everything as destroyed.  Holds the cluster's lock
        (waiting up to ``wait`` seconds for another process's).
        """
        with self.locked(wait):
            try:
                exists = self.find_instances()
            except UsageError:  # a cluster of this name elsewhere (see _check_place): refused, never "incomplete"
                raise
            except FlambeClusterError as incomplete:
                self.on_step(f"the cluster is incomplete ({incomplete}); releasing what is left")
                exists = None
            if exists is False and not self.state.journal.outstanding():
                return False
            self.state.ensure().journal.record_down()  # a watch of this cluster ends, creating nothing again
            if exists:
                self._stop_everything()
            self.on_step(f"releasing the hosts ({self.config.provider})")
            self.hooks.terminate(self.config, self.session.instances() if exists else None)
            self.close()
            self.session.forget_host_keys([h for h in self._loaded() if h.instance_id is not None])
            journal = self.state.journal
            journal.record_destroyed(journal.outstanding())
            self.state.drop_members()
            self.state.forget_key_pair()  # a cluster made again gets a new one
            self.state.forget_place()
            return True

    def _stop_everything(self) -> None:
        """Stop the job, remove the secrets it was sent, stop Ray, revoke the cluster key; best effort (with a short
        connect deadline) on machines about to be terminated."""
        self.on_step("stopping the job and Ray")

        def stop() -> None:
            self.shutdown_flambe_execution()
            hostfiles.remove_secrets(self.session)
            self.shutdown_ray_cluster()
            keys.revoke(self.session, self.session.hosts())

        if not all(h.instance_id is not None for h in self.all_hosts()):
            stop()
            return
        try:
            with self.pool.connect_within(15.0):
                stop()
        except FlambeClusterError as exc:
            logger.warning("could not stop the job and Ray before terminating (%s); terminating anyway", exc)
            self.on_step("some hosts did not answer; terminating them anyway")

    def close(self) -> None:
        """Close the SSH connections (idempotent)."""
        self.session.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        """Roll back on error, log it, keep it in :attr:`error` and suppress it (the seed's contract).

        An interrupt (``KeyboardInterrupt``, ``SystemExit``) is rolled back
        too, then goes on: the program is meant to stop.  An error that
        :meth:`run` or :meth:`up` already rolled back (under the lock) is not
        rolled back again.
        """
        try:
            if exc_value is not None:
                self.error = exc_value
                logger.error("cluster %r failed: %s", self.name, exc_value or type(exc_value).__name__)
                if exc_value is not self._rolled_back_for:
                    self.close()
                    self._rollback_keeping_error()
        finally:
            self.close()
        return isinstance(exc_value, Exception)


class SSHCluster(Cluster):
    """Machines you already have, reached over SSH: the seed's ``SSHCluster``, parameters in its order.

    ``orchestrator_ip`` and each of ``factories_ips`` is an address (``ip``,
    ``ip:port``) or ``[public, private]``.  ``remote_context`` is Flambé's
    (it names the cluster's save folder there); it is kept as
    :attr:`remote_context` and changes nothing here.
    """

    PROVIDER = "ssh"

    def __init__(self, name: str, orchestrator_ip: Any, factories_ips: list[Any], key: str, username: str,
                 remote_context: Any = None, use_public: bool = True, setup_cmds: list[str] | None = None,
                 **options: Any) -> None:
        self.remote_context = remote_context
        self._configure(dict(provider=self.PROVIDER, name=name, orchestrator_ip=orchestrator_ip,
                             factories_ips=list(factories_ips), key=key, username=username, use_public=use_public,
                             setup_cmds=setup_cmds, **options), None)


class AWSCluster(Cluster):
    """EC2 instances made for the cluster: the seed's ``AWSCluster``, parameters in its order and with its defaults.

    A parameter left ``None`` takes the provider's default (the region
    boto3 is configured with, the Ubuntu image found by lookup); more
    options of the ``aws`` provider go as keywords.
    """

    PROVIDER = "aws"

    def __init__(self, name: str, factories_num: int, factories_type: str, orchestrator_type: str, key_name: str,
                 security_group: str, subnet_id: str, creator: str, key: str, volume_type: str = "gp2",
                 region_name: str | None = None, username: str = "ubuntu", tags: dict[str, str] | None = None,
                 orchestrator_ami: str | None = None, factory_ami: str | None = None, dedicated: bool = False,
                 orchestrator_timeout: int = -1, factories_timeout: int = 1, volume_size: int = 100,
                 setup_cmds: list[str] | None = None, **options: Any) -> None:
        self._configure(dict(
            provider=self.PROVIDER, name=name, factories_num=factories_num, factories_type=factories_type,
            orchestrator_type=orchestrator_type, key_name=key_name, security_group=security_group,
            subnet_id=subnet_id, creator=creator, key=key, volume_type=volume_type, region_name=region_name,
            username=username, tags=tags, orchestrator_ami=orchestrator_ami, factory_ami=factory_ami,
            dedicated=dedicated, orchestrator_timeout=orchestrator_timeout, factories_timeout=factories_timeout,
            volume_size=volume_size, setup_cmds=setup_cmds, **options), None)


class GCPCluster(Cluster):
    """Compute Engine instances made for the cluster (Flambé 0.4 has no GCP class; the base's parameters first).

    ``zone`` and the ``gcp`` provider's other options go as keywords.
    """

    PROVIDER = "gcp"

    def __init__(self, name: str, factories_num: int, key: str, username: str, setup_cmds: list[str] | None = None,
                 **options: Any) -> None:
        self._configure(dict(provider=self.PROVIDER, name=name, factories_num=factories_num, key=key,
                             username=username, setup_cmds=setup_cmds, **options), None)
