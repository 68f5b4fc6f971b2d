"""Resize in place: the cluster's members as the last ``up`` left them, and what ``up`` does when they change.

The local state folder remembers the cluster's members (``members.json``:
every host with its addresses and instance id; written by
:meth:`~flambe_cluster.state.ClusterState.record_members`).  When the provider's answer
differs — ``factories_num`` raised or lowered, an address added to or
dropped from the ``ssh`` provider's list — ``up`` grows and shrinks the
running cluster instead of rebuilding it:

- **grow**: new factories are prepared like any host and their Ray workers
  join the running head (:func:`flambe_cluster.raycluster.launch` starts
  only what is missing); nothing else is touched;
- **shrink**: :func:`shrink` drains each removed factory (the head gives
  its Ray worker no new tasks, and what runs there gets up to
  :data:`DRAIN_TIMEOUT` seconds to finish), stops this cluster's Ray node
  there (a machine that does not answer is named and released anyway: the
  drained worker ends by itself once idle, and is not counted), has the provider release it
  (:func:`~flambe_cluster.hookspecs.flambe_cluster_release_instances`: a
  cloud terminates it, machines the user brought are left running), then
  forgets it: its pinned host keys, its journal records, its membership;
- **repair** (both at once): a cloud factory that was lost (terminated,
  interrupted) is missing from the provider's answer, which holds a new
  one in its place: the lost one is said to be replaced, released and
  forgotten without draining (it no longer runs), the new one grows in
  (see :mod:`flambe_cluster.repair`).

The head, the workers that stay and a running job are never restarted.  A
host is identified by its instance id, or by its private address when it has
none (machines the user brought): a factory whose private address changed is
one removed and one added.  A cluster from before this record (no ``members.json``) has
nothing to shrink; its first ``up`` writes the record.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from . import hostfiles, jobs, keys, raycluster
from .errors import FlambeClusterError, UsageError
from .records import Instance, Role, identity
from .session import HostSession

logger = logging.getLogger(__name__)

#: Seconds a removed factory is given to answer before it is released without stopping its Ray node.
DRAIN_CONNECT_TIMEOUT = 15.0
#: Seconds the tasks running on a removed factory get to finish before its Ray node is stopped.
DRAIN_TIMEOUT = 60.0


def shrink(session: HostSession, confirm: Callable[[str], bool] | None = None) -> list[Instance]:
    """Say which factories join; drain, release and forget the factories the cluster no longer has; returns them.

    While a job runs, ``confirm(question)`` (when given) is asked before
    factories are removed (not lost ones being replaced); a no raises
    :class:`UsageError` before anything changed.
    The cluster key is revoked on the removed factories that answer, and
    when factories were removed (not lost ones being replaced) the hosts
    that stay get a new pair from the same ``up`` (see
    :func:`flambe_cluster.keys.rotate`).

    A removed factory that does not answer (lost, already terminated) is
    released after at most :data:`DRAIN_CONNECT_TIMEOUT` seconds.  Then records the loaded hosts as the members,
    before anything is started on the new ones: a later ``up`` drains them too if the file
    changes back after a failure (a rollback drops the instances it
    destroys, :meth:`~flambe_cluster.state.ClusterState.drop_members`).
    """
    record = session.state.members()  # None: nothing recorded, so nothing to add or remove
    recorded = {identity(h) for h in record or session.hosts()}
    current = {identity(h) for h in session.hosts()}
    added = [h for h in session.factories if identity(h) not in recorded]
    if added:
        session.on_step(f"adding {len(added)} factories to the cluster: " + ", ".join(h.label for h in added))
    removed = [h for h in record or () if h.role is Role.FACTORY and identity(h) not in current]
    lost = removed[:len(added)]  # as many removed as added: lost ones being replaced (a repair)
    if lost:
        session.on_step(f"replacing {len(lost)} lost factories: " + ", ".join(h.label for h in lost))
    leaving = removed[len(lost):]
    if leaving and confirm is not None and jobs.status(session).state == "running":
        names = ", ".join(h.label for h in leaving)
        if not confirm(f"A job runs on cluster {session.name!r}. Remove {len(leaving)} factories ({names})? "
                       f"They are drained: Ray gives them no new tasks and what runs there gets up to "
                       f"{DRAIN_TIMEOUT:g}s to finish; what still runs then is lost"):
            raise UsageError(f"cluster {session.name!r} was left as it is: no factory was removed "
                             "(`up -y` removes them without asking)")
    if leaving:
        session.on_step(f"removing {len(leaving)} factories no longer in the cluster: "
                        + ", ".join(h.label for h in leaving))
    if removed:
        # A lost cloud instance (the provider created a replacement: it no longer runs) has no Ray node to stop.
        drain(session, [h for h in removed if not (h in lost and h.instance_id)])
        session.hooks.release_instances(session.config, list(removed))
        forget(session, removed)
    if len(removed) > len(lost):  # machines left the cluster: the hosts that stay get a new key pair
        keys.rotate(session)
    session.state.record_members(session.hosts())
    return removed


def drain(session: HostSession, hosts: Sequence[Instance]) -> None:
    """Drain ``hosts``' Ray workers at the head (up to :data:`DRAIN_TIMEOUT` seconds for what runs there), then stop
    this cluster's Ray node on each and revoke the cluster key there.

    A host that does not answer is named and skipped: when the head drained
    its worker, Ray gives it no work and ends it once idle, and the cluster
    no longer counts it (see :func:`flambe_cluster.raycluster.alive_workers`).
    A head that cannot be asked is said; the nodes are then stopped at once.
    """
    if not hosts:
        return
    names = ", ".join(h.label for h in hosts)
    session.on_step(f"draining {names}: Ray gives them no new tasks; what runs there gets up to "
                    f"{DRAIN_TIMEOUT:g}s to finish")
    try:
        outcome = raycluster.drain(session, hosts, DRAIN_TIMEOUT)
    except FlambeClusterError as exc:
        session.on_step(f"the Ray head could not drain {names} ({str(exc).splitlines()[0]}); stopping their Ray "
                        "nodes at once")
        outcome = {h: {"state": "absent"} for h in hosts}
    for host, result in outcome.items():
        if result["state"] == "drained":
            session.on_step(f"{host.label}: drained, its tasks done after {result['waited']:g}s")
        elif result["state"] == "unreachable":
            session.on_step(f"{host.label}: the Ray head could not drain it ({result['why']})")
        elif result["state"] == "busy":
            session.on_step(f"{host.label}: still busy after {DRAIN_TIMEOUT:g}s; stopping its Ray node ends what "
                            "runs there")

    def stop(host: Instance) -> None:
        try:
            if hostfiles.has_environment(session, [host])[host]:
                raycluster.stop_node(session, host)
        except FlambeClusterError as exc:
            logger.warning("could not stop the Ray node on %s (%s); releasing it anyway", host.label, exc)
            drained = outcome[host]["state"] in ("drained", "busy")
            session.on_step(f"{host.label} did not answer; releasing it without stopping its Ray node"
                            + ("; the head drained it, so Ray gives it no work and ends it once idle"
                               if drained else ""))
            return
        try:
            keys.revoke(session, [host])
        except FlambeClusterError as exc:
            logger.warning("could not revoke the cluster key on %s (%s)", host.label, exc)
            session.on_step(f"{host.label}: the cluster key could not be removed there ({exc}); the hosts that stay "
                            "get a new pair, so it opens nothing")

    with session.pool.connect_within(DRAIN_CONNECT_TIMEOUT):
        session.pool.map(list(hosts), stop)


def forget(session: HostSession, hosts: Sequence[Instance]) -> None:
    """Forget released ``hosts``: pinned host keys, journal records of their instances, membership."""
    session.forget_host_keys(list(hosts))
    ids = {h.instance_id for h in hosts if h.instance_id}
    if ids:
        session.state.journal.forget_instances(ids)
    session.state.drop_members(hosts)
