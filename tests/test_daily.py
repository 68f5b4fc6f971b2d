"""What a cluster user does every day, through the real command line on real test hosts (ssh provider):
the last lines of a job's log, stopping the job (the cluster stays up), a shell (or a command with a
terminal of its own) on any host with the cluster's route and pinned host keys, and a port of a host
(TensorBoard, the report site) reached from this machine."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers import page_through_forward, run_cli, ssh_cluster_yaml

pytestmark = pytest.mark.hosts
JOB = Path(__file__).parent / "jobs" / "count_lines.py"


def test_logs_tail_stop_attach_and_forward(flambe_test_hosts, flambe_client_key, tmp_path):
    network = flambe_test_hosts(3)
    config = ssh_cluster_yaml(tmp_path / "c.yaml", network.hosts, flambe_client_key.path, "daily")
    home = tmp_path / "state"
    cli = lambda *args, **kw: run_cli(*args, state_home=home, **kw)  # noqa: E731
    try:
        cli("up", str(config), check=0)
        cli("submit", str(config), str(JOB), check=0)
        deadline = time.monotonic() + 60
        while "line 5" not in cli("logs", str(config), check=0).stdout:
            assert time.monotonic() < deadline, "the job never printed its lines"
            time.sleep(0.5)
        assert cli("logs", str(config), "--tail", "2", check=0).stdout.splitlines() == ["line 4", "line 5"]

        stopped = cli("stop", str(config), check=0)
        assert "stopped the job on cluster 'daily'" in stopped.stderr, stopped.stderr
        status = json.loads(cli("status", str(config), "--json", check=0).stdout)
        assert status["job"]["state"] != "running" and status["ray"]["alive_workers"] == 2, status
        ended = cli("logs", str(config), "--follow")  # the stopped job's output, then how it ended
        assert "line 5" in ended.stdout and ended.stderr.strip().endswith("job stopped"), ended.stderr
        assert ended.returncode != 0, "logs --follow exits with the stopped job's code"
        again = cli("stop", str(config), check=0)
        assert "no job runs on cluster 'daily'" in again.stderr, again.stderr

        on_factory = cli("attach", str(config), "--on", "factory1", "--", "hostname", "-I", check=0)
        assert on_factory.stdout.split() == [network.hosts[2].address], on_factory.stdout
        failing = cli("attach", str(config), "--", "exit 7")
        assert failing.returncode == 7, failing.stderr
        unknown = cli("attach", str(config), "--on", "factory9", "--", "true")
        assert unknown.returncode == 2 and "one of: orchestrator, factory0, factory1" in unknown.stderr, unknown.stderr

        # a page served on the orchestrator's loopback only, reached from here through `forward`
        page, said = page_through_forward(cli, config, home, 8765, 18765)
        assert "Directory listing" in page
        assert "http://127.0.0.1:18765/ reaches port 8765 of daily_orchestrator" in said, said
    finally:
        try:
            cli("down", str(config), timeout=300)
        finally:
            network.close()
