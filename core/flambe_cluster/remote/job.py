"""Run one job on the orchestrator, detached from the SSH session that started it.

Usage (on the orchestrator)::

    python -m flambe_cluster.remote.job launch JOB_DIR   # reads JOB_DIR/spec.json, returns at once
    python -m flambe_cluster.remote.job status JOB_DIR   # prints JSON: state, exit_code, pgid
    python -m flambe_cluster.remote.job stop   JOB_DIR

``launch`` starts a supervisor in a new session: it runs the job's argv with
the spec's environment, its output appended to ``JOB_DIR/output.log``, and
writes ``JOB_DIR/exit_code`` when the job ends.  The client may disconnect
at any time; the job goes on.  ``stop`` ends the job's process group.
``JOB_DIR`` is absolute or relative to ``$HOME`` (see :mod:`.processes`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .processes import dispatch, launch_detached, print_json, read_json, recorded_state, stop_group, write_json


def _supervise(job_dir: Path) -> int:
    spec = json.loads((job_dir / "spec.json").read_text())
    env = {**os.environ, **spec["env"]}
    with open(job_dir / "output.log", "ab", buffering=0) as log:
        try:
            process = subprocess.Popen(spec["argv"], cwd=spec["cwd"], env=env, stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT)
        except OSError as exc:
            log.write(f"flambe-cluster: cannot start the job: {exc}\n".encode())
            code = 127
        else:
            code = process.wait()
    write_json(job_dir / "exit_code.json", {"exit_code": code, "finished": time.time()})
    return code


def launch(job_dir: Path) -> int:
    """Start the supervisor in its own session and return at once with its process group."""
    for stale in ("exit_code.json", "output.log"):
        (job_dir / stale).unlink(missing_ok=True)
    (job_dir / "output.log").touch()
    record = launch_detached(job_dir, [sys.executable, "-m", "flambe_cluster.remote.job", "supervise", str(job_dir)])
    return print_json({"pgid": record["pgid"]})


def status(job_dir: Path) -> dict[str, Any]:
    """``{"state": "none"|"running"|"finished"|"lost", "exit_code": int|None, "pgid": int|None}``."""
    state, process = recorded_state(job_dir)
    if process is None:
        return {"state": "none", "exit_code": None, "pgid": None}
    finished = read_json(job_dir / "exit_code.json")
    if finished is not None:
        return {"state": "finished", "exit_code": finished["exit_code"], "pgid": process["pgid"]}
    return {"state": state, "exit_code": None, "pgid": process["pgid"]}


def stop(job_dir: Path) -> int:
    current = status(job_dir)
    if current["state"] == "running":
        stop_group(int(current["pgid"]))
        if read_json(job_dir / "exit_code.json") is None:
            write_json(job_dir / "exit_code.json", {"exit_code": -15, "finished": time.time(), "stopped": True})
    return print_json(status(job_dir))


def main(argv: list[str]) -> int:
    return dispatch(argv, {"launch": launch, "supervise": _supervise, "status": lambda path: print_json(status(path)),
                           "stop": stop})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
