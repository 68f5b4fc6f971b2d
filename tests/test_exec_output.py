"""`exec` of endless and of large output, through the real command line on real test hosts (issue 11: item 9).

Endless output with a command timeout returns at the deadline, the client's
peak memory (``ru_maxrss`` of the command line's process, from ``wait4``)
under 200 MB; 20 MB of output prints, every line labelled, in under 10 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import fast_enough, run_cli, ssh_cluster_yaml

pytestmark = pytest.mark.hosts

TIMEOUT = 5


@pytest.fixture(scope="module")
def cluster(flambe_test_hosts, flambe_client_key, tmp_path_factory):
    """Two hosts and a cluster file for them (``exec`` needs no `up`), with a short command timeout."""
    network = flambe_test_hosts(2)
    folder = tmp_path_factory.mktemp("exec-output")
    config = ssh_cluster_yaml(folder / "c.yaml", network.hosts, flambe_client_key.path, "output",
                              command_timeout=TIMEOUT)
    yield config, folder / "state"
    network.close()


def measured_exec(config: Path, home: Path, command: str, stdout, *options: str) -> tuple[int, float, int, str]:
    """Run `exec` in its own process; (exit code, seconds, its peak RSS in bytes, stderr)."""
    environment = {**os.environ, "FLAMBE_CLUSTER_HOME": str(home), "COLUMNS": "200"}
    errors = home.parent / "exec-stderr"
    with open(errors, "wb") as stderr:
        began = time.monotonic()
        process = subprocess.Popen([sys.executable, "-m", "flambe_cluster", "exec", str(config), *options, "--", command],
                                   stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, env=environment,
                                   start_new_session=True)
        try:
            deadline = began + 120
            while True:  # wait4, not Popen.wait: its rusage is this process's own peak memory
                pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    pytest.fail(f"exec of {command!r} still running after 120 s")
                time.sleep(0.02)
            elapsed = time.monotonic() - began
            process.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if process.returncode is None:
                os.killpg(process.pid, 9)
                process.wait()
    return process.returncode, elapsed, usage.ru_maxrss * 1024, errors.read_text(errors="replace")


def reference(config: Path, home: Path) -> float:
    """Seconds an `exec` of `true` on both hosts takes now (interpreter start, connections)."""
    code, elapsed, _, stderr = measured_exec(config, home, "true", subprocess.DEVNULL)
    assert code == 0, stderr
    return elapsed


def test_endless_output_returns_at_the_deadline_in_bounded_memory(cluster):
    config, home = cluster
    quick = reference(config, home)
    code, elapsed, rss, stderr = measured_exec(config, home, "yes", subprocess.DEVNULL)
    print(f"endless output, {TIMEOUT} s timeout: exit {code} after {elapsed:.2f} s (`exec true`: {quick:.2f} s), "
          f"peak RSS {rss / 2**20:.0f} MiB")
    assert code == 1, stderr
    assert stderr.count(f"timed out after {TIMEOUT} s") == 2, stderr
    assert elapsed >= TIMEOUT
    assert fast_enough(elapsed - TIMEOUT, 5, quick), f"returned {elapsed - TIMEOUT:.1f} s after the deadline"
    assert rss < 200 * 2**20, f"peak RSS {rss / 2**20:.0f} MiB"


def test_twenty_megabytes_print_in_under_ten_seconds(cluster, tmp_path):
    config, home = cluster
    quick = reference(config, home)
    count = 2_700_000  # `seq`'s lines: about 20 MB of short lines, the costly kind to print
    printed = tmp_path / "stdout"
    with open(printed, "wb") as stdout:
        code, elapsed, rss, stderr = measured_exec(config, home, f"seq 1 {count}", stdout, "--on", "orchestrator")
    size = printed.stat().st_size
    print(f"seq 1 {count}: exit {code} after {elapsed:.2f} s (`exec true`: {quick:.2f} s), {size / 1e6:.1f} MB printed, "
          f"peak RSS {rss / 2**20:.0f} MiB")
    assert code == 0, stderr
    expected = "".join(f"[output_orchestrator] {i}\n" for i in range(1, count + 1))
    assert printed.read_text() == expected, "every line, in order, labelled with its host"
    assert sum(len(str(i)) + 1 for i in range(1, count + 1)) > 20_000_000
    assert fast_enough(elapsed, 10, quick), f"{elapsed:.1f} s to print"
