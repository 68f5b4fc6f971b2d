"""Process-group bookkeeping shared by the remote helpers.

Every long-lived thing flambe-cluster starts on a host (a Ray node, a job)
runs in its own session, so it can be stopped as one process group by the
number recorded when it started — never by matching process names.  A record
also holds the host's boot id: after a reboot the number may belong to
someone else, and the record then counts as dead.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path


BOOT_ID = Path("/proc/sys/kernel/random/boot_id")


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


def group_record(pgid: int, **details: object) -> dict:
    """What to write down about a process group we started: enough for :func:`recorded_alive`."""
    return {"pgid": pgid, "boot": boot_id(), "started": time.time(), **details}


def recorded_alive(record: dict | None) -> bool:
    """Whether the group a :func:`group_record` describes still runs (same boot, group alive)."""
    return bool(record) and record.get("boot") == boot_id() and group_alive(int(record["pgid"]))


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


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` atomically (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
