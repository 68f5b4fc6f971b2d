"""`exec` of endless and of large output, through the real command line on real test hosts (issue 11: item 9).

Endless output with a command timeout returns at the deadline, the client's
peak memory (``ru_maxrss`` of the command line's process, from ``wait4`` in a small launcher)
under 200 MB; 20 MB of output prints, every line labelled, in under 10 s.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import fast_enough, ssh_cluster_yaml

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


# Started by a small Python process, not by pytest: Linux carries the parent's memory at the fork into the child's
# ru_maxrss (exec records it), and pytest's is hundreds of MB late in a run. This launcher's few MB count instead.
LAUNCHER = """
import os, sys
pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as report:
    report.write(f"{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss * 1024}")
"""


def measured_exec(config: Path, home: Path, command: str, stdout, *options: str) -> tuple[int, float, int, str]:
    """Run `exec` in its own process; (exit code, seconds, its peak RSS in bytes, stderr)."""
    environment = {**os.environ, "FLAMBE_CLUSTER_HOME": str(home), "COLUMNS": "200"}
    errors, report = home.parent / "exec-stderr", home.parent / "exec-report"
    report.unlink(missing_ok=True)
    with open(errors, "wb") as stderr:
        began = time.monotonic()
        process = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(report),
                                    sys.executable, "-m", "flambe_cluster", "exec", str(config), *options, "--",
                                    command],
                                   stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, env=environment,
                                   start_new_session=True)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            pytest.fail(f"exec of {command!r} still running after 120 s")
        finally:
            if process.returncode is None:
                os.killpg(process.pid, 9)
                process.wait()
        elapsed = time.monotonic() - began
    code, rss = map(int, report.read_text().split())
    return code, elapsed, rss, errors.read_text(errors="replace")


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
    print(f"seq 1 {count}: exit {code} after {elapsed:.2f} s (`exec true`: {quick:.2f} s), "
          f"{size / 1e6:.1f} MB printed, "
          f"peak RSS {rss / 2**20:.0f} MiB")
    assert code == 0, stderr
    expected = "".join(f"[output_orchestrator] {i}\n" for i in range(1, count + 1))
    assert printed.read_text() == expected, "every line, in order, labelled with its host"
    assert sum(len(str(i)) + 1 for i in range(1, count + 1)) > 20_000_000
    assert fast_enough(elapsed, 10, quick), f"{elapsed:.1f} s to print"
