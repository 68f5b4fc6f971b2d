"""Process-group bookkeeping shared by the remote helpers.

Every long-lived thing flambe-cluster starts on a host (a Ray node, a job,
TensorBoard, the report site) runs in its own session, so it can be stopped
as one process group by the number recorded when it started — never by
matching process names.  A record also holds the host's boot id: after a
reboot the number may belong to someone else, and the record then counts as
dead.

The helpers that run one detached thing per folder (``job``, ``report_site``,
``tensorboard``) share a command-line shape, ``python -m
flambe_cluster.remote.<helper> COMMAND STATE_DIR [OPTIONS]``, and a layout:
the group's record is ``STATE_DIR/process.json``.  :func:`dispatch`,
:func:`state_dir`, :func:`launch_detached`, :func:`recorded_state`,
:func:`stop_recorded` and :func:`print_json` are that scaffolding;
:func:`launch_service`, :func:`service_status` and :func:`stop_service` add
what the helpers that serve a port (``report_site``, ``tensorboard``) share.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeGuard, cast

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
RECORD = "process.json"
#: Exit code of a helper that refuses to act (the message on stderr says why and what to do).
REFUSED = 3


def boot_id() -> str:
    """This boot's id (changes at every reboot); empty where the kernel does not tell."""
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return ""


def group_alive(pgid: int) -> bool:
    """Whether any process of the group ``pgid`` that this user may signal is running."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):  # a group of another user is not ours
        return False
    return True


def group_record(pgid: int, **details: object) -> dict[str, Any]:
    """What to write down about a process group we started: enough for :func:`recorded_alive`."""
    return {"pgid": pgid, "boot": boot_id(), "started": time.time(), **details}


def recorded_alive(record: dict[str, Any] | None) -> TypeGuard[dict[str, Any]]:
    """Whether the group a :func:`group_record` describes still runs (same boot, group alive)."""
    if not record:
        return False
    return record.get("boot") == boot_id() and group_alive(int(record["pgid"]))


def stop_group(pgid: int, grace: float = 5.0) -> None:
    """SIGTERM the group, wait up to ``grace`` seconds, then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not group_alive(pgid):
                return
            time.sleep(0.1)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` atomically (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return cast("dict[str, Any]", json.loads(path.read_text()))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def state_dir(argument: str) -> Path:
    """A helper's STATE_DIR argument as a path: absolute as given, or relative to ``$HOME``."""
    path = Path(argument)
    return path if path.is_absolute() else Path.home() / path


def launch_detached(folder: Path, argv: list[str], *, output: Path | None = None, **details: object) -> dict[str, Any]:
    """Start ``argv`` in a new session and record its process group in ``folder/process.json``.

    Its stdin is ``/dev/null``; stdout and stderr go to ``output`` (appended)
    or ``/dev/null``.  ``details`` are added to the record.  Returns the
    record (:func:`group_record`; the group id is the started process's pid)
    at once, without waiting.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with open(output or os.devnull, "ab") as sink:  # a file, not a pipe: the group must not hold ours open
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    record = group_record(process.pid, **details)
    write_json(folder / RECORD, record)
    return record


def recorded_state(folder: Path) -> tuple[str, dict[str, Any] | None]:
    """``("none", None)`` without a record, else ``("running"|"lost", record)`` (see :func:`recorded_alive`)."""
    record = read_json(folder / RECORD)
    if record is None:
        return "none", None
    return ("running" if recorded_alive(record) else "lost"), record


def stop_recorded(folder: Path, grace: float = 5.0) -> None:
    """Stop the group recorded in ``folder`` if it still runs (see :func:`stop_group`)."""
    state, record = recorded_state(folder)
    if state == "running":
        assert record is not None  # "running" comes with its record
        stop_group(int(record["pgid"]), grace=grace)


def port_free(port: int) -> bool:
    """Whether a server could listen on ``port`` on every address now (as one with ``SO_REUSEADDR`` would)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def wait_listening(record: dict[str, Any], port: int, timeout: float) -> bool:
    """Wait until ``port`` accepts connections on this host while the recorded group runs.

    False when the group ended first or ``timeout`` seconds passed.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not recorded_alive(record):
            return False
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            time.sleep(0.2)
            continue
        return recorded_alive(record)
    return False


def launch_service(folder: Path, argv: list[str], *, port: int, wait: float, what: str) -> int:
    """Start a server (``argv``, listening on ``port``) detached, as the serving helpers' ``launch``.

    Refuses (:data:`REFUSED`) while a group recorded in ``folder`` runs or
    while ``port`` is taken.  The server's output goes to
    ``folder/output.log``.  Waits up to ``wait`` seconds for the port to
    answer, then prints ``{"pgid": N, "port": PORT}``; if the server ends or
    stays silent, stops its group, prints the log's tail on stderr and
    returns 1.
    """
    state, record = recorded_state(folder)
    if state == "running":
        assert record is not None  # "running" comes with its record
        print(f"{what} already runs from {folder} (process group {record['pgid']}); stop it first", file=sys.stderr)
        return REFUSED
    if not port_free(port):
        print(f"port {port} is taken on this host; choose another one for {what}", file=sys.stderr)
        return REFUSED
    log = folder / "output.log"
    log.unlink(missing_ok=True)
    record = launch_detached(folder, argv, output=log, port=port)
    if not wait_listening(record, port, wait):
        stop_group(int(record["pgid"]))
        (folder / RECORD).unlink(missing_ok=True)
        print(f"{what} did not start on port {port}:\n{log.read_text(errors='replace')[-4000:]}", file=sys.stderr)
        return 1
    return print_json({"pgid": record["pgid"], "port": port})


def service_status(folder: Path) -> dict[str, Any]:
    """``{"state": "none"|"running"|"lost", "pgid": int|None, "port": int|None}`` of a served helper."""
    state, record = recorded_state(folder)
    return {"state": state, "pgid": record and record["pgid"], "port": record and record.get("port")}


def stop_service(folder: Path) -> int:
    """Stop the recorded server's group, forget it, print its status (``none``)."""
    stop_recorded(folder)
    (folder / RECORD).unlink(missing_ok=True)
    return print_json(service_status(folder))


def print_json(data: dict[str, Any]) -> int:
    """Print ``data`` as the helper's one line of JSON output; 0, the exit code."""
    print(json.dumps(data))
    return 0


def dispatch(argv: list[str], commands: dict[str, Callable[..., int]], with_options: tuple[str, ...] = ()) -> int:
    """Run a helper's command line, ``COMMAND STATE_DIR [OPTIONS...]``.

    Calls ``commands[COMMAND](state_dir(STATE_DIR))``, or with the option
    strings as a second argument for the commands named in ``with_options``;
    anything else is a usage error (exit code 2).
    """
    command = argv[0] if argv else ""
    if command not in commands:
        print(f"unknown command {command!r}", file=sys.stderr)
        return 2
    if len(argv) < 2 or (len(argv) > 2 and command not in with_options):
        print(f"usage: {command} STATE_DIR{' [OPTIONS]' if command in with_options else ''}; got {argv[1:]!r}",
              file=sys.stderr)
        return 2
    folder = state_dir(argv[1])
    return commands[command](folder, argv[2:]) if command in with_options else commands[command](folder)
