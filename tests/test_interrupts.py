"""SIGINT, SIGTERM and SIGHUP sent to `flambe-cluster up` at several points, through the real command line.

Each run must exit within 5 s of the signal with 128 + the signal's number
and an "interrupted" line, leave nothing of its own running on this machine
(no ssh or rsync child), and roll back at most once; the next `up` completes.
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
from helpers import ssh_cluster_yaml

pytestmark = pytest.mark.hosts

EXIT_WITHIN = 5.0


def processes_mentioning(text: str) -> list[str]:
    """Command lines of this machine's processes that mention ``text`` (a run's state folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in line:
                found.append(f"{entry.name}: {line}")
    return found


def interrupted_up(config: Path, home: Path, signum: int, when: str, env: dict | None = None) -> tuple[int, float, str]:
    """Start `up`, send ``signum`` 1 s after a stderr line containing ``when``; (exit code, seconds to exit, stderr)."""
    environment = {**(env if env is not None else os.environ), "FLAMBE_CLUSTER_HOME": str(home), "COLUMNS": "200"}
    process = subprocess.Popen([sys.executable, "-m", "flambe_cluster", "up", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, env=environment)
    lines: list[str] = []
    reached = threading.Event()

    def read() -> None:
        for line in process.stderr:
            lines.append(line)
            if when in line:
                reached.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert reached.wait(600), f"never reached {when!r}:\n{''.join(lines)}"
        time.sleep(1.0)
        process.send_signal(signum)
        sent = time.monotonic()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running 60 s after {signal.Signals(signum).name}:\n{''.join(lines)}")
        waited = time.monotonic() - sent
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
    reader.join(10)
    text = "".join(lines)
    print(f"{signal.Signals(signum).name} at {when!r}: exit {process.returncode} after {waited:.2f} s")
    return process.returncode, waited, text


def assert_stopped(code: int, waited: float, stderr: str, signum: int, home: Path) -> None:
    assert code == 128 + signum, stderr
    assert waited < EXIT_WITHIN, f"exited {waited:.1f} s after the signal:\n{stderr}"
    assert f"interrupted ({signal.Signals(signum).name})" in stderr, stderr
    assert "Traceback" not in stderr, stderr
    assert stderr.count("rolling back") <= 1, stderr
    assert not processes_mentioning(str(home)), processes_mentioning(str(home))


POINTS = [
    (signal.SIGINT, "connecting"),
    (signal.SIGTERM, "connecting"),
    (signal.SIGHUP, "connecting"),
    (signal.SIGTERM, "setup"),
    (signal.SIGHUP, "setup"),
    (signal.SIGINT, "installing"),
    (signal.SIGTERM, "installing"),
    (signal.SIGHUP, "installing"),
    (signal.SIGINT, "starting Ray"),
    (signal.SIGTERM, "starting Ray"),
    (signal.SIGHUP, "starting Ray"),
]

# A next `up` after each point: after "installing" it also rebuilds the environment the signal left half made.
NEXT_UP = {(signal.SIGINT, "connecting"), (signal.SIGTERM, "setup"), (signal.SIGINT, "installing"),
           (signal.SIGINT, "starting Ray"), (signal.SIGTERM, "starting Ray"), (signal.SIGHUP, "starting Ray")}


@pytest.mark.parametrize("signum,point", POINTS, ids=[f"{signal.Signals(s).name}-{p}" for s, p in POINTS])
def test_a_signal_stops_up_promptly_and_the_next_up_completes(flambe_test_hosts, flambe_client_key, tmp_path,
                                                             signum, point):
    network = flambe_test_hosts(3)
    try:
        hosts = network.hosts
        home = tmp_path / "state"
        name = "stopped"
        marker = f"flambe-interrupt-{os.getpid()}-{tmp_path.name}"
        extra: dict = {}
        when = {"connecting": "connecting to 3 hosts", "setup": "setup command 1/1",
                "installing": "installing flambe-cluster and ray offline",
                "starting Ray": "starting the Ray head"}[point]
        if point == "connecting":
            hosts[2].partition()
            extra["connect_timeout"] = 60
        if point == "setup":
            extra["setup_cmds"] = [f"bash -c 'sleep 120; true' {marker}"]  # $0 is the marker: it shows in ps
        config = ssh_cluster_yaml(tmp_path / "c.yaml", hosts, flambe_client_key.path, name, **extra)

        code, waited, stderr = interrupted_up(config, home, signum, when)
        assert_stopped(code, waited, stderr, signum, home)
        if point == "setup":
            time.sleep(1.0)
            assert not processes_mentioning(marker), "the setup command goes on on the hosts"
        if point == "connecting":
            hosts[2].heal()
        if (signum, point) not in NEXT_UP:
            return  # what the next up finds does not depend on the signal: one signal per point runs it
        ssh_cluster_yaml(config, hosts, flambe_client_key.path, name)
        done = subprocess.run([sys.executable, "-m", "flambe_cluster", "up", str(config)], capture_output=True,
                              text=True, timeout=900, env={**os.environ, "FLAMBE_CLUSTER_HOME": str(home)})
        assert done.returncode == 0, done.stderr
        assert "Ray cluster up" in done.stderr or "Ray already up" in done.stderr, done.stderr
        subprocess.run([sys.executable, "-m", "flambe_cluster", "down", str(config)], capture_output=True, timeout=300,
                       env={**os.environ, "FLAMBE_CLUSTER_HOME": str(home)})
    finally:
        network.close()


def test_workers_left_joined_to_a_head_that_is_gone_are_replaced_by_the_next_up(flambe_test_hosts, flambe_client_key,
                                                                                tmp_path, monkeypatch):
    """What an `up` interrupted while Ray started can leave (seen once on a loaded machine): a new head runs, and
    the factories still run this cluster's worker nodes, joined to the head that is gone.  The next `up` replaces
    those workers instead of taking them for running ones, and completes with every worker alive."""
    from flambe_cluster import Cluster, raycluster

    network = flambe_test_hosts(3)
    home = tmp_path / "state"
    config = ssh_cluster_yaml(tmp_path / "c.yaml", network.hosts, flambe_client_key.path, "stale", ray_timeout=60)
    cli = [sys.executable, "-m", "flambe_cluster"]
    environment = {**os.environ, "FLAMBE_CLUSTER_HOME": str(home)}
    try:
        done = subprocess.run([*cli, "up", str(config)], capture_output=True, text=True, timeout=900, env=environment)
        assert done.returncode == 0, done.stderr
        monkeypatch.setenv("FLAMBE_CLUSTER_HOME", str(home))
        with Cluster.from_yaml(config) as cluster:
            cluster.load_all_instances()
            session, orchestrator = cluster.session, cluster.session.orchestrator
            raycluster.stop_node(session, orchestrator)  # the head goes; the workers' nodes stay
            raycluster._start(session, orchestrator, [
                "--head", f"--node-ip-address={orchestrator.private.host}", f"--port={session.config.ray_port}",
                "--num-cpus=0", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
            ], ("starting the Ray head", "Ray head running"))
        done = subprocess.run([*cli, "up", str(config)], capture_output=True, text=True, timeout=900, env=environment)
        assert done.returncode == 0, done.stderr
        assert done.stderr.count("starting the Ray worker on") == 2 and "starting the Ray head" not in done.stderr, \
            done.stderr
        status = subprocess.run([*cli, "status", str(config), "--json"], capture_output=True, text=True, timeout=300,
                                env=environment)
        assert status.returncode == 0 and '"alive_workers": 2' in status.stdout, status.stdout + status.stderr
    finally:
        try:
            subprocess.run([*cli, "down", str(config)], capture_output=True, timeout=300, env=environment)
        finally:
            network.close()
