"""The Ray cluster across the hosts: head on the orchestrator, a worker per factory.

The head listens on the orchestrator's private address with ``--num-cpus=0``
(it schedules, it does not work); each factory's worker offers the CPUs and
GPUs that factory has.  Nodes are started and stopped through
:mod:`flambe_cluster.remote.raynode`, which records each node's process group
so it is stopped by that number and a node of another cluster is refused.
The cluster is up when the head reports exactly ``factories_num`` alive
workers, one on each factory.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, cast

from . import hostfiles
from .errors import ClusterError, FlambeClusterError, HostError, HostsFailedError, RayHeadSlowError
from .records import Instance, Resources
from .session import HostSession
from .stash import StashKey

#: The head's nodes, asked while the hosts were checked (see :func:`ask_head_early`), kept on the session.
EARLY_NODES = StashKey[Future[list[dict[str, Any]] | None]]()
#: The hosts where this cluster's Ray node ran at the last probe, kept on the session until :func:`launch`.
NODE_HOSTS = StashKey[set[Instance]]()

logger = logging.getLogger(__name__)

MARKERS = ".flambe-cluster/ray"  # on each host; see flambe_cluster.remote.raynode
REFUSED = 3
HEAD_DOWN = 4
HEAD_SLOW = 5
HEAD_ERROR = 6


def nodes(session: HostSession, waiting_for: Sequence[Instance] = ()) -> list[dict[str, Any]] | None:
    """The nodes the head knows, or ``None`` when no head runs (nothing listens at its address).

    Raises :class:`~flambe_cluster.errors.RayHeadSlowError` when the head
    listens but does not answer in time (a slow head is not a dead one), and
    :class:`~flambe_cluster.errors.ClusterError` when the question fails
    otherwise: neither is a reason to restart the head.

    With ``waiting_for`` (factories), the head's side asks again until
    their workers are exactly the alive ones (for at most ``ray_timeout``),
    then answers: Ray is imported there once, not once per question.
    """
    args, within = ["nodes", session.ray_head_address], 0.0
    if waiting_for:
        within = session.config.ray_timeout
        args += [f"{within:g}", *(f.private.host for f in waiting_for)]
    return cast("list[dict[str, Any]] | None", _ask_head(session, args, timeout=within + 60))


def _ask_head(session: HostSession, args: Sequence[str],
              timeout: float) -> list[dict[str, Any]] | dict[str, Any] | None:
    """Run ``raynode ARGS`` on the orchestrator and read its JSON answer; None when no head runs (see :func:`nodes`)."""
    orchestrator = session.require_orchestrator()
    result = session.pool.run(orchestrator, session.helper("raynode", *args),
                              check=False, timeout=timeout)
    if result.exit_code == HEAD_DOWN:
        return None
    if result.exit_code == HEAD_SLOW:
        raise RayHeadSlowError(f"{orchestrator.label}: {result.stderr.strip()}")
    if result.exit_code == HEAD_ERROR:
        raise ClusterError(f"{orchestrator.label}: {result.stderr.strip()}; Ray was left as it is")
    result.check()
    return cast("list[dict[str, Any]] | dict[str, Any]", json.loads(result.stdout))


def drain(session: HostSession, factories: Sequence[Instance], within: float) -> dict[Instance, dict[str, Any]]:
    """Drain the Ray workers of ``factories`` at the head; wait up to ``within`` seconds for each to end.

    Ray then schedules nothing new on them; the tasks running there go on
    and each worker ends once its node is idle.  Returns each factory's
    outcome (see :func:`flambe_cluster.remote.raynode.drain`: ``state`` is
    ``drained``, ``busy``, ``unreachable`` or ``absent``, with the seconds ``waited``).
    Raises as :func:`nodes` does when the head cannot be asked; no head: every one is absent.
    """
    args = ["drain", session.ray_head_address, f"{within:g}", *(f.private.host for f in factories)]
    answer = cast("dict[str, dict[str, Any]]", _ask_head(session, args, timeout=within + 60) or {})
    return {f: answer.get(f.private.host, {"state": "absent"}) for f in factories}


def ask_head_early(session: HostSession, waiting_for: Sequence[Instance] = ()) -> None:
    """Start asking the head for its nodes in the background, for the next question of :func:`launch` or
    :func:`wait_for_workers` to use (see :func:`nodes` for ``waiting_for``).

    The question only reads, so it runs while other work goes on: while the
    hosts' keys and software are checked (on a second ``up`` it is the
    slowest of those checks: the head's Python imports Ray), or while the
    workers start.  :func:`forget_early_answer` discards it when a step may
    have changed what the head would say.
    """
    future: Future[list[dict[str, Any]] | None] = Future()

    def ask() -> None:
        try:
            future.set_result(nodes(session, waiting_for))
        except BaseException as exc:  # noqa: BLE001 - handed to launch, which then asks again
            future.set_exception(exc)

    threading.Thread(target=ask, name="flambe ray nodes", daemon=True).start()
    session.stash[EARLY_NODES] = future


def forget_early_answer(session: HostSession) -> None:
    """Discard the answer of :func:`ask_head_early` (software was installed, or commands ran on the hosts)."""
    session.stash.pop(EARLY_NODES, None)


def _current_nodes(session: HostSession) -> list[dict[str, Any]] | None:
    """The early answer if there is one and it came through, else the head's answer now."""
    early = session.stash.pop(EARLY_NODES, None)
    if early is not None:
        try:
            return early.result()
        except Exception:  # noqa: BLE001 - asking again gives the error (if any) of a question asked now
            pass
    return nodes(session)


def _nodes_waiting_while_slow(session: HostSession) -> list[dict[str, Any]] | None:
    """:func:`_current_nodes`, asked again while the head is slow (said once), for at most ``ray_timeout``.

    A head that listens but does not answer (busy, paused) may carry a
    running job: it is waited for, never taken for a dead one.  Raises
    :class:`~flambe_cluster.errors.RayHeadSlowError` when it still does not
    answer after ``ray_timeout``, leaving Ray as it is.
    """
    deadline = time.monotonic() + session.config.ray_timeout
    said = False
    while True:
        try:
            return _current_nodes(session)
        except RayHeadSlowError as exc:
            if time.monotonic() > deadline:
                raise RayHeadSlowError(
                    f"{exc}; waited {session.config.ray_timeout:g}s. Ray was left running (a job may use it): look at "
                    "the orchestrator's load, then run `up` again (`down` takes the cluster down)") from None
            if not said:
                session.on_step(f"the Ray head answers slowly; waiting for it (up to {session.config.ray_timeout:g}s), "
                                "not restarting it")
                said = True
            time.sleep(1.0)


def alive_workers(known: Sequence[dict[str, Any]] | None) -> dict[str, dict[str, Any]]:
    """Alive worker nodes by address; a draining one (a factory removed while it could not be reached, see
    :func:`drain`) is out: Ray gives it no work and it ends once idle."""
    return {n["ip"]: n for n in known or () if n["alive"] and not n["head"] and not n.get("draining")}


def confirmed_workers(session: HostSession, known: Sequence[dict[str, Any]] | None,
                      running: Mapping[Instance, bool | None]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The factories' workers alive by both accounts, by address, and a line for each factory where they disagree.

    A worker counts as alive only when the head lists it alive (``known``,
    from :func:`nodes`) *and* ``running[factory]`` says its node runs on the
    factory (its recorded process group, checked over SSH): the head notices
    a node that went away only when its health checks fail, seconds later.
    A factory missing from ``running`` (not reached) has no confirmed worker;
    for one that is ``None`` there (its host could not tell) the head's
    account stands alone.
    """
    listed = alive_workers(known)
    confirmed: dict[str, dict[str, Any]] = {}
    disagreements = []
    for factory in session.factories:
        address, runs = factory.private.host, running.get(factory)
        if address in listed and (runs or (runs is None and factory in running)):
            confirmed[address] = listed[address]
        elif address in listed and runs is False:
            disagreements.append(f"{factory.label}: the Ray head lists its worker alive, "
                                 "but no Ray node of this cluster runs there")
        elif known is not None and address not in listed and runs:
            disagreements.append(f"{factory.label}: a Ray node of this cluster runs there, "
                                 "but the Ray head does not list it alive")
    return confirmed, disagreements


def _start(session: HostSession, host: Instance, ray_args: list[str], states: tuple[str, str]) -> None:
    """Start a Ray node on ``host``; its progress shows ``states[0]`` meanwhile, then ``states[1]`` or the failure.

    A worker waits for the head's GCS up to ``ray_timeout`` (the head may still be starting).  A worker is
    started only where the head does not list one alive: a node of this cluster that runs there anyway (left
    by an interrupted ``up``, joined to a head that is gone) is replaced.
    """
    replace = ["--replace"] if host != session.orchestrator else []
    line = session.helper("raynode", "start", session.name, host.private.host, *replace, "--", *ray_args)
    if host != session.orchestrator:
        line = f"RAY_gcs_server_port_wait_time_s={int(session.config.ray_timeout)} {line}"
    session.on_progress(host.name, states[0])
    result = session.pool.run(host, line, check=False, timeout=session.config.ray_timeout)
    session.on_progress(host.name, states[1] if result.ok else f"ray start failed (exit code {result.exit_code})")
    if result.exit_code == REFUSED:
        raise ClusterError(f"{host.label}: {result.stderr.strip()}")
    if not result.ok:
        raise ClusterError(f"{host.label}: `ray start` failed (exit code {result.exit_code}):\n{result.stderr_tail()}")


def stop_node(session: HostSession, host: Instance) -> None:
    """Stop this cluster's Ray node on ``host`` (nothing if none runs; refuses another cluster's)."""
    line = session.helper("raynode", "stop", session.name, host.private.host)
    result = session.pool.run(host, line, check=False, timeout=60)
    if result.exit_code == REFUSED:
        raise ClusterError(f"{host.label}: {result.stderr.strip()}")
    result.check()


def launch(session: HostSession, resources: dict[Instance, Resources]) -> None:
    """Start what is missing of the Ray cluster and wait until every factory's worker is alive (see :class:`Launch`).

    The hosts' software is ready (``prepare_all_instances`` ran); the hosts
    its probe found running a node of this cluster are used once.
    """
    running = session.stash.pop(NODE_HOSTS, None)
    Launch(session, resources, running).finish()


class Launch:
    """Starting the Ray cluster while the hosts become ready, each node as soon as it can.

    :meth:`ready` (from any thread, once per host) starts that host's node
    in a thread of its own and returns: the head when the orchestrator is
    ready, a factory's worker when that factory is ready and the head is up
    or starting.
    A head that answers is kept, with its alive workers (new factories of a
    resize join it); if none answers, every node of this cluster is stopped
    and the head started anew.  ``running``, when a probe just told, are the
    hosts that run a node of this cluster: with no head among them the head
    is started without asking (a Python that imports Ray on the
    orchestrator: seconds) and only they are stopped; a factory not among
    them gets its worker started whatever the head says (the head may still
    count a worker whose host went away, until its health checks notice).
    :meth:`finish` readies the hosts not readied yet, waits for those
    threads (raising what failed, naming the hosts; as soon as the head
    failed, without waiting for workers that wait for it), then until the
    head reports exactly ``factories_num`` alive workers.  :meth:`abandon` lets
    the threads end without starting anything more.
    """

    def __init__(self, session: HostSession, resources: dict[Instance, Resources],
                 running: Collection[Instance] | None = None) -> None:
        self.session, self.resources, self.running = session, resources, running
        self._threads: dict[Instance, threading.Thread] = {}
        self._errors: list[FlambeClusterError] = []
        self._guard = threading.Lock()
        self._head_checked = threading.Event()
        # workers alive once the head is up; None before or if it failed
        self._alive: dict[str, dict[str, Any]] | None = None
        self._abandoned = False
        self._started = 0

    def ready(self, host: Instance) -> None:
        """Start ``host``'s node in the background (nothing if it was readied before)."""
        with self._guard:
            if host in self._threads:
                return
            self._threads[host] = thread = threading.Thread(target=self._start_node, args=(host,), daemon=True,
                                                            name=f"flambe-ray {host.name}")
        thread.start()

    def finish(self) -> None:
        """Ready every host, wait for their nodes and then for every worker to be alive (see the class)."""
        for host in self.session.hosts():
            self.ready(host)
        self._threads[self.session.require_orchestrator()].join()
        self._raise_errors()  # a head that failed: workers waiting for its GCS end when the caller closes the pool
        for thread in list(self._threads.values()):
            thread.join()
        self._raise_errors()
        alive = self._alive or {}
        if not self._started and len(alive) == self.session.config.factories_num:
            self.session.on_step(f"Ray already up: {len(alive)} workers alive")
            return
        wait_for_workers(self.session)  # also when only workers of removed factories are still leaving the head's list

    def _raise_errors(self) -> None:
        if self._errors:
            forget_early_answer(self.session)
            raise self._errors[0] if len(self._errors) == 1 else HostsFailedError(self._errors)

    def abandon(self) -> None:
        """Start nothing more: the threads waiting for the head end (a command under way ends with the pool)."""
        self._abandoned = True
        self._head_checked.set()
        forget_early_answer(self.session)

    def _start_node(self, host: Instance) -> None:
        try:
            if host == self.session.orchestrator:
                self._start_head()
            else:
                self._start_worker(host)
        except Exception as exc:  # noqa: BLE001 - handed to finish()
            with self._guard:
                self._errors.append(exc if isinstance(exc, FlambeClusterError) else HostError(host.label, repr(exc)))
                if host == self.session.orchestrator:
                    self._alive = None  # no head: workers not started yet stay so
        finally:
            if host == self.session.orchestrator:
                self._head_checked.set()

    def _needs_worker(self, factory: Instance) -> bool:
        alive = self._alive or {}
        return factory.private.host not in alive or (self.running is not None and factory not in self.running)

    def _start_head(self) -> None:
        session = self.session
        orchestrator = session.require_orchestrator()  # _start_node runs this for the orchestrator only
        started_on = session.state.recorded_ray_port()
        if started_on not in (None, session.config.ray_port) and (
                self.running is None or session.orchestrator in self.running):
            raise ClusterError(
                f"cluster {session.name!r}: its Ray head was started on port {started_on}, but this configuration "
                f"says ray_port {session.config.ray_port} (Flambé's seed classes use 12345, a cluster file Ray's "
                f"6379); nothing was restarted. Set `ray_port: {started_on}` to use it as it runs, or take it "
                "down first (flambe-cluster down)")
        if self.running is None or session.orchestrator in self.running:
            known = _nodes_waiting_while_slow(session)
        else:
            known = None
            forget_early_answer(session)
        if known is None and not self._abandoned:
            session.on_step("starting the Ray head on the orchestrator (no CPUs, no GPUs)")
            shutdown(session, None if self.running is None else list(self.running))
            self._alive = {}
            self._head_checked.set()  # workers start alongside the head: each waits for its GCS (see _start)
            _start(session, orchestrator, [
                "--head", f"--node-ip-address={orchestrator.private.host}", f"--port={session.config.ray_port}",
                "--num-cpus=0", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
                *_worker_ports_beside(session.config.ray_port),
            ], ("starting the Ray head", "Ray head running"))
            session.state.record_ray_port(session.config.ray_port)
            with self._guard:
                self._started += 1
        elif known is not None:
            self._alive = alive_workers(known)
        if not self._abandoned and any(self._needs_worker(f) for f in session.factories):
            ask_head_early(session, waiting_for=session.factories)  # the head's side imports Ray while workers start

    def _start_worker(self, factory: Instance) -> None:
        self._head_checked.wait()
        if self._abandoned or self._alive is None or not self._needs_worker(factory):
            return  # without a head, the orchestrator's error says why
        self.session.on_step(f"starting the Ray worker on {factory.label}")
        _start(self.session, factory, [
            f"--address={self.session.ray_head_address}", f"--node-ip-address={factory.private.host}",
            f"--num-cpus={self.resources[factory].cpu}", f"--num-gpus={self.resources[factory].gpu}",
            "--disable-usage-stats",
        ], ("starting a Ray worker", "Ray worker started, joining the head"))
        with self._guard:
            self._started += 1


#: The ports Ray gives its worker processes by default (``ray start --min-worker-port/--max-worker-port``).
RAY_WORKER_PORTS = (10002, 19999)


def _worker_ports_beside(head_port: int) -> list[str]:
    """``ray start`` options moving the head's worker processes off ``head_port`` when it lies in their default
    range (Flambé's 12345 does): Ray refuses to start otherwise."""
    low, high = RAY_WORKER_PORTS
    if not low <= head_port <= high:
        return []
    return [f"--min-worker-port={high + 3}", f"--max-worker-port={high + 3 + high - low}"]


def wait_for_workers(session: HostSession) -> None:
    """Wait until the head reports exactly one alive worker per factory; raise naming the missing ones."""
    deadline = time.monotonic() + session.config.ray_timeout
    joined: set[Instance] = set()
    while True:
        try:
            alive = alive_workers(_current_nodes(session))
        except RayHeadSlowError:  # no answer this time: asked again until the deadline
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
            continue
        missing = [f for f in session.factories if f.private.host not in alive]
        for factory in session.factories:
            if factory not in missing and factory not in joined:
                joined.add(factory)
                session.on_progress(factory.name, "Ray worker alive")
        if not missing and len(alive) == session.config.factories_num:
            session.on_step(f"Ray cluster up: head on {session.require_orchestrator().private.host}, "
                            f"{len(alive)} workers alive")
            return
        if time.monotonic() > deadline:
            names = ", ".join(f.label for f in missing) or "none"
            extra = sorted(set(alive) - {f.private.host for f in session.factories})
            raise ClusterError(
                f"the Ray head reports {len(alive)} alive workers, expected {session.config.factories_num}; "
                f"missing: {names}"
                + (f"; unexpected workers at {', '.join(extra)}" if extra else "")
                + f". Look at ~/{MARKERS}/<address>.log on those hosts (its first line names the node's Ray logs)."
            )
        time.sleep(0.5)


def shutdown(session: HostSession, hosts: Sequence[Instance] | None = None) -> None:
    """Stop this cluster's Ray node on ``hosts`` (default: every host) that have the environment (factories, then
    the head); idempotent."""
    hosts = session.hosts() if hosts is None else hosts
    ready = hostfiles.has_environment(session, hosts) if hosts else {}
    session.pool.map([f for f in session.factories if ready.get(f)], lambda host: stop_node(session, host))
    orchestrator = session.orchestrator
    if orchestrator is not None and ready.get(orchestrator):
        stop_node(session, orchestrator)
        session.state.forget_ray_port()


def nodes_unless_slow(session: HostSession) -> list[dict[str, Any]] | None:
    """:func:`nodes`, with a slow head counted as no answer (for the questions that return a bool or a list)."""
    try:
        return nodes(session)
    except RayHeadSlowError as exc:
        logger.info("%s", exc)
        return None


def complete(session: HostSession) -> bool:
    """Whether the head reports exactly one alive worker per factory (False while it is slow to answer)."""
    alive = alive_workers(nodes_unless_slow(session))
    return len(alive) == session.config.factories_num and all(f.private.host in alive for f in session.factories)


def is_up(session: HostSession) -> bool:
    """Whether the orchestrator has the environment, the head answers and every factory's worker is alive."""
    orchestrator = session.require_orchestrator()
    return hostfiles.has_environment(session, [orchestrator])[orchestrator] and complete(session)


def alive_hosts(session: HostSession) -> list[Instance]:
    """The hosts of this cluster the Ray head reports as alive nodes (none without the environment, or while the
    head is slow to answer)."""
    orchestrator = session.require_orchestrator()
    if not hostfiles.has_environment(session, [orchestrator])[orchestrator]:
        return []
    alive = {n["ip"] for n in nodes_unless_slow(session) or () if n["alive"]}
    return [host for host in session.hosts() if host.private.host in alive]
