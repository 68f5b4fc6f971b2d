"""Test job: prints how many Ray workers (alive nodes other than the head) it sees, every half second.

Runs until ``~/stop-counting`` exists (or for ten minutes), so a test can resize
the cluster under it and read the counts from its log: ``workers N``.
"""

import pathlib
import time

import ray

STOP = pathlib.Path.home() / "stop-counting"

ray.init(log_to_driver=False)
deadline = time.monotonic() + 600
while not STOP.exists() and time.monotonic() < deadline:
    alive = [n for n in ray.nodes() if n["Alive"]]
    print("workers", len(alive) - 1, flush=True)
    time.sleep(0.5)
print("done", flush=True)
