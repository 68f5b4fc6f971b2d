"""Repair: keep a cluster whole while a job runs (``flambe-cluster up --watch``).

``up`` itself replaces lost factories: the provider's load creates what is
missing (a terminated or interrupted instance), :func:`flambe_cluster.resize.shrink`
releases and forgets the instance it replaced, and the replacement gets the
keys, the software and a Ray worker that joins the running head (nothing
else is restarted).  :func:`watch` runs that repair by itself: every
``interval`` seconds it

- asks the provider which instances exist: a factory it no longer lists (or
  a cluster it calls incomplete) is **lost**;
- probes every factory over SSH: one that has not answered for
  ``lost_after`` seconds is lost; one the provider manages is released
  (terminated) and forgotten first, so ``up`` creates a new one; a machine
  the user brought (no instance id) cannot be replaced here: the watch
  waits until a machine answers at its address — with the host key pinned
  for it, never a new one (the provider does not vouch for it), so a
  machine that took over the address cannot take the cluster's key;
- asks the Ray head for its workers: a factory that answers but whose
  worker is not alive **rejoins** Ray;

and then runs the repair (``up`` under the cluster's lock, its steps logged
rather than printed).  Each action — a factory lost, replaced, rejoined, a
repair that failed (tried again next round) — is one line of output
(``on_step``) and one journal entry (event ``watch``).  An interrupt
between rounds ends the watch and leaves the cluster as it is; one during a
repair undoes that repair, as for any interrupted ``up``, and propagates.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from . import environment, raycluster, resize
from .errors import FlambeClusterError
from .records import Instance
from .session import HostSession

logger = logging.getLogger(__name__)

#: Seconds one SSH probe of a factory may take (connecting included).
PROBE_TIMEOUT = 10.0


class Watch:
    """The state of one watch: since when each factory has been silent, what was said about it, the journal's run."""

    def __init__(self, session: HostSession, lost_after: float) -> None:
        self.session = session
        self.lost_after = lost_after
        self.silent_since: dict[tuple, float] = {}
        self.waiting: set[tuple] = set()  # user-brought factories already announced as lost
        self.run_id = session.state.ensure().journal.start_run().run_id

    def act(self, action: str, message: str, **details: object) -> None:
        """One action: one line of output, one journal entry."""
        self.session.on_step(message)
        self.session.state.journal.note(self.run_id, action, details)

    # --- looking

    def provider_lost(self) -> tuple[list[Instance], str | None]:
        """Factories the provider no longer lists, or (none, its complaint) when it calls the cluster incomplete."""
        try:
            found = self.session.hooks.flambe_cluster_find_instances(config=self.session.config)
        except FlambeClusterError as exc:
            return [], str(exc).splitlines()[0]
        if found is None:
            return list(self.session.factories), "the provider finds none of the cluster's instances"
        listed = {resize.identity(h) for h in found}
        return [f for f in self.session.factories if resize.identity(f) not in listed], None

    def answering(self) -> dict[Instance, bool | None]:
        """The factories that run a command over SSH now (each given :data:`PROBE_TIMEOUT` seconds), each with
        whether this cluster's Ray node runs there (see :func:`flambe_cluster.environment.runs_ray_node`)."""
        pool = self.session.pool
        saved, pool.connect_timeout = pool.connect_timeout, min(pool.connect_timeout, PROBE_TIMEOUT)
        unreached = object()

        def probe(host: Instance) -> object:
            try:
                return environment.runs_ray_node(self.session, host, PROBE_TIMEOUT)
            except Exception:  # noqa: BLE001 - any failure to run a command is no answer
                return unreached

        try:
            return {h: runs for h, runs in pool.map(self.session.factories, probe).items() if runs is not unreached}
        finally:
            pool.connect_timeout = saved

    def without_worker(self, answering: dict[Instance, bool | None]) -> list[Instance]:
        """Answering factories without a worker alive by both accounts: the head lists it alive and its node runs
        there (none when the head does not answer; see :func:`flambe_cluster.raycluster.confirmed_workers`)."""
        try:
            known = raycluster.nodes(self.session)
        except Exception as exc:  # noqa: BLE001 - no answer from the head: nothing to say about its workers
            logger.info("the Ray head did not answer (%s)", exc)
            return []
        alive, _ = raycluster.confirmed_workers(self.session, known, answering)
        return [f for f in self.session.factories if f in answering and f.private.host not in alive]

    # --- one round

    def round(self, repair: Callable[[], None]) -> None:
        """Look once; if something is lost, say so and repair it."""
        session, now = self.session, time.monotonic()
        gone, complaint = self.provider_lost()
        answering = self.answering()
        for factory in session.factories:
            key = resize.identity(factory)
            if factory in answering:
                self.silent_since.pop(key, None)
                self.waiting.discard(key)
            else:
                self.silent_since.setdefault(key, now)
        lost: dict[Instance, str] = {f: "the provider says it is gone" for f in gone}
        if complaint is not None:
            silent = [f for f in session.factories if f not in answering]
            if not silent:
                self.act("lost", f"the provider says the cluster is incomplete ({complaint}); repairing", complaint=complaint)
            lost.update({f: "the provider says the cluster is incomplete and it does not answer" for f in silent})
        release: list[Instance] = []
        for factory in session.factories:
            key = resize.identity(factory)
            silence = now - self.silent_since.get(key, now)
            if factory in lost or factory in answering or silence < self.lost_after:
                continue
            if factory.instance_id is None:  # a machine the user brought: wait for it (same address, same host key)
                if key not in self.waiting:
                    self.waiting.add(key)
                    self.act("lost", f"{factory.label} has not answered for {silence:.0f}s: lost; waiting for a machine "
                                     "to answer at its address with the host key pinned for it", host=factory.name,
                             address=str(factory.private))
                continue
            lost[factory] = f"it has not answered for {silence:.0f}s"
            release.append(factory)
        if complaint is None and not gone and len(answering) == len(session.factories):
            lost.update({f: "its Ray worker is not alive" for f in self.without_worker(answering)})
        if not lost and complaint is None:
            return
        for factory, why in lost.items():
            self.act("lost", f"{factory.label}{' ' + factory.instance_id if factory.instance_id else ''} is lost: {why}",
                     host=factory.name, address=str(factory.private), instance_id=factory.instance_id, reason=why)
        if release:  # provider-managed machines that stopped answering: released so that `up` creates new ones
            session.hooks.flambe_cluster_release_instances(config=session.config, instances=release)
            resize.forget(session, release)
        self.repair(repair, list(lost))

    def repair(self, repair: Callable[[], None], lost: list[Instance]) -> None:
        """Run ``repair`` (``up``), its steps logged; then say what became of each lost factory."""
        session = self.session
        before = list(session.factories)
        session.start_new_run()  # a failed repair rolls back only what it created
        shown, session.on_step = session.on_step, _log_step
        try:
            repair()
        except Exception as exc:  # noqa: BLE001 - undone by the repair itself; tried again next round
            session.on_step = shown
            self.act("repair-failed", f"repair failed, trying again in the next round: {exc}", error=str(exc))
            return
        finally:
            session.on_step = shown
        self.silent_since.clear()
        workers = len(session.factories)
        after = {resize.identity(f) for f in session.factories}
        gone = [f for f in before if resize.identity(f) not in after]
        kept = {resize.identity(f) for f in before}
        new = [f for f in session.factories if resize.identity(f) not in kept]
        for old, factory in zip(gone, new):
            self.act("replaced", f"replaced {old.label}{' ' + old.instance_id if old.instance_id else ''} by "
                                 f"{factory.label}{' ' + factory.instance_id if factory.instance_id else ''}: "
                                 f"its Ray worker joined Ray ({workers} workers alive)",
                     host=factory.name, address=str(factory.private), instance_id=factory.instance_id,
                     old_address=str(old.private), old_instance_id=old.instance_id)
        for factory in lost:
            if resize.identity(factory) in after:
                self.act("rejoined", f"{factory.label} rejoined Ray ({workers} workers alive)",
                         host=factory.name, address=str(factory.private), instance_id=factory.instance_id)


def _log_step(message: str) -> None:
    logger.info("%s", message)


def watch(session: HostSession, repair: Callable[[], None], interval: float = 30.0,
          lost_after: float | None = None, rounds: int | None = None) -> None:
    """Keep the cluster whole until interrupted (or for ``rounds`` rounds); see the module's docstring.

    ``repair`` brings the cluster up again (``Cluster.up``); ``lost_after``
    (default: the configuration's ``connect_timeout``) is how long a
    factory may not answer before it is lost.  An interrupt between rounds
    returns normally, leaving the cluster as it is.
    """
    lost_after = session.config.connect_timeout if lost_after is None else lost_after
    state = Watch(session, lost_after)
    session.on_step(f"watching cluster {session.name!r} every {interval:g}s (a factory that does not answer for "
                    f"{lost_after:g}s is lost); Ctrl-C stops watching and leaves the cluster as it is")
    repairing = False  # an interrupt arrived during a repair (which undid it): it propagates

    def locked_repair() -> None:
        nonlocal repairing
        try:
            repair()
        except KeyboardInterrupt:
            repairing = True
            raise

    done = 0
    try:
        while rounds is None or done < rounds:
            started = time.monotonic()
            try:
                state.round(locked_repair)
            except Exception as exc:  # noqa: BLE001 - a look that failed (the cloud's API, a host) is tried again
                logger.debug("watch round failed", exc_info=True)
                session.on_step(f"could not look at cluster {session.name!r} ({exc}); looking again in {interval:g}s")
            done += 1
            if rounds is None or done < rounds:
                time.sleep(max(0.0, interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        if repairing:
            raise
        session.on_step(f"stopped watching cluster {session.name!r}; the cluster is left as it is")
