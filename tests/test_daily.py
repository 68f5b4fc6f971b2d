"""What a cluster user does every day, through the real command line on real test hosts (ssh provider):
the last lines of a job's log, stopping the job (the cluster stays up), a shell (or a command with a
terminal of its own) on any host with the cluster's route and pinned host keys, and a port of a host
(TensorBoard, the report site) reached from this machine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import run_cli, ssh_cluster_yaml

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
        again = cli("stop", str(config), check=0)
        assert "no job runs on cluster 'daily'" in again.stderr, again.stderr

        on_factory = cli("attach", str(config), "--on", "factory1", "--", "hostname", "-I", check=0)
        assert on_factory.stdout.split() == [network.hosts[2].address], on_factory.stdout
        failing = cli("attach", str(config), "--", "exit 7")
        assert failing.returncode == 7, failing.stderr
        unknown = cli("attach", str(config), "--on", "factory9", "--", "true")
        assert unknown.returncode == 2 and "one of: orchestrator, factory0, factory1" in unknown.stderr, unknown.stderr

        # a page served on the orchestrator's loopback only, reached from here through `forward`
        started = cli("exec", str(config), "--on", "orchestrator", "--",
                      "nohup python3 -m http.server 8765 --bind 127.0.0.1 >/dev/null 2>&1 & echo $!", check=0)
        server = started.stdout.split("]")[-1].strip()
        forwarding = subprocess.Popen([sys.executable, "-m", "flambe_cluster", "forward", str(config), "8765",
                                       "--local", "18765"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, "FLAMBE_CLUSTER_HOME": str(home)})
        try:
            deadline, page = time.monotonic() + 30, ""
            while not page:
                assert time.monotonic() < deadline and forwarding.poll() is None, forwarding.stderr.read() \
                    if forwarding.poll() is not None else "the forwarded port never answered"
                try:
                    page = urllib.request.urlopen("http://127.0.0.1:18765/", timeout=2).read().decode()
                except OSError:
                    time.sleep(0.3)
            assert "Directory listing" in page
        finally:
            forwarding.send_signal(signal.SIGINT)
            _, said = forwarding.communicate(timeout=30)
            cli("exec", str(config), "--on", "orchestrator", "--", f"kill {server}")
        assert forwarding.returncode == 0, said
        assert "http://127.0.0.1:18765/ reaches port 8765 of daily_orchestrator" in said, said
    finally:
        try:
            cli("down", str(config), timeout=300)
        finally:
            network.close()
