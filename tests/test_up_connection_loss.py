"""A host lost during `up`, through the real command line on real test hosts (issue 11: items 1 and 2, end to end).

A factory is killed (its sshd and everything on it) or blackholed (cut off
the bridge: packets dropped, no reset) while it runs a long setup command.
`up` must fail within keepalive interval x count + 5 s, naming the factory
and saying "connection lost", with the client's CPU time for that wait under
1 s (its process's user + system time, read from /proc when the fault is made
and from ``wait4`` when it exits); once the host is back, a re-`up` completes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import run_cli, ssh_cluster_yaml

pytestmark = pytest.mark.hosts

INTERVAL, COUNT = 1, 3
BOUND = INTERVAL * COUNT + 5
TICKS = os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def two_hosts(flambe_test_hosts):
    """An orchestrator and a factory, shared by the module (each test brings its factory back)."""
    network = flambe_test_hosts(2)
    yield network.hosts
    network.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def command_started(host, marker: str) -> bool:
    """Whether the setup command began on ``host`` (it leaves a file named ``marker`` in the home folder)."""
    return (host.home / marker).exists()


def up_until_lost(config: Path, home: Path, factory, marker: str, fault) -> tuple[int, float, float, str]:
    """Start `up`; once the factory runs the setup command, ``fault()``; wait for the exit.

    Returns (exit code, seconds from the fault to the exit, CPU seconds the client used meanwhile, stderr).
    """
    environment = {**os.environ, "FLAMBE_CLUSTER_HOME": str(home), "COLUMNS": "200"}
    process = subprocess.Popen([sys.executable, "-m", "flambe_cluster", "up", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env=environment, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        while not command_started(factory, marker):
            assert process.poll() is None, f"up ended before the setup command ran:\n{''.join(lines)}"
            assert time.monotonic() < deadline, f"the setup command never started:\n{''.join(lines)}"
            time.sleep(0.2)
        time.sleep(1.0)
        cpu_before = cpu_seconds(process.pid)
        fault()
        faulted = time.monotonic()
        while True:  # wait4, not Popen.wait: its rusage is the process's total CPU time
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - faulted > BOUND + 60:
                pytest.fail(f"up still running {BOUND + 60} s after the fault:\n{''.join(lines)}")
            time.sleep(0.05)
        waited = time.monotonic() - faulted
        process.returncode = os.waitstatus_to_exitcode(status)
    finally:
        if process.returncode is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    reader.join(10)
    return process.returncode, waited, usage.ru_utime + usage.ru_stime - cpu_before, "".join(lines)


@pytest.mark.parametrize("fault", ["killed", "blackholed"])
def test_up_fails_promptly_naming_the_lost_host_and_a_re_up_completes(two_hosts, flambe_client_key, tmp_path, fault):
    orchestrator, factory = two_hosts
    home = tmp_path / "state"
    name = f"lost-{fault}"
    marker = f".fc-lost-{os.getpid()}-{fault}"
    timings = {"keepalive_interval": INTERVAL, "keepalive_count": COUNT, "connect_timeout": 10, "command_timeout": 600}
    config = ssh_cluster_yaml(tmp_path / "c.yaml", two_hosts, flambe_client_key.path, name,
                              setup_cmds=[f"touch ~/{marker}; sleep 300"], **timings)
    make, undo = {"killed": (factory.stop, factory.start), "blackholed": (factory.partition, factory.heal)}[fault]
    try:
        code, waited, cpu, stderr = up_until_lost(config, home, factory, marker, make)
    finally:
        undo()
        for host in two_hosts:
            (host.home / marker).unlink(missing_ok=True)
    print(f"{fault}: up exited {code} after {waited:.2f} s (bound {BOUND} s), {cpu:.3f} s client CPU")
    assert code == 1, stderr
    assert "connection lost" in stderr, stderr
    assert f"{name}_factory0 ({factory.address})" in stderr, stderr
    assert "Traceback" not in stderr, stderr
    assert waited < BOUND, f"up exited {waited:.1f} s after the factory was {fault} (bound {BOUND} s):\n{stderr}"
    assert cpu < 1, f"the client used {cpu:.2f} s of CPU waiting:\n{stderr}"
    left = [line for line in orchestrator.run_in_namespace(["ps", "-eo", "args"]).stdout.splitlines() if marker in line]
    assert not left, f"the setup command goes on on the orchestrator: {left}"

    try:
        ssh_cluster_yaml(config, two_hosts, flambe_client_key.path, name, **timings)
        again = run_cli("up", str(config), state_home=home, timeout=900)
        assert again.returncode == 0, again.stderr
        assert "Ray cluster up" in again.stderr or "Ray already up" in again.stderr, again.stderr
    finally:
        run_cli("down", str(config), state_home=home, timeout=300)
