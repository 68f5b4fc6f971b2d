"""Test job: runs one 10-second task on the factory at ``sys.argv[1]`` (its Ray node only), then waits.

Prints ``started`` once the task runs there, ``finished <ip>`` when it returns,
then waits until ``~/stop-waiting`` exists (or ten minutes), so a test can
remove that factory while the task runs and see whether it was let finish.
"""

import pathlib
import sys
import time

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

STOP = pathlib.Path.home() / "stop-waiting"
ray.init(log_to_driver=False)
node = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeManagerAddress"] == sys.argv[1])


@ray.remote(num_cpus=1)
def work(started: str) -> str:
    pathlib.Path(started).touch()
    time.sleep(10)
    return ray.util.get_node_ip_address()


marker = pathlib.Path.home() / "task-started"
ref = work.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(str(marker))
print("started", flush=True)
print("finished", ray.get(ref), flush=True)
deadline = time.monotonic() + 600
while not STOP.exists() and time.monotonic() < deadline:
    time.sleep(0.5)
