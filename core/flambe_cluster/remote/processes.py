"""Process-group bookkeeping shared by the remote helpers.

Every long-lived thing flambe-cluster starts on a host (a Ray node, a job)
runs in its own session, so it can be stopped as one process group by the
number recorded when it started — never by matching process names.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path


def group_alive(pgid: int) -> bool:
    """Whether any process of the group ``pgid`` is still running."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(pgid: int, grace: float = 5.0) -> None:
    """SIGTERM the group, wait up to ``grace`` seconds, then SIGKILL what is left."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
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
