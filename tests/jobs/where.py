"""Test job: Ray tasks spread over the factories, reporting where they ran.

Each task writes ``~/job-results/task-<i>-<node address>.txt`` on the factory
that ran it; the driver writes ``~/job-results/driver.json`` (the addresses
and its own arguments) on the orchestrator and prints ``tasks ran on ...``
and the cluster's GPU count.
"""

import json
import pathlib
import sys
import time

import ray

OUT = pathlib.Path.home() / "job-results"


@ray.remote(num_cpus=1, scheduling_strategy="SPREAD")
def where(index):
    OUT.mkdir(exist_ok=True)
    address = ray.util.get_node_ip_address()
    (OUT / f"task-{index}-{address}.txt").write_text(address)
    time.sleep(0.5)
    return address


ray.init(log_to_driver=False)
addresses = sorted(set(ray.get([where.remote(i) for i in range(8)])))
OUT.mkdir(exist_ok=True)
(OUT / "driver.json").write_text(json.dumps({"ips": addresses, "args": sys.argv[1:]}))
print("tasks ran on", " ".join(addresses))
print("gpus", int(ray.cluster_resources().get("GPU", 0)))
