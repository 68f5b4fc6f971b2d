"""Start, stop and inspect this host's Ray node; list the nodes a head knows.

Usage (on a host)::

    python -m flambe_cluster.remote.raynode start CLUSTER NODE_IP [--replace] -- RAY_START_ARGS...
    python -m flambe_cluster.remote.raynode stop  CLUSTER NODE_IP
    python -m flambe_cluster.remote.raynode nodes GCS_ADDRESS
    python -m flambe_cluster.remote.raynode drain GCS_ADDRESS WITHIN NODE_IP...

A node started here runs in its own session; its process group is recorded
in ``~/.flambe-cluster/ray/<NODE_IP>.json`` (shared by every cluster on the
host) with the owning cluster's name, so it is
stopped by that number and a node of another cluster (or one not started by
flambe-cluster) is recognised and left alone.  Exit code 3 means "refused":
the message on stderr says why and what to do.

Each node keeps Ray's temp folder (sessions, logs, unix sockets) inside a
private folder of its own, :func:`temp_dir`, never the shared ``/tmp/ray``
(which another user of the machine may own): created 0700 by ``start``
(Ray makes its own folders world-writable, so they live one level down),
removed by ``stop``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from .processes import group_record, read_json, recorded_alive, stop_group, write_json

REFUSED = 3
HEAD_DOWN = 4  # `nodes`: nothing listens at the head's address
HEAD_SLOW = 5  # `nodes`: the head listens but does not answer in time
HEAD_ERROR = 6  # `nodes`: the question failed otherwise (the message says how); neither down nor slow
MARKERS = Path.home() / ".flambe-cluster" / "ray"


def temp_dir(cluster: str, node_ip: str) -> Path:
    """The private folder of ``cluster``'s node at ``node_ip`` for this user: ``/tmp/fc-<uid>-<name>-<digest>``.

    Ray's temp folder is its ``ray`` subfolder.  One per user, cluster and
    node (nodes of one cluster may share a machine's ``/tmp``), and short:
    Ray puts unix sockets three levels below it, and a socket's path must
    stay under 108 bytes (at most 40 bytes here, about 104 there).
    """
    digest = hashlib.sha256(f"{cluster}\0{node_ip}".encode()).hexdigest()[:6]
    return Path("/tmp") / f"fc-{os.getuid()}-{cluster[:10]}-{digest}"


def _not_private(path: Path) -> str | None:
    """Why ``path`` is not a folder of this user's that only it can use (None when it is)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return "it does not exist"
    if not stat.S_ISDIR(info.st_mode):
        return "it is not a folder"
    if info.st_uid != os.getuid():
        return f"it belongs to user id {info.st_uid}"
    if info.st_mode & 0o077:
        return f"its mode is {stat.S_IMODE(info.st_mode):o}, not 700"
    return None


def _remove_temp_dir(path: Path) -> None:
    """Remove the node's temp folder if it is this user's own (never follows a link, never another's)."""
    if _not_private(path) is None:
        shutil.rmtree(path, ignore_errors=True)


def _live_markers(markers: Path) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in markers.glob("*.json"):
        data = read_json(path)
        if recorded_alive(data):
            found[path.stem] = data
    return found


def _raylets_on(node_ip: str) -> list[tuple[int, int]]:
    """(pid, pgid) of every raylet of this user serving ``node_ip`` (several hosts may share a machine)."""
    result = []
    uid = os.getuid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "raylet" or entry.stat().st_uid != uid:
                continue
            arguments = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if f"--node_ip_address={node_ip}" not in arguments:
                continue
            result.append((int(entry.name), os.getpgid(int(entry.name))))
        except (OSError, ProcessLookupError):
            continue
    return result


class _GiveUp:
    """Until :meth:`cancel`: run ``undo`` and exit when the command is given up (SIGTERM from sshd, as
    flambe-cluster asks it when it stops waiting; SIGHUP; SIGINT).  ``ray start`` runs in a session of its own,
    which those signals do not reach."""

    SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)

    def __init__(self, undo: Callable[[], None]) -> None:
        self.undo = undo
        for number in self.SIGNALS:
            signal.signal(number, self._handle)

    def _handle(self, number: int, _frame: FrameType | None) -> None:
        self.undo()
        os._exit(128 + number)

    def cancel(self) -> None:
        for number in self.SIGNALS:
            signal.signal(number, signal.SIG_DFL)


def _undo_start(pgid: int, marker: Path, temp: Path) -> None:
    """Stop a node whose start failed or was given up, and remove its marker and private folder."""
    stop_group(pgid, grace=2.0)
    marker.unlink(missing_ok=True)
    _remove_temp_dir(temp)


def start(markers: Path, cluster: str, node_ip: str, ray_args: list[str], replace: bool = False) -> int:
    """Start this cluster's node (``ray start RAY_ARGS --temp-dir=<temp_dir>/ray``) unless it runs; refuse others'.

    With ``replace``, a node of this cluster that runs here is stopped first
    and started anew: a worker the head does not list (one left joined to a
    head that is gone, by an ``up`` interrupted while Ray started) never
    joins the head that runs now on its own.
    """
    live = _live_markers(markers)
    mine = live.get(node_ip)
    if mine and mine["cluster"] == cluster and replace:
        stop(markers, cluster, node_ip, quiet=True)
        live.pop(node_ip)
        mine = None
    if mine and mine["cluster"] == cluster:
        print(json.dumps({"status": "running", "pgid": mine["pgid"]}))
        return 0
    if mine:
        print(f"a Ray node of cluster {mine['cluster']!r} already runs on {node_ip}; take that cluster down "
              "first (flambe-cluster down) or use another host", file=sys.stderr)
        return REFUSED
    known = {int(m["pgid"]) for m in live.values()}
    foreign = [pid for pid, pgid in _raylets_on(node_ip) if pgid not in known]
    if foreign:
        print(f"a Ray node not started by flambe-cluster runs on {node_ip} (raylet PID {foreign[0]}); stop it "
              "(`ray stop`) or use another host", file=sys.stderr)
        return REFUSED
    temp = temp_dir(cluster, node_ip)
    with contextlib.suppress(FileExistsError):  # a folder left by a node that died, or something else: checked next
        temp.mkdir(mode=0o700)
    problem = _not_private(temp)
    if problem:
        print(f"cannot use {temp} as this node's private folder: {problem}; remove it or use another host",
              file=sys.stderr)
        return REFUSED
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    ray = str(Path(sys.executable).with_name("ray"))
    markers.mkdir(parents=True, exist_ok=True)
    log = markers / f"{node_ip}.log"
    with open(log, "w") as output:  # a file, not a pipe: Ray's daemons must not hold our stdout open
        output.write(f"Ray temp folder (its logs: session_latest/logs): {temp / 'ray'}\n")
        output.flush()
        process = subprocess.Popen([ray, "start", *ray_args, f"--temp-dir={temp / 'ray'}"], stdin=subprocess.DEVNULL,
                                   stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    pgid = process.pid  # the new session's process group; Ray's daemons inherit it
    marker = markers / f"{node_ip}.json"
    write_json(marker, group_record(pgid, cluster=cluster))
    given_up = _GiveUp(lambda: _undo_start(pgid, marker, temp))
    returncode = process.wait()
    given_up.cancel()
    if returncode != 0:
        _undo_start(pgid, marker, temp)
        print(log.read_text()[-4000:], file=sys.stderr)
        return returncode
    print(json.dumps({"status": "started", "pgid": pgid}))
    return 0


def stop(markers: Path, cluster: str, node_ip: str, quiet: bool = False) -> int:
    """Stop this cluster's node at ``node_ip`` and remove its temp folder; refuse another cluster's node.
    Prints the outcome as JSON unless ``quiet``."""
    marker = markers / f"{node_ip}.json"
    data = read_json(marker)
    if data is None:
        _remove_temp_dir(temp_dir(cluster, node_ip))
        if not quiet:
            print(json.dumps({"status": "not running"}))
        return 0
    if data["cluster"] != cluster:
        print(f"the Ray node on {node_ip} belongs to cluster {data['cluster']!r}; not stopping it", file=sys.stderr)
        return REFUSED
    if recorded_alive(data):
        # gcs_server and raylet linger on SIGTERM when their peers go at the same time: 2 s, then SIGKILL
        stop_group(int(data["pgid"]), grace=2.0)
    marker.unlink(missing_ok=True)
    _remove_temp_dir(temp_dir(cluster, node_ip))
    if not quiet:
        print(json.dumps({"status": "stopped"}))
    return 0


def _timed_out(exc: BaseException) -> bool:
    """Whether the GCS client gave up waiting (rather than failing for another reason)."""
    text = f"{type(exc).__name__} {exc}".lower()
    return any(word in text for word in ("timeout", "timed out", "deadline", "unavailable"))


def _not_listening(address: str) -> int | None:
    """None when something listens at the head's ``address``; else the exit code saying why not (printed).

    A head that is not listening fails here at once; the GCS client would retry for a minute."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except ConnectionRefusedError as exc:
        print(f"the Ray head at {address} does not answer: {exc}", file=sys.stderr)
        return HEAD_DOWN
    except TimeoutError as exc:
        print(f"the Ray head at {address} does not answer in time: {exc}", file=sys.stderr)
        return HEAD_SLOW
    except OSError as exc:
        print(f"cannot reach the Ray head at {address}: {exc}", file=sys.stderr)
        return HEAD_ERROR
    return None


def nodes(address: str, within: float = 0.0, workers: Sequence[str] = ()) -> int:
    """Print the nodes the head at ``address`` (GCS ``ip:port``) knows, as JSON.

    With ``workers`` (addresses), ask again every 0.2 s, for up to
    ``within`` seconds, until the alive workers are exactly those, then
    print the last answer: Ray is imported once for all the questions (the
    import is what a question costs on a small host).  Exit code
    :data:`HEAD_DOWN` when nothing listens at ``address`` (the connection is
    refused: no head), :data:`HEAD_SLOW` when the connection or the question
    times out (busy, paused, or a route that drops packets: a slow head is
    not a dead one, and is never restarted for that), :data:`HEAD_ERROR`
    when the question fails otherwise.
    """
    not_listening = _not_listening(address)
    if not_listening is not None:
        return not_listening
    from ray._raylet import GcsClient  # type: ignore[attr-defined]  # ray's _raylet.pyi lists only the ids

    deadline = time.monotonic() + within
    try:
        client = GcsClient(address=address)
        while True:
            result = [{
                "ip": info.node_manager_address,
                "alive": info.state == 0,
                "head": bool(info.is_head_node),
                "draining": _draining(info),
                "resources": {k: v for k, v in info.resources_total.items() if "node:" not in k},
            } for info in client.get_all_node_info(timeout=10).values()]
            alive = sorted(n["ip"] for n in result if n["alive"] and not n["head"] and not n["draining"])
            if alive == sorted(workers) or time.monotonic() >= deadline:
                break
            time.sleep(0.2)
    except Exception as exc:  # noqa: BLE001 - it listens: slow when the question timed out, else an error
        if _timed_out(exc):
            print(f"the Ray head at {address} listens but does not answer in time: {exc}", file=sys.stderr)
            return HEAD_SLOW
        print(f"the Ray head at {address} listens but the question failed: {exc!r}", file=sys.stderr)
        return HEAD_ERROR
    print(json.dumps(result))
    return 0


def _draining(info: Any) -> bool:
    """Whether a node (``GcsNodeInfo``) is being drained: Ray gives it no new work and ends it once idle."""
    from ray.core.generated import gcs_pb2

    # gcs_pb2 makes its messages at import time, where mypy does not see them
    draining: bool = (info.state == 0
                      and info.state_snapshot.state == gcs_pb2.NodeSnapshot.State.Value("DRAINING"))  # type: ignore[attr-defined]
    return draining


def drain(address: str, within: float, node_ips: Sequence[str]) -> int:
    """Drain the alive workers at ``node_ips`` and wait (up to ``within`` seconds) until each has ended.

    Each is drained as preempted (a request its raylet cannot refuse): Ray
    schedules nothing new there, the tasks running there go on, and the
    raylet ends once its node is idle.  Prints, as JSON, each address with
    ``"drained"`` (its node ended, after ``waited`` seconds), ``"busy"``
    (still running work after ``within`` seconds: stopping it ends that
    work), ``"unreachable"`` (its raylet did not take the request, ``why``)
    or ``"absent"`` (no alive node there).  Exit codes as for
    :func:`nodes` when the head cannot be asked.
    """
    not_listening = _not_listening(address)
    if not_listening is not None:
        return not_listening
    from ray._raylet import GcsClient  # type: ignore[attr-defined]  # ray's _raylet.pyi lists only the ids
    from ray.core.generated.autoscaler_pb2 import DrainNodeReason  # type: ignore[attr-defined]  # protobuf: as in _draining

    started = time.monotonic()
    deadline_ms = int((time.time() + within) * 1000)
    result: dict[str, dict[str, Any]] = {}
    try:
        client = GcsClient(address=address)
        alive = {info.node_manager_address: info.node_id.hex() for info in client.get_all_node_info(timeout=10).values()
                 if info.state == 0 and not info.is_head_node}
        for ip in node_ips:
            if ip not in alive:
                result[ip] = {"state": "absent"}
                continue
            try:
                accepted, why = client.drain_node(alive[ip], DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"),
                                                  "flambe-cluster: this factory leaves the cluster", deadline_ms,
                                                  timeout=10)
            except Exception as exc:  # noqa: BLE001 - its raylet did not answer the head (a machine gone)
                accepted, why = False, repr(exc)
            if not accepted:  # a preemption is not refusable: its raylet did not take the request
                result[ip] = {"state": "unreachable", "why": why}
        waiting = {alive[ip]: ip for ip in node_ips if ip not in result}
        while waiting:
            ended = {info.node_id.hex() for info in client.get_all_node_info(timeout=10).values() if info.state != 0}
            for node_id in [n for n in waiting if n in ended]:
                result[waiting.pop(node_id)] = {"state": "drained", "waited": round(time.monotonic() - started, 1)}
            if waiting and time.monotonic() - started >= within:
                for ip in waiting.values():
                    result[ip] = {"state": "busy", "waited": round(time.monotonic() - started, 1)}
                break
            time.sleep(0.5)
    except Exception as exc:  # noqa: BLE001 - told apart as for `nodes`
        print(f"the Ray head at {address} could not drain {', '.join(node_ips)}: {exc!r}", file=sys.stderr)
        return HEAD_SLOW if _timed_out(exc) else HEAD_ERROR
    print(json.dumps(result))
    return 0


def main(argv: list[str]) -> int:
    command, *rest = argv
    if command == "start":  # start CLUSTER NODE_IP [--replace] -- RAY_ARGS...
        split = rest.index("--")
        cluster, node_ip, *flags = rest[:split]
        return start(MARKERS, cluster, node_ip, rest[split + 1:], replace="--replace" in flags)
    if command == "stop":
        cluster, node_ip = rest
        return stop(MARKERS, cluster, node_ip)
    if command == "nodes":  # nodes ADDRESS [WITHIN WORKER...]
        address, *wait = rest
        return nodes(address, float(wait[0]), wait[1:]) if wait else nodes(address)
    if command == "drain":  # drain ADDRESS WITHIN NODE_IP...
        address, within, *node_ips = rest
        return drain(address, float(within), node_ips)
    print(f"unknown command {command!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
