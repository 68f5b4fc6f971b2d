"""Run a pickled runnable on the orchestrator: ``python -m flambe_cluster.remote.runnable FILE``.

``FILE`` holds any object with a ``run()`` method, pickled by
:func:`flambe_cluster.jobs.submit_runnable` with cloudpickle; this unpickles
it and calls ``run()`` (the job's exit code is 0 when it returns).  It runs
as the job (:mod:`flambe_cluster.remote.job` supervises it), so
``RAY_ADDRESS``, ``FLAMBE_REMOTE_ENV`` and ``FLAMBE_SECRETS`` are set.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m flambe_cluster.remote.runnable FILE", file=sys.stderr)
        return 2
    from ray import cloudpickle

    with open(argv[0], "rb") as handle:
        runnable = cloudpickle.load(handle)
    runnable.run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
