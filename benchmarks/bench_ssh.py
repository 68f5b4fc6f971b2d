#!/usr/bin/env python3
"""SSH latency benchmark for flambe-cluster, on real OpenSSH test hosts.

Builds ``--hosts`` real sshd hosts in Linux namespaces
(:class:`flambe_cluster.testing.hosts.TestHostNetwork`, needs root), then
measures, in one run:

1. ``SSHPool.run_all(hosts, "true")`` on warm connections, 1 host vs N hosts
   (median, p90), and the cold figure: ``connect_all`` on a fresh pool,
   1 host vs N hosts (host keys already pinned in known_hosts).
2. ``SSHPool.run(host, "true")`` on an open paramiko connection vs
   ``ssh ... true`` through an established OpenSSH ControlMaster.
3. The wall time of a second "up" on an already-set-up 1+2 cluster with no
   setup commands: ``Cluster.up()`` in-process, and the CLI
   ``python3 -m flambe_cluster up CONFIG`` (a subprocess, interpreter start
   included).

Prints an aligned table, the CPU each warm figure cost (this client, the test
hosts), and one line per target.  Timings are reported, never asserted.
Everything it starts (hosts, bridge, namespaces, the ControlMaster) is stopped
at the end, also on errors and Ctrl-C / SIGTERM.  Without root (or without the
tools the test hosts need) it prints why and exits 0.

Usage: ``python3 benchmarks/bench_ssh.py [--hosts 16] [--repeat 200]``
(see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

HERE = Path(__file__).resolve().parent
try:
    import flambe_cluster  # noqa: F401
except ImportError:  # not installed: use the checkout's sources
    sys.path.insert(0, str(HERE.parent / "core"))
    sys.path.insert(0, str(HERE.parent / "providers" / "ssh"))

import paramiko  # noqa: E402
import yaml  # noqa: E402
from flambe_cluster import Cluster  # noqa: E402
from flambe_cluster.records import Endpoint, Instance, Role  # noqa: E402
from flambe_cluster.ssh import SSHPool, openssh_options  # noqa: E402
from flambe_cluster.state import STATE_HOME_ENV  # noqa: E402
from flambe_cluster.testing.hosts import TestHostNetwork, require_root_namespaces  # noqa: E402
from flambe_cluster.testing.pytest_plugin import make_client_key  # noqa: E402

# Targets (documented in benchmarks/README.md).
TARGET_FANOUT_RATIO = 1.5  # warm run_all on 16 hosts at most 1.5x one host
TARGET_VS_CONTROLMASTER = 0.5  # pool.run at most 0.5x ssh through a ControlMaster
TARGET_SECOND_UP_S = 2.0  # second `up` (CLI, interpreter start included) under 2 s

CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------
# statistics, CPU accounting and printing


class Sample:
    """Wall times (seconds) of one measured operation, and optionally its CPU cost per call.

    ``client_cpu``: user+system CPU of this process, of the children it waited for
    (``ssh`` clients) and of the processes passed as ``extra`` (the ControlMaster);
    ``hosts_cpu``: CPU of every process in the test hosts' PID namespaces (sshd, the
    command's shell); ``machine_cpu``: all CPUs of the machine (/proc/stat), which
    also counts anything else running on it.
    """

    def __init__(self, label: str, times: list[float], client_cpu: float | None = None,
                 hosts_cpu: float | None = None, machine_cpu: float | None = None) -> None:
        self.label = label
        self.times = sorted(times)
        self.client_cpu = client_cpu
        self.hosts_cpu = hosts_cpu
        self.machine_cpu = machine_cpu

    @property
    def n(self) -> int:
        return len(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def pct(self, p: float) -> float:
        """Nearest-rank percentile."""
        return self.times[max(0, math.ceil(p / 100 * self.n) - 1)]

    @property
    def p90(self) -> float:
        return self.pct(90)


def timed(fn: Callable[[], object], repeat: int, warmup: int = 0) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def _busy_seconds() -> float:
    """Non-idle CPU time of the whole machine (/proc/stat), in seconds."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    return (sum(values) - values[3] - values[4]) / CLK_TCK  # minus idle and iowait


def _own_cpu() -> float:
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def _stat_cpu(pid: int | str, with_children: bool) -> float:
    """utime+stime (and cutime+cstime: waited-for children) of one process, in seconds; 0 if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return sum(int(v) for v in fields[11:15 if with_children else 13]) / CLK_TCK


def namespace_cpu(namespaces: set[str]) -> float:
    """CPU of every live process in the given PID namespaces, children they reaped included.

    On a test host sshd is PID 1; each connection's sshd reaps the shells of its
    commands, so their CPU is counted through the parent's cutime/cstime.
    """
    total = 0.0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if os.readlink(f"/proc/{entry.name}/ns/pid") in namespaces:
                    total += _stat_cpu(entry.name, with_children=True)
            except OSError:
                continue
    return total


def sampled(label: str, fn: Callable[[], object], repeat: int, *, warmup: int, host_namespaces: set[str],
            extra_pids: Callable[[], list[int]] = list) -> Sample:
    """Time ``fn`` ``repeat`` times (after ``warmup`` untimed calls), with its CPU cost per call."""
    for _ in range(warmup):
        fn()

    def snapshot() -> tuple[float, float, float]:
        extra = sum(_stat_cpu(pid, with_children=False) for pid in extra_pids())
        return _own_cpu() + extra, namespace_cpu(host_namespaces), _busy_seconds()

    before = snapshot()
    times = timed(fn, repeat)
    after = snapshot()
    client, hosts, machine = ((a - b) / repeat for a, b in zip(after, before))
    return Sample(label, times, client, hosts, machine)


def fmt(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds * 1000:.2f} ms" if seconds < 1 else f"{seconds:.3f} s"


def print_table(headers: list[str], rows: list[list[str]], right: set[int]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


# --------------------------------------------------------------------------
# the measurements


def make_pool(key: Path, known_hosts: Path) -> SSHPool:
    return SSHPool(username="flambe", key_path=key, known_hosts=known_hosts, host_key_policy="accept-new",
                   connect_timeout=60.0, command_timeout=60.0)


def bench_fanout(instances: list[Instance], key: Path, known_hosts: Path, repeat: int, cold_repeat: int,
                 host_namespaces: set[str]) -> tuple[Sample, Sample, Sample, Sample, Sample, Sample]:
    """(warm 1 host, warm N hosts, cold 1 host, cold N hosts, waiting command on 1 host, on N hosts)."""
    one, many = instances[:1], instances
    # Pins every host key once (accept-new), so the cold figures below measure
    # connections to hosts whose keys are already in known_hosts.
    pool = make_pool(key, known_hosts)
    try:
        pool.connect_all(many)
        warm_one = sampled("run_all(1 host, 'true')", lambda: pool.run_all(one, "true"), repeat, warmup=10,
                           host_namespaces=host_namespaces)
        warm_many = sampled(f"run_all({len(many)} hosts, 'true')", lambda: pool.run_all(many, "true"), repeat,
                            warmup=10, host_namespaces=host_namespaces)
        # The same fan-out with a command that waits instead of computing: what the fan-out itself costs
        # when the hosts do not compete with the client (and each other) for this machine's CPUs.
        latency_repeat = max(5, repeat // 10)
        wait_one = Sample("run_all(1 host, 'sleep 0.1')",
                          timed(lambda: pool.run_all(one, "sleep 0.1"), latency_repeat, 2))
        wait_many = Sample(f"run_all({len(many)} hosts, 'sleep 0.1')",
                           timed(lambda: pool.run_all(many, "sleep 0.1"), latency_repeat, 2))
    finally:
        pool.close()

    def cold(hosts: list[Instance]) -> list[float]:
        times = []
        for _ in range(cold_repeat):
            fresh = make_pool(key, known_hosts)
            try:
                start = time.perf_counter()
                fresh.connect_all(hosts)
                times.append(time.perf_counter() - start)
            finally:
                fresh.close()
        return times

    cold_one = Sample("connect_all(1 host), fresh pool", cold(one))
    cold_many = Sample(f"connect_all({len(many)} hosts), fresh pool", cold(many))
    return warm_one, warm_many, cold_one, cold_many, wait_one, wait_many


def _master_pid(control: list[str], target: str) -> int | None:
    proc = subprocess.run(["ssh", *control, "-O", "check", target], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=10)
    match = re.search(r"pid=(\d+)", proc.stderr + proc.stdout)
    return int(match.group(1)) if match else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def bench_controlmaster(instance: Instance, key: Path, known_hosts: Path, workdir: Path, repeat: int,
                        host_namespaces: set[str], notes: list[str]) -> tuple[Sample, Sample]:
    """(pool.run on an open connection, ssh through an established ControlMaster)."""
    pool = make_pool(key, known_hosts)
    try:
        pool.connection(instance)  # open (and pin the host key) before timing
        ours = sampled("pool.run(host, 'true'), open connection", lambda: pool.run(instance, "true"), repeat,
                       warmup=10, host_namespaces=host_namespaces)
    finally:
        pool.close()

    control = ["-o", f"ControlPath={workdir / 'cm-%C'}"]
    target = f"flambe@{instance.endpoint.host}"
    argv = ["ssh", "-p", str(instance.endpoint.port), *openssh_options(key, known_hosts, 10),
            "-o", "ControlMaster=auto", *control, "-o", "ControlPersist=60", target, "true"]
    master_pid = None
    try:
        # The first client becomes the master and forks it into the background
        # (ControlPersist).  Its stdio goes to /dev/null, so the background master
        # holds no pipe of ours.
        subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=30, check=True)
        master_pid = _master_pid(control, target)
        if master_pid is None:
            raise RuntimeError("the OpenSSH ControlMaster did not start (ssh -O check found no master)")

        def through_master() -> None:
            subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=30, check=True)

        theirs = sampled("ssh host true, via ControlMaster", through_master, repeat, warmup=5,
                         host_namespaces=host_namespaces, extra_pids=lambda: [master_pid])
        if _master_pid(control, target) != master_pid:
            notes.append("warning: the ControlMaster changed during the measurement")
    finally:
        subprocess.run(["ssh", *control, "-O", "exit", target], stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=10)
        if master_pid is not None:
            deadline = time.monotonic() + 5
            while _pid_alive(master_pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _pid_alive(master_pid):  # `-O exit` did not do it: stop the one we started, by PID
                os.kill(master_pid, signal.SIGTERM)
                notes.append(f"ControlMaster PID {master_pid} needed SIGTERM")
    return ours, theirs


def bench_second_up(hosts, key: Path, workdir: Path, up_repeat: int, notes: list[str]) -> tuple[Sample, Sample]:
    """(in-process Cluster.run, CLI subprocess) for a second up on 1+2 hosts, no setup commands."""
    config = workdir / "bench-up.yaml"
    config.write_text(yaml.safe_dump({
        "provider": "ssh",
        "name": "bench-up",
        "username": hosts[0].username,
        "key": str(key),
        "orchestrator_ip": hosts[0].address,
        "factories_ips": [h.address for h in hosts[1:3]],
    }, sort_keys=False))
    saved = os.environ.get(STATE_HOME_ENV)
    os.environ[STATE_HOME_ENV] = str(workdir / "flambe-home")
    try:
        runs: list[tuple[float, list[tuple[float, str]]]] = []  # (wall time, [(time into the run, step)])

        def up_in_process() -> None:
            steps: list[tuple[float, str]] = []
            start = time.perf_counter()
            cluster = Cluster.from_yaml(config)
            cluster.on_step = lambda message: steps.append((time.perf_counter() - start, message))
            with cluster:
                cluster.up()
            runs.append((time.perf_counter() - start, steps))
            if cluster.error is not None:
                raise RuntimeError(f"Cluster.up() failed: {cluster.error}") from cluster.error

        def describe(run: tuple[float, list[tuple[float, str]]]) -> str:
            total, steps = run
            marks = [*steps, (total, "done")]
            return "; ".join(f"{marks[i + 1][0] - at:.2f} s {message[:60]}" for i, (at, message) in enumerate(steps)) \
                + f" (total {total:.2f} s)"

        up_in_process()  # the first up: pins host keys, distributes the cluster key, prepares the hosts
        notes.append(f"first up of the 1+2 cluster (Cluster.up(), in-process; everything `up` sets up on "
                     f"fresh hosts), not part of any figure: {fmt(runs[0][0])}")
        notes.append("steps of the first up: " + describe(runs[0]))
        in_process = Sample("Cluster.up(), 2nd up, 1+2 hosts", timed(up_in_process, up_repeat))
        seconds = runs[1:]
        notes.append("second ups (Cluster.up(), in-process), each: " + ", ".join(fmt(t) for t, _ in seconds))
        notes.append("steps of the fastest second up: " + describe(min(seconds, key=lambda run: run[0])))
        notes.append("steps of the slowest second up: " + describe(max(seconds, key=lambda run: run[0])))

        env = {**os.environ, "COLUMNS": "200"}

        cli_runs: list[tuple[float, str]] = []  # (wall time, stderr)

        def up_cli() -> None:
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "flambe_cluster", "up", str(config)], env=env,
                                  stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
            cli_runs.append((time.perf_counter() - start, done.stderr))
            if done.returncode != 0 or "cluster key already on every host" not in done.stderr:
                raise RuntimeError(f"`flambe_cluster up` failed (exit {done.returncode}):\n{done.stderr}")

        cli = Sample("python3 -m flambe_cluster up, 2nd up", timed(up_cli, up_repeat))
        notes.append("second ups (CLI), each: " + ", ".join(fmt(t) for t, _ in cli_runs))
        slowest, stderr = max(cli_runs)
        notes.append(f"stderr of the slowest CLI second up ({fmt(slowest)}): "
                     + "; ".join(line.strip()[:70] for line in stderr.splitlines() if line.strip()))
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import flambe_cluster.cli"], env=env, check=True)
        notes.append(f"for scale: `python3 -c 'import flambe_cluster.cli'` alone took "
                     f"{fmt(time.perf_counter() - start)}")
    finally:
        if saved is None:
            os.environ.pop(STATE_HOME_ENV, None)
        else:
            os.environ[STATE_HOME_ENV] = saved
    return in_process, cli


# --------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=16, help="hosts for the fan-out figures (default 16, min 3)")
    parser.add_argument("--repeat", type=int, default=200, help="repeats of each warm-command figure (default 200)")
    parser.add_argument("--cold-repeat", type=int, default=10, help="repeats of each connect_all figure (default 10)")
    parser.add_argument("--up-repeat", type=int, default=3, help="repeats of each second-up figure (default 3)")
    parser.add_argument("--no-up", action="store_true", help="skip figure 3 (the second `up`, and the slow first one)")
    args = parser.parse_args(argv)
    if args.hosts < 3:
        parser.error("--hosts must be at least 3 (the cluster figures use 1 orchestrator + 2 factories)")
    if min(args.repeat, args.cold_repeat, args.up_repeat) < 1:
        parser.error("repeats must be at least 1")

    reason = require_root_namespaces()
    if reason:
        print(f"SKIPPED: bench_ssh.py needs real test hosts, which this machine cannot build: {reason}")
        return 0

    # SIGTERM unwinds like Ctrl-C, so the clean-ups below still run.
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)

    started = time.perf_counter()
    notes: list[str] = []
    up_api = up_cli = None
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="flambe-bench-")))
        client = make_client_key(workdir / "client-key")
        known_hosts = workdir / "known_hosts"
        build_start = time.perf_counter()
        network = TestHostNetwork(args.hosts, authorized_keys=[client.public_line])
        stack.callback(network.close)
        build_s = time.perf_counter() - build_start
        host_namespaces = {os.readlink(f"/proc/{h.sshd_pid}/ns/pid") for h in network.hosts}
        instances = [
            Instance(name=f"bench-h{i}", role=Role.ORCHESTRATOR if i == 0 else Role.FACTORY,
                     public=Endpoint(h.address, h.port), private=Endpoint(h.address, h.port))
            for i, h in enumerate(network.hosts)
        ]
        n = len(instances)

        warm_one, warm_many, cold_one, cold_many, wait_one, wait_many = bench_fanout(
            instances, client.path, known_hosts, args.repeat, args.cold_repeat, host_namespaces)
        ours, cm = bench_controlmaster(instances[0], client.path, known_hosts, workdir, args.repeat,
                                       host_namespaces, notes)
        if args.no_up:
            notes.append("figure 3 skipped (--no-up)")
        else:
            try:
                up_api, up_cli = bench_second_up(network.hosts, client.path, workdir, args.up_repeat, notes)
            except Exception as exc:  # noqa: BLE001 - report figures 1-2 anyway
                notes.append(f"figure 3 FAILED: {type(exc).__name__}: {exc}")

    total_s = time.perf_counter() - started
    cpus = os.cpu_count() or 1

    ssh_version = subprocess.run(["ssh", "-V"], capture_output=True, text=True).stderr.strip()
    print(f"bench_ssh.py: {n} OpenSSH test hosts (built in {build_s:.1f} s) sharing this machine's {cpus} CPUs, "
          f"Python {platform.python_version()}, paramiko {paramiko.__version__}, {ssh_version}")
    print("cold connects: fresh SSHPool each time, host keys already pinned in known_hosts "
          "(accept-new; no first-contact pinning in the figure)")
    print(f"repeats: warm figures {args.repeat} (after 5-10 untimed), connect_all {args.cold_repeat}, "
          f"second up {args.up_repeat}\n")
    rows = []

    def row(figure: str, a: Sample | None, b: Sample | None) -> None:
        if a is None or b is None:
            rows.append([figure, "n/a", "", "", "", "n/a", "", "", "", ""])
            return
        rows.append([figure, a.label, str(a.n), fmt(a.median), fmt(a.p90),
                     b.label, str(b.n), fmt(b.median), fmt(b.p90), f"{b.median / a.median:.2f}x"])

    row("1. warm fan-out", warm_one, warm_many)
    row("1. waiting cmd", wait_one, wait_many)
    row("1. cold connect", cold_one, cold_many)
    row("2. warm command", cm, ours)
    row("3. second up", up_api, up_cli)
    print_table(["figure", "A", "n", "median", "p90", "B", "n", "median", "p90", "B/A (median)"], rows,
                right={2, 3, 4, 6, 7, 8, 9})
    print()
    print("CPU per call. client: this process, the ssh clients it ran and the ControlMaster; hosts: every process "
          "in the test hosts' PID namespaces; machine: all CPUs, anything else running on this machine included")
    print_table(["warm figure", "wall median", "client CPU", "hosts CPU", "machine CPU"],
                [[s.label, fmt(s.median), fmt(s.client_cpu), fmt(s.hosts_cpu), fmt(s.machine_cpu)]
                 for s in (warm_one, warm_many, ours, cm)],
                right={1, 2, 3, 4})
    print()
    fan = warm_many.median / warm_one.median
    vs_cm = ours.median / cm.median
    wait = wait_many.median / wait_one.median
    print(f"target: warm run_all on {n} hosts <= {TARGET_FANOUT_RATIO}x one host: measured {fan:.2f}x "
          f"({fmt(warm_many.median)} vs {fmt(warm_one.median)}) -> {verdict(fan <= TARGET_FANOUT_RATIO)}")
    print(f"same target, a command that waits (sleep 0.1) instead of computing: measured {wait:.2f}x "
          f"({fmt(wait_many.median)} vs {fmt(wait_one.median)}) -> {verdict(wait <= TARGET_FANOUT_RATIO)}")
    print(f"target: pool.run <= {TARGET_VS_CONTROLMASTER}x ssh via ControlMaster: measured {vs_cm:.2f}x "
          f"({fmt(ours.median)} vs {fmt(cm.median)}) -> {verdict(vs_cm <= TARGET_VS_CONTROLMASTER)}")
    if up_cli is not None:
        print(f"target: second `up` (CLI, 1+2 hosts, interpreter start included) < {TARGET_SECOND_UP_S:g} s: "
              f"measured median {fmt(up_cli.median)} (p90 {fmt(up_cli.p90)}) -> "
              f"{verdict(up_cli.median < TARGET_SECOND_UP_S)}")
    else:
        print(f"target: second `up` < {TARGET_SECOND_UP_S:g} s: not measured")
    # The hosts are namespaces on this machine: their sshd and shells share its CPUs with the
    # client, so (client + hosts CPU) / CPUs is a floor for the fan-out's wall time here.
    both = warm_many.client_cpu + warm_many.hosts_cpu
    print(f"note: fan-out bound: one run_all on {n} hosts costs {fmt(warm_many.hosts_cpu)} of CPU in the test hosts "
          f"({fmt(warm_many.hosts_cpu / n)} per host) and {fmt(warm_many.client_cpu)} in this client "
          f"({fmt(warm_many.client_cpu / n)} per host). On {cpus} shared CPUs the hosts' share alone is a "
          f"wall-time floor of {fmt(warm_many.hosts_cpu / cpus)} = {warm_many.hosts_cpu / cpus / warm_one.median:.1f}x "
          f"one host even with a client that cost nothing; with this client, {fmt(both / cpus)} = "
          f"{both / cpus / warm_one.median:.1f}x")
    for note in notes:
        print(f"note: {note}")
    print(f"total wall time {total_s:.1f} s (host build and clean-up included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
