#!/usr/bin/env python3
"""A fresh `up` at several sizes: the orchestrator's bytes, `up` against bare `ray start`, growth with N.

Builds real OpenSSH test hosts in Linux namespaces (root needed).  The
client's wheel cache is warmed first (the wheels this machine's hosts need),
so every `up` here starts from hosts with nothing installed and a warm cache.
In one run, side by side:

1. a fresh 1+6 ``up``: bytes the orchestrator sent against bytes it
   received, read from its network interface (the root-namespace end of its
   veth pair: its ``rx_bytes`` is what the orchestrator sent, its
   ``tx_bytes`` what it received); the wheelhouse's size for scale;
2. a fresh 1+2 ``up`` (``python3 -m flambe_cluster up``, interpreter start
   included) against the bare ``ray start`` sequence typed over SSH on the
   same hosts once they have Ray (head, then both workers; see bench_up.py);
3. a fresh ``up`` of 1+2, 1+4, 1+8 hosts, with the machine's CPU use over
   each (``/proc/stat``): on a 2-CPU machine every host shares the CPUs, so
   what grows with N is the hosts' installs and Ray starts, CPU-bound.

Prints the figures and one line per target (egress <= 2x the wheelhouse;
fresh 1+2 ``up`` <= 2x ``ray start`` by hand); asserts nothing.  Everything
is removed at the end.

Usage: ``python3 benchmarks/bench_tree.py [--rounds 3] [--sizes 2 4 8]``
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from bench_up import ray_start_by_hand
from flambe_cluster import environment, wheelhouse
from flambe_cluster.testing.hosts import TestHostNetwork, require_root_namespaces
from flambe_cluster.testing.pytest_plugin import make_client_key

TARGET_EGRESS = 2.0
TARGET_UP_RATIO = 2.0
NAME = "bench-tree"


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - fields[3] - fields[4]) / tick, sum(fields) / tick


def counters(host) -> tuple[int, int]:
    """(sent, received) bytes of ``host`` so far, from the root end of its veth pair."""
    stats = Path(f"/sys/class/net/{host.veth}/statistics")
    return int((stats / "rx_bytes").read_text()), int((stats / "tx_bytes").read_text())


class Fresh:
    """A network of fresh test hosts and its cluster file; ``up()`` times one CLI ``up`` and records its steps."""

    def __init__(self, workdir: Path, key, factories: int) -> None:
        self.network = TestHostNetwork(1 + factories, authorized_keys=[key.public_line])
        self.hosts = self.network.hosts
        self.workdir = workdir / f"n{factories}"
        self.workdir.mkdir()
        self.config = self.workdir / "cluster.yaml"
        self.config.write_text(yaml.safe_dump({
            "provider": "ssh", "name": NAME, "username": self.hosts[0].username, "key": str(key.path),
            "orchestrator_ip": self.hosts[0].address, "factories_ips": [h.address for h in self.hosts[1:]]}))
        self.env = {**os.environ, "FLAMBE_CLUSTER_HOME": str(self.workdir / "state"), "COLUMNS": "200"}
        self.steps = ""

    def cli(self, verb: str) -> float:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "flambe_cluster", verb, str(self.config)], env=self.env,
                              capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            raise RuntimeError(f"flambe-cluster {verb} failed:\n{done.stderr}")
        if verb == "up":
            self.steps = done.stderr
        return time.perf_counter() - start

    def close(self) -> None:
        self.network.close()


def warm_wheel_cache() -> int:
    """Gather the hosts' wheels on the client (this machine's platform) and compile their bytecode, as a first
    ``up`` does; returns the wheelhouse's size in bytes (wheels and bytecode)."""
    deps, self_wheel = environment.gather_software(wheelhouse.client_platform())
    return sum(p.stat().st_size for p in deps.rglob("*") if p.is_file()) + self_wheel.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds of `ray start` by hand")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2, 4, 8], help="factories of the growth figure")
    args = parser.parse_args(argv)
    reason = require_root_namespaces()
    if reason:
        print(f"SKIPPED: needs real test hosts: {reason}")
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="bench-tree-"))
    key = make_client_key(workdir / "key")
    content = warm_wheel_cache()
    growth: list[tuple[int, float, float, float, str]] = []
    try:
        fresh = Fresh(workdir, key, 6)
        try:
            sent0, received0 = counters(fresh.hosts[0])
            fresh.cli("up")
            sent, received = (a - b for a, b in zip(counters(fresh.hosts[0]), (sent0, received0)))
        finally:
            fresh.close()
        for factories in sorted(set(args.sizes) | {2}):
            fresh = Fresh(workdir, key, factories)
            try:
                busy0, total0 = machine_cpu()
                client0 = resource.getrusage(resource.RUSAGE_CHILDREN)
                wall = fresh.cli("up")
                busy1, total1 = machine_cpu()
                client1 = resource.getrusage(resource.RUSAGE_CHILDREN)
                client = client1.ru_utime + client1.ru_stime - client0.ru_utime - client0.ru_stime
                growth.append((factories, wall, (busy1 - busy0) / (total1 - total0), busy1 - busy0, client,
                               fresh.steps))
                if factories == 2:
                    fresh_up = wall
                    fresh.cli("down")
                    known_hosts = fresh.workdir / "state" / "clusters" / NAME / "known_hosts"
                    manual, manual_cpu = [], []
                    for _ in range(args.rounds):
                        before = machine_cpu()[0]
                        manual.append(ray_start_by_hand(fresh.hosts, key.path, known_hosts, NAME))
                        manual_cpu.append(machine_cpu()[0] - before)
            finally:
                fresh.close()
    finally:
        subprocess.run(["rm", "-rf", str(workdir)], check=False)

    by_hand = statistics.median(manual)
    print(f"wheelhouse (what every host needs): {content / 2**20:.1f} MB")
    print(f"1. fresh 1+6 up: the orchestrator sent {sent / 2**20:.1f} MB ({sent / content:.2f}x the wheelhouse), "
          f"received {received / 2**20:.1f} MB ({received / content:.2f}x)")
    print(f"2. fresh 1+2 up {fresh_up:.2f} s; ray start by hand (head, then 2 workers) median {by_hand:.2f} s "
          f"(runs {', '.join(f'{x:.2f}' for x in manual)}); ratio {fresh_up / by_hand:.2f}x")
    fresh_cpu = next(cpu for factories, _wall, _busy, cpu, _client, _steps in growth if factories == 2)
    print(f"   machine CPU used (all hosts share this machine's {os.cpu_count()} CPUs): "
          f"fresh 1+2 up {fresh_cpu:.1f} s, "
          f"ray start by hand median {statistics.median(manual_cpu):.1f} s; "
          f"ratio {fresh_cpu / statistics.median(manual_cpu):.2f}x")
    print(f"3. {'hosts':<6} {'fresh up':>9} {'machine CPU busy':>17} {'CPU seconds':>12} {'client CPU':>11}")
    for factories, wall, busy, cpu, client, _steps in growth:
        print(f"   1+{factories:<4} {wall:>8.2f}s {busy * 100:>16.0f}% {cpu:>11.1f}s {client:>10.2f}s")
    print(f"target: orchestrator egress <= {TARGET_EGRESS:g}x content: measured {sent / content:.2f}x -> "
          f"{'met' if sent / content <= TARGET_EGRESS else 'NOT met'}")
    print(f"target: fresh 1+2 up <= {TARGET_UP_RATIO:g}x ray start by hand: measured {fresh_up / by_hand:.2f}x -> "
          f"{'met' if fresh_up / by_hand <= TARGET_UP_RATIO else 'NOT met'}")
    for factories, _wall, _busy, _cpu, _client, steps in growth:
        print(f"note: steps of the fresh 1+{factories} up:\n"
              + "\n".join(f"      {line}" for line in steps.splitlines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
