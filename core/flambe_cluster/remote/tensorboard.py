"""Run TensorBoard on the orchestrator, detached, from the cluster's environment.

Usage (on the orchestrator)::

    python -m flambe_cluster.remote.tensorboard launch STATE_DIR --logdir DIR --port PORT [--wait SECONDS]
    python -m flambe_cluster.remote.tensorboard status STATE_DIR   # prints JSON: state, pgid, port
    python -m flambe_cluster.remote.tensorboard stop   STATE_DIR   # prints JSON: state ("none")

This is the seed's ``launch_tensorboard(logs_dir, port)``: where Flambé 0.4
ran a Docker image, this runs ``<this interpreter> -m tensorboard.main
--logdir DIR --port PORT --bind_all``, so TensorBoard must be installed in
the environment the helper runs from (requirement string ``tensorboard``;
the caller ships and installs its wheels).  A relative DIR is relative to
``$HOME``, as Flambé's ``logs_dir`` is; it need not exist yet.

``launch`` exits with 2 when TensorBoard is not installed; otherwise it
starts TensorBoard as :func:`flambe_cluster.remote.processes.launch_service`
does: refused (exit code 3) while one recorded in STATE_DIR runs or while
PORT is taken; the process group recorded in ``STATE_DIR/process.json``, its
output in ``STATE_DIR/output.log``; it waits until PORT answers (TensorBoard
takes seconds to start) and prints ``{"pgid": N, "port": PORT}``, or exits
with 1 and the log's tail.  ``stop`` ends exactly that group and removes the
record.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from .processes import dispatch, launch_service, print_json, service_status, state_dir, stop_service

#: What to install in the cluster's environment for :func:`launch` to work.
REQUIREMENT = "tensorboard"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m flambe_cluster.remote.tensorboard launch STATE_DIR")
    parser.add_argument("--logdir", required=True, help="the folder of event files (relative: to $HOME)")
    parser.add_argument("--port", type=int, required=True, help="the port TensorBoard listens on (all addresses)")
    parser.add_argument("--wait", type=float, default=120.0, help="seconds to wait for TensorBoard to answer")
    return parser


def launch(folder: Path, argv: list[str]) -> int:
    """Start TensorBoard detached (see the module's docstring)."""
    options = _parser().parse_args(argv)
    if importlib.util.find_spec("tensorboard") is None:
        print(f"TensorBoard is not installed in {sys.prefix}; install {REQUIREMENT!r} there first", file=sys.stderr)
        return 2
    command = [sys.executable, "-m", "tensorboard.main", "--logdir", str(state_dir(options.logdir)),
               "--port", str(options.port), "--bind_all"]
    return launch_service(folder, command, port=options.port, wait=options.wait, what="TensorBoard")


def main(argv: list[str]) -> int:
    return dispatch(argv, {"launch": launch, "status": lambda path: print_json(service_status(path)),
                           "stop": stop_service}, with_options=("launch",))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
