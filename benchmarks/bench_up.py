#!/usr/bin/env python3
"""`up` vs the bare `ray start` commands it wraps, on 3 real test hosts (1 + 2).

Builds three OpenSSH test hosts in Linux namespaces (root needed), brings a
cluster up once (this installs flambe-cluster and Ray offline on the hosts:
reported, not compared), then, with the software in place and no Ray
running (as on an image that ships Ray), measures in alternation:

A. by hand over SSH (OpenSSH, one fresh connection per command, the way a
   user would type them): ``ray start --head --num-cpus=0`` on the
   orchestrator, then ``ray start --address=...`` on both factories in
   parallel;
B. ``python3 -m flambe_cluster up CONFIG`` (a subprocess, interpreter start
   included): connect, keys, setup, software check, Ray head, workers, wait
   until the head reports both workers alive.

and finally C, a second ``up`` on the healthy cluster.  Ray is stopped
between rounds (``flambe-cluster down`` for B; ``ray stop`` on each host for
A — the hosts have their own PID namespaces, so it sees only that host).
Prints the figures and the ratios against the targets (B <= 1.3 x A;
C < 2 s); asserts nothing.  Everything is removed at the end.

Usage: ``python3 benchmarks/bench_up.py [--rounds 3]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from flambe_cluster.ssh import openssh_options
from flambe_cluster.testing.hosts import TestHostNetwork, require_root_namespaces
from flambe_cluster.testing.pytest_plugin import make_client_key

TARGET_RATIO = 1.3
TARGET_SECOND_UP_S = 2.0
NAME = "bench-ray"


def ray_start_by_hand(hosts, key: Path, known_hosts: Path, cluster: str) -> float:
    """Seconds of the bare sequence over OpenSSH (a fresh connection per command): ``ray start --head`` on
    hosts[0], then ``ray start --address`` on the others in parallel, with the Ray of ``cluster``'s environment;
    then ``ray stop`` everywhere (not timed)."""
    ssh = ["ssh", *openssh_options(key, known_hosts, 10)]
    ray = f"/home/{hosts[0].username}/.flambe-cluster/{cluster}/env/bin/ray"

    def over_ssh(host, command: str) -> None:
        subprocess.run([*ssh, f"{host.username}@{host.address}", f"RAY_USAGE_STATS_ENABLED=0 {command}"], check=True,
                       capture_output=True, timeout=300)

    head = hosts[0].address
    start = time.perf_counter()
    over_ssh(hosts[0], f"{ray} start --head --node-ip-address={head} --port=6379 --num-cpus=0 "
                       "--num-gpus=0 --include-dashboard=false --disable-usage-stats")
    with ThreadPoolExecutor(len(hosts)) as pool:
        list(pool.map(lambda h: over_ssh(h, f"{ray} start --address={head}:6379 "
                                            f"--node-ip-address={h.address} --num-cpus=2 --disable-usage-stats"),
                      hosts[1:]))
    elapsed = time.perf_counter() - start
    with ThreadPoolExecutor(len(hosts)) as pool:
        list(pool.map(lambda h: over_ssh(h, f"{ray} stop"), hosts))
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    reason = require_root_namespaces()
    if reason:
        print(f"SKIPPED: needs real test hosts: {reason}")
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="bench-up-"))
    key = make_client_key(workdir / "key")
    env = {**os.environ, "FLAMBE_CLUSTER_HOME": str(workdir / "state"), "COLUMNS": "200"}
    with TestHostNetwork(3, authorized_keys=[key.public_line]) as network:
        hosts = network.hosts
        config = workdir / "cluster.yaml"
        config.write_text(yaml.safe_dump({"provider": "ssh", "name": NAME, "username": hosts[0].username,
                                          "key": str(key.path), "orchestrator_ip": hosts[0].address,
                                          "factories_ips": [h.address for h in hosts[1:]]}))

        def cli(*argv: str) -> float:
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "flambe_cluster", *argv, str(config)], env=env,
                                  capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                raise RuntimeError(f"flambe-cluster {' '.join(argv)} failed:\n{done.stderr}")
            return time.perf_counter() - start

        first = cli("up")
        print(f"first up on fresh hosts (installs flambe-cluster + Ray offline on 3 hosts): {first:.1f} s")
        known_hosts = workdir / "state" / "clusters" / NAME / "known_hosts"
        by_hand = lambda: ray_start_by_hand(hosts, key.path, known_hosts, NAME)  # noqa: E731

        manual, ups = [], []
        cli("down")
        for _ in range(args.rounds):
            manual.append(by_hand())
            ups.append(cli("up"))
            cli("down")
        cli("up")
        seconds = [cli("up") for _ in range(args.rounds)]
        cli("down")

    a, b, c = statistics.median(manual), statistics.median(ups), statistics.median(seconds)
    print(f"{'figure':<58} {'median':>8}  runs")
    print(f"{'A  ray start by hand over SSH (head, then 2 workers)':<58} {a:>7.2f}s  "
          f"{', '.join(f'{x:.2f}' for x in manual)}")
    print(f"{'B  flambe-cluster up, software in place, no Ray running':<58} {b:>7.2f}s  "
          f"{', '.join(f'{x:.2f}' for x in ups)}")
    print(f"{'C  flambe-cluster up on the healthy cluster':<58} {c:>7.2f}s  {', '.join(f'{x:.2f}' for x in seconds)}")
    print(f"target: B <= {TARGET_RATIO} x A: measured {b / a:.2f}x -> {'met' if b / a <= TARGET_RATIO else 'NOT met'}")
    print(f"target: C < {TARGET_SECOND_UP_S:g} s: measured {c:.2f} s -> "
          f"{'met' if c < TARGET_SECOND_UP_S else 'NOT met'}")
    subprocess.run(["rm", "-rf", str(workdir)], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
