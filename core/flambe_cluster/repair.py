"""Repair: keep a cluster whole while a job runs (``flambe-cluster up --watch``).

``up`` itself replaces lost factories: the provider's load creates what is
missing (a terminated or interrupted instance), :func:`flambe_cluster.resize.shrink`
releases and forgets the instance it replaced, and the replacement gets the
keys, the software and a Ray worker that joins the running head (nothing
else is restarted).  :func:`watch` runs that repair by itself, and acts
only on evidence, never on the client's view alone.  Every ``interval``
seconds it

- ends (one line) when the cluster was taken down since it started
  (``flambe-cluster down`` from another shell): it never creates it again;
- asks the provider which instances exist: a factory it no longer lists (or
  a cluster it calls incomplete) is **lost**;
- probes every factory over SSH.  One that has not answered the client for
  ``lost_after`` seconds is lost only when the orchestrator cannot reach
  its SSH port either *and* the Ray head does not list its worker alive.
  When the client cannot reach the orchestrator either (its own route, a
  VPN or bastion, may be down), or the head does not answer, the watch says
  so once and waits: nothing is released.  A lost factory the provider
  manages is released (terminated) and forgotten, after the provider's
  instance state is read again, so ``up`` creates a new one; a machine the
  user brought (no instance id) cannot be replaced here: the watch waits
  until a machine answers at its address — with the host key pinned for
  it, never a new one (the provider does not vouch for it), so a machine
  that took over the address cannot take the cluster's key;
- a factory that answers but has no worker alive by both accounts (the
  head's and the factory's own, see
  :func:`flambe_cluster.raycluster.confirmed_workers`) **rejoins** Ray;

and then runs the repair: the release, the forgetting and ``up`` all under
the cluster's lock, its steps logged rather than printed.  Each action — a
factory lost, replaced, rejoined, a repair that failed (tried again next
round), a wait — is one line of output (``on_step``) and one journal entry
(event ``watch``).  An interrupt between rounds ends the watch and leaves
the cluster as it is; one during a repair undoes that repair, as for any
interrupted ``up``, and propagates.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shlex
import time
from collections.abc import Callable
from typing import cast

from . import environment, raycluster, resize
from .errors import ClusterBusyError, FlambeClusterError
from .records import ClusterInstances, Instance, Role, identity
from .session import HostSession
from .settings import ClusterConfig

logger = logging.getLogger(__name__)

#: Seconds one SSH probe of a factory may take (connecting included).
PROBE_TIMEOUT = 10.0

# Run on the orchestrator by its own interpreter (stdlib only): for each HOST:PORT argument, whether an SSH
# server answers there (its banner within 5 s), as a JSON object.
_REACHES = r"""
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
def answers(target):
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5) as sock:
            sock.settimeout(5)
            return sock.recv(4) == b"SSH-"
    except OSError:
        return False
targets = sys.argv[1:]
with ThreadPoolExecutor(max(1, min(32, len(targets)))) as pool:
    print(json.dumps(dict(zip(targets, pool.map(answers, targets)))))
"""


class ClusterTakenDown(Exception):
    """The cluster was taken down (``flambe-cluster down``) since the watch started: the watch ends."""


class ClusterChanged(Exception):
    """Another command changed the cluster's members between the watch's look and its action: look again."""


class Watch:
    """The state of one watch: since when each factory has been silent, what was said about it, the journal's run."""

    def __init__(self, session: HostSession, lost_after: float, since: float | None = None,
                 reread: Callable[..., ClusterConfig | None] | None = None,
                 find: Callable[[], ClusterInstances | None] | None = None,
          spent: Callable[[], bool] | None = None) -> None:
        self.session = session
        self.find = find or (lambda: session.hooks.find_instances(session.config))
        self.say = session.on_step  # the watch's own lines; a repair's steps are logged instead
        self.lost_after = lost_after
        self.reread = reread  # the cluster file again, when it changed (else None) or when asked (reread(True))
        self.silent_since: dict[tuple[str, str], float] = {}
        self.waiting: set[tuple[str, str]] = set()  # user-brought factories already announced as lost
        self.idle: set[tuple[str, str]] = set()  # factories their idle policy released: left alone
        self.said_wait: str | None = None  # the reason the watch last said it waits, until things change
        self.started = time.time() if since is None else since  # a `down` after this ends the watch
        self.run_id = session.state.ensure().journal.start_run().run_id

    def act(self, action: str, message: str, **details: object) -> None:
        """One action: one line of output, one journal entry."""
        self.say(message)
        self.session.state.journal.note(self.run_id, action, details)

    # --- following the cluster as other commands change it

    def busy(self) -> bool:
        """Whether another command holds the cluster's lock now (it is changing the cluster: nothing to judge)."""
        try:
            with self.session.state.lock(0):
                return False
        except ClusterBusyError:
            return True

    def follow(self) -> None:
        """Take the cluster as it is now: the cluster file if it changed, and the members the last ``up`` left
        (another shell may have grown or shrunk it)."""
        session = self.session
        if self.reread is not None:
            try:
                config = self.reread()
            except FlambeClusterError as exc:
                self.wait_said(f"the cluster file cannot be used now ({str(exc).splitlines()[0]}); watching the "
                               "cluster as the last good one describes it")
                config = None
            if config is not None and config.factories_num < session.config.factories_num:
                # removing factories is the user's call, not the watch's: said once, the file not applied
                self.act("waiting", f"the cluster file now asks for {config.factories_num} factories, fewer than the "
                                    f"cluster's {session.config.factories_num}: the watch removes none; run "
                                    "`flambe-cluster up` to shrink it (it drains them, and asks while a job runs)",
                         factories_num=config.factories_num)
            elif config is not None:
                session.config = config
                self.act("followed", f"the cluster file changed: the cluster now has {config.factories_num} factories",
                         factories_num=config.factories_num)
        recorded = session.state.members()
        if recorded is None or [identity(h) for h in recorded] == [identity(h) for h in session.hosts()]:
            return
        session.orchestrator = next((h for h in recorded if h.role is Role.ORCHESTRATOR), session.orchestrator)
        session.factories = [h for h in recorded if h.role is Role.FACTORY]
        if self.reread is not None:  # the command that changed them applied the file as it is now
            with contextlib.suppress(FlambeClusterError):  # said above, when it was first read
                session.config = self.reread(True) or session.config
        now = {identity(f) for f in session.factories}
        for known in (self.silent_since, self.waiting, self.idle):
            for key in [k for k in known if k not in now]:
                known.pop(key) if isinstance(known, dict) else known.discard(key)
        self.act("followed", "the cluster changed (another command): its factories are now "
                             + (", ".join(f.label for f in session.factories) or "none"),
                 factories=[f.label for f in session.factories])

    def members_now(self) -> list[tuple[str, str]]:
        """What identifies the cluster's hosts as the watch sees them (to tell whether they changed meanwhile)."""
        return [identity(h) for h in self.session.hosts()]

    def idle_removed(self, suspects: list[Instance]) -> set[Instance]:
        """Of ``suspects``, those the cluster's idle policy released (said once each): left alone."""
        candidates = [f for f in suspects if identity(f) not in self.idle]
        found = self.session.hooks.idle_removed(self.session.config, candidates) if candidates else []
        for factory in found or ():
            self.idle.add(identity(factory))
            self.act("idle", f"{factory.label}{' ' + factory.instance_id if factory.instance_id else ''} was released "
                             "by its idle timeout: left alone, not replaced (`up` brings it back)",
                     host=factory.name, instance_id=factory.instance_id)
        return {f for f in suspects if identity(f) in self.idle}

    def watched(self) -> list[Instance]:
        """The factories the watch keeps whole: all but those their idle policy released."""
        return [f for f in self.session.factories if identity(f) not in self.idle]

    # --- looking

    def provider_lost(self) -> tuple[list[Instance], str | None]:
        """Factories the provider no longer lists, or (none, its complaint) when it calls the cluster incomplete."""
        try:
            found = self.find()
        except FlambeClusterError as exc:
            return [], str(exc).splitlines()[0]
        if found is None:
            return self.watched(), "the provider finds none of the cluster's instances"
        listed = {identity(h) for h in found}
        return [f for f in self.watched() if identity(f) not in listed], None

    def answering(self) -> dict[Instance, bool | None]:
        """The factories that run a command over SSH now (each given :data:`PROBE_TIMEOUT` seconds), each with
        whether this cluster's Ray node runs there (see :func:`flambe_cluster.environment.runs_ray_node`)."""
        unreached = object()

        def probe(host: Instance) -> object:
            try:
                return environment.runs_ray_node(self.session, host, PROBE_TIMEOUT)
            except Exception:  # noqa: BLE001 - any failure to run a command is no answer
                return unreached

        with self.session.pool.connect_within(PROBE_TIMEOUT):
            found = self.session.pool.map(self.watched(), probe)
        return {h: cast("bool | None", runs) for h, runs in found.items() if runs is not unreached}

    def without_worker(self, answering: dict[Instance, bool | None]) -> list[Instance]:
        """Answering factories without a worker alive by both accounts: the head lists it alive and its node runs
        there (none when the head does not answer; see :func:`flambe_cluster.raycluster.confirmed_workers`)."""
        try:
            known = raycluster.nodes(self.session)
        except Exception as exc:  # noqa: BLE001 - no answer from the head: nothing to say about its workers
            logger.info("the Ray head did not answer (%s)", exc)
            return []
        alive, _ = raycluster.confirmed_workers(self.session, known, answering)
        return [f for f in self.watched() if f in answering and f.private.host not in alive]

    def taken_down(self) -> bool:
        """Whether the cluster was taken down since the watch started (``down`` from another shell)."""
        return self.session.state.journal.taken_down_since(self.started)

    def unreachable(self, silent: list[Instance]) -> tuple[set[Instance], str | None]:
        """Of factories the client cannot reach, those the orchestrator cannot reach either and whose worker
        the Ray head does not list alive; or (none, why the watch must wait) when there is no such evidence."""
        session = self.session
        names = ", ".join(f.label for f in silent)
        orchestrator = session.require_orchestrator()
        targets = [f"{f.private.host}:{f.private.port}" for f in silent]
        command = (f"{environment.shell_python(session)} -c {shlex.quote(_REACHES)} "
                   + " ".join(map(shlex.quote, targets)))
        try:
            with session.pool.connect_within(PROBE_TIMEOUT):
                answer = session.pool.run(orchestrator, command, timeout=PROBE_TIMEOUT + 10)
            reached = json.loads(answer.stdout)
        except Exception as exc:  # noqa: BLE001 - no answer from the orchestrator: no evidence
            logger.info("the orchestrator did not answer (%s)", exc)
            return set(), (f"the client reaches neither the orchestrator nor {names}: its own route (VPN, bastion) "
                           "may be down; waiting, nothing is released")
        try:
            known = raycluster.nodes(session)
        except Exception as exc:  # noqa: BLE001 - a head that does not answer cannot say who is gone
            return set(), f"no answer to the client from {names}, and none from the Ray head ({exc}); waiting"
        listed = raycluster.alive_workers(known)
        alive = [f for f, t in zip(silent, targets) if reached.get(t) or f.private.host in listed]
        if alive:
            self.wait_said(f"no answer to the client from {', '.join(f.label for f in alive)}, but the orchestrator "
                           "reaches its SSH port or the Ray head lists its worker alive: slow, not lost; waiting")
        return {f for f in silent if f not in alive}, None

    def wait_said(self, reason: str) -> None:
        """Say once why the watch waits (again only when the reason changes)."""
        if reason != self.said_wait:
            self.said_wait = reason
            self.act("waiting", reason, reason=reason)

    # --- one round

    def round(self, repair: Callable[[Callable[[], None]], None]) -> None:
        """Look once; if something is lost, say so and repair it.

        ``repair(before)`` runs ``before`` (checking that the cluster did not
        change since this look, saying what is lost, releasing it) and then
        ``up``, all under the cluster's lock.  Raises :class:`ClusterTakenDown`
        when the cluster was taken down since the watch started.
        """
        session, now = self.session, time.monotonic()
        if self.taken_down():
            raise ClusterTakenDown
        if self.busy():
            self.wait_said("another command holds the cluster's lock (it is changing the cluster); waiting for it")
            return
        self.follow()
        looked = self.members_now()
        gone, complaint = self.provider_lost()
        answering = self.answering()
        for factory in self.watched():
            key = identity(factory)
            if factory in answering:
                self.silent_since.pop(key, None)
                self.waiting.discard(key)
            else:
                self.silent_since.setdefault(key, now)
        silent = [f for f in self.watched() if f not in answering]
        if gone or complaint is not None:  # what the idle policy released is not lost
            idle = self.idle_removed(gone + (silent if complaint is not None else []))  # said once each
            gone, silent = [f for f in gone if f not in idle], [f for f in silent if f not in idle]
            if (complaint is not None and self.idle and not silent
                    and len(self.watched()) + len(self.idle) >= session.config.factories_num):
                complaint = None  # the cluster is short exactly what its idle policy released
        said: list[tuple[str, dict[str, object]]] = []  # (line, details) said under the lock, once the look still holds
        lost: dict[Instance, str] = dict.fromkeys(gone, "the provider says it is gone")
        if complaint is not None:
            if not silent:
                said.append((f"the provider says the cluster is incomplete ({complaint}); repairing",
                             {"complaint": complaint}))
            lost.update(dict.fromkeys(silent, "the provider says the cluster is incomplete and it does not answer"))
        long_silent = [f for f in silent if f not in lost
                       and now - self.silent_since.get(identity(f), now) >= self.lost_after]
        unreachable: set[Instance] = set()
        if long_silent:
            unreachable, wait = self.unreachable(long_silent)
            if wait is not None:
                self.wait_said(wait)
                return
        elif not lost:
            self.said_wait = None
        release: list[Instance] = []
        for factory in long_silent:
            if factory not in unreachable:
                continue
            key = identity(factory)
            silence = now - self.silent_since[key]
            if factory.instance_id is None:  # a machine the user brought: wait for it (same address, same host key)
                if key not in self.waiting:
                    self.waiting.add(key)
                    self.act("lost", f"{factory.label} has not answered for {silence:.0f}s: lost; waiting for a "
                                     "machine to answer at its address with the host key pinned for it",
                             host=factory.name, address=str(factory.private))
                continue
            lost[factory] = (f"it has not answered for {silence:.0f}s, the orchestrator cannot reach it and the Ray "
                             "head does not list its worker")
            release.append(factory)
        if complaint is None and not gone and len(answering) == len(self.watched()):
            lost.update(dict.fromkeys(self.without_worker(answering), "its Ray worker is not alive"))
        if not lost and complaint is None:
            return
        for factory, why in lost.items():
            said.append((f"{factory.label}{' ' + factory.instance_id if factory.instance_id else ''} is lost: {why}",
                         {"host": factory.name, "address": str(factory.private), "instance_id": factory.instance_id,
                          "reason": why}))

        def before() -> None:  # under the lock
            recorded = session.state.members()
            if recorded is not None and [identity(h) for h in recorded] != looked:
                raise ClusterChanged
            for line, details in said:
                self.act("lost", line, **details)
            self.release(release)

        self.repair(repair, list(lost), before)

    def release(self, factories: list[Instance]) -> None:
        """Under the lock: release (terminate) and forget ``factories`` that the provider still lists, after reading
        its instance state again; those it no longer lists are only forgotten.  Raises :class:`ClusterTakenDown`
        when the cluster was taken down meanwhile."""
        if self.taken_down():
            raise ClusterTakenDown
        if not factories:
            return
        session = self.session
        listed = {identity(h) for h in self.find() or ()}
        still = [f for f in factories if identity(f) in listed]
        if still:  # provider-managed machines that the evidence says are gone: released so that `up` creates new ones
            session.hooks.release_instances(session.config, still)
        resize.forget(session, factories)

    def repair(self, repair: Callable[[Callable[[], None]], None], lost: list[Instance],
               before: Callable[[], None]) -> None:
        """Run ``repair(before)`` (``up`` under the lock), its steps logged; then say what became of each lost
        factory."""
        session = self.session
        before_factories = list(session.factories)
        session.run_journal = None  # a new run: a failed repair rolls back only what it created
        shown, session.on_step = session.on_step, _log_step
        try:
            repair(before)
        except ClusterTakenDown:
            raise
        except (ClusterChanged, ClusterBusyError):
            self.act("changed", "another command changed the cluster or holds its lock; looking again")
            return
        except Exception as exc:  # noqa: BLE001 - undone by the repair itself; tried again next round
            self.act("repair-failed", f"repair failed, trying again in the next round: {exc}", error=str(exc))
            return
        finally:
            session.on_step = shown
        self.silent_since.clear()
        self.said_wait = None
        workers = len(session.factories)
        after = {identity(f) for f in session.factories}
        gone = [f for f in before_factories if identity(f) not in after]
        kept = {identity(f) for f in before_factories}
        new = [f for f in session.factories if identity(f) not in kept]
        for old, factory in zip(gone, new):
            self.act("replaced", f"replaced {old.label}{' ' + old.instance_id if old.instance_id else ''} by "
                                 f"{factory.label}{' ' + factory.instance_id if factory.instance_id else ''}: "
                                 f"its Ray worker joined Ray ({workers} workers alive)",
                     host=factory.name, address=str(factory.private), instance_id=factory.instance_id,
                     old_address=str(old.private), old_instance_id=old.instance_id)
        for factory in lost:
            if identity(factory) in after:
                self.act("rejoined", f"{factory.label} rejoined Ray ({workers} workers alive)",
                         host=factory.name, address=str(factory.private), instance_id=factory.instance_id)


def _log_step(message: str) -> None:
    logger.info("%s", message)


def watch(session: HostSession, repair: Callable[[Callable[[], None]], None], interval: float = 30.0,
          lost_after: float | None = None, rounds: int | None = None, since: float | None = None,
          reread: Callable[..., ClusterConfig | None] | None = None,
          find: Callable[[], ClusterInstances | None] | None = None,
          spent: Callable[[], bool] | None = None) -> None:
    """Keep the cluster whole until interrupted (or for ``rounds`` rounds); see the module's docstring.

    ``repair(before)`` runs ``before`` and then brings the cluster up again
    (``Cluster.up``), both under the cluster's lock; ``reread(always=False)`` returns the
    cluster file's configuration when the file changed or ``always`` (else None); ``find()`` the instances that exist
    (default: the provider's ``find_instances``); ``spent()``, asked before each
    round, takes the cluster down and returns True when it may cost no more
    (its ``max_cost``), which ends the watch; ``lost_after``
    (default: the configuration's ``connect_timeout``) is how long a
    factory may not answer before it is lost; a ``down`` at or after
    ``since`` (a :func:`time.time`, default now) ends the watch.  An
    interrupt between rounds returns normally, leaving the cluster as it is.
    """
    lost_after = session.config.connect_timeout if lost_after is None else lost_after
    state = Watch(session, lost_after, since, reread, find)
    session.on_step(f"watching cluster {session.name!r} every {interval:g}s (a factory that does not answer for "
                    f"{lost_after:g}s is lost); Ctrl-C stops watching and leaves the cluster as it is")
    repairing = False  # an interrupt arrived during a repair (which undid it): it propagates

    def locked_repair(before: Callable[[], None]) -> None:
        nonlocal repairing
        try:
            repair(before)
        except KeyboardInterrupt:
            repairing = True
            raise

    done = 0
    try:
        while rounds is None or done < rounds:
            started = time.monotonic()
            try:
                if spent is not None and spent():
                    return
                state.round(locked_repair)
            except ClusterTakenDown:
                session.on_step(f"cluster {session.name!r} was taken down (flambe-cluster down); stopped watching")
                return
            except Exception as exc:
                logger.debug("watch round failed", exc_info=True)
                session.on_step(f"could not look at cluster {session.name!r} ({exc}); looking again in {interval:g}s")
            done += 1
            if rounds is None or done < rounds:
                time.sleep(max(0.0, interval - (time.monotonic() - started)))
    except KeyboardInterrupt:
        if repairing:
            raise
        session.on_step(f"stopped watching cluster {session.name!r}; the cluster is left as it is")
