"""Idle auto-termination on GCP: the on-host watchdog (flambe_cluster_gcp/watchdog.py).

Its decision runs on a fake clock; installing it is tried in a scratch home
on this machine (started once, kept, restarted on a change, stopped by -1);
releasing an instance goes through the fake's metadata server and API; and
on real test hosts a factory with a tiny timeout deletes itself while the
client only waits.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
from flambe_cluster import Cluster
from flambe_cluster.config import parse_config
from flambe_cluster.records import ClusterInstances, Role
from flambe_cluster.remote.processes import group_record
from flambe_cluster_gcp import idle, watchdog
from gcp_fake import FakeComputeEngine

HOUR = 3600.0


# --- the decision, on a fake clock


def run_clock(samples, timeout_s, step=60.0):
    """Feed (busy) samples one ``step`` apart; return the time of release or None."""
    state, now = {"idle_since": None, "worked": False}, 0.0
    for busy in samples:
        now += step
        state, release = watchdog.decide(state, busy, now, timeout_s)
        if release:
            return now
    return None


def test_released_after_the_timeout_of_consecutive_idleness():
    assert run_clock([False] * 59, HOUR) is None
    assert run_clock([False] * 61, HOUR) == 61 * 60.0, "idle since the first sample at 60 s, released an hour later"
    assert run_clock([True] * 10 + [False] * 61, HOUR) == 71 * 60.0


def test_any_busy_sample_restarts_the_clock():
    samples = [False] * 50 + [True] + [False] * 50
    assert run_clock(samples, HOUR) is None
    assert run_clock(samples + [False] * 11, HOUR) == (52 + 60) * 60.0, "idle again from the 52nd sample"


def test_timeout_zero_releases_at_the_first_idle_sample_after_work():
    assert run_clock([False] * 1000, 0.0) is None, "never before any work was done"
    assert run_clock([False, True, True, False], 0.0) == 4 * 60.0


def test_minus_one_never_releases():
    assert run_clock([True, False] + [False] * 10000, -1.0) is None


def test_check_interval_follows_the_timeout():
    assert idle.interval_for(1.0) == 60.0
    assert idle.interval_for(0.0005) == 1.0
    assert idle.interval_for(0.01) == pytest.approx(3.6)
    assert idle.interval_for(0) == 60.0


def test_job_running_reads_the_jobs_files(tmp_path):
    assert not watchdog.job_running(str(tmp_path))
    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        record = group_record(sleeper.pid)
        (tmp_path / "process.json").write_text(json.dumps({**record, "boot": "an-earlier-boot"}))
        assert not watchdog.job_running(str(tmp_path)), "a record from before a reboot is not this job"
        (tmp_path / "process.json").write_text(json.dumps(record))
        assert watchdog.job_running(str(tmp_path))
        (tmp_path / "exit_code.json").write_text(json.dumps({"exit_code": 0}))
        assert not watchdog.job_running(str(tmp_path))
    finally:
        sleeper.kill()
        sleeper.wait()


# --- installing (on this machine, in a scratch home) and releasing (against the fake)


@pytest.fixture
def fake():
    with FakeComputeEngine(addresses=["127.0.0.1"]) as engine:
        yield engine


@pytest.fixture
def config_of(fake, flambe_client_key, flambe_state_home):
    def make(**overrides):
        raw = {"provider": "gcp", "name": "idle", "key": str(flambe_client_key.path), "username": "flambe",
               "factories_num": 0, "zone": "us-central1-a", "project": fake.project, "api_endpoint": fake.url,
               "use_public": False, **overrides}
        return parse_config(raw)

    return make


def test_install_starts_one_watchdog_keeps_it_restarts_on_change_and_stops_on_minus_one(config_of, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home)}
    started = []

    def install(config, role=Role.FACTORY):
        done = subprocess.run(["bash", "-c", idle.install_command(config, role)], env=env, capture_output=True,
                              text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        word, pid = done.stdout.split()
        if word == "started":
            started.append(int(pid))
        return word, int(pid)

    try:
        word, first = install(config_of(factories_timeout=2))
        assert word == "started" and watchdog._pid_alive(first)
        folder = home / ".flambe-cluster" / "idle"
        settings = json.loads((folder / "gcp-idle-watchdog.json").read_text())
        assert settings["timeout_hours"] == 2 and settings["interval"] == 60 and settings["role"] == "factory"
        assert settings["job_dir"] is None and settings["api"] == settings["metadata"]
        assert install(config_of(factories_timeout=2)) == ("unchanged", first)
        word, second = install(config_of(factories_timeout=3))
        assert word == "started" and second != first
        time.sleep(0.2)
        assert not watchdog._pid_alive(first)
        assert install(config_of(factories_timeout=-1)) == ("disabled", 0)
        assert not (folder / "gcp-idle-watchdog.pid").exists()
        time.sleep(0.2)
        assert not any(watchdog._pid_alive(pid) for pid in started)
        assert "watching: release after 2.0 h idle" in (folder / "gcp-idle-watchdog.log").read_text()
    finally:
        for pid in started:
            if watchdog._pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_release_deletes_the_instance_through_the_metadata_server_and_the_api(fake, config_of):
    cluster = Cluster.from_config(config_of(orchestrator_timeout=1))  # idle shutdown: a service account to delete with
    cluster.load_all_instances()
    name = cluster.orchestrator.instance_id
    settings = idle.watchdog_config(cluster.config, Role.ORCHESTRATOR)
    notes = []
    assert watchdog.release(settings, notes.append)
    deletes = [c for c in fake.calls if c["method"] == "instances.delete"]
    assert len(deletes) == 1 and deletes[0]["path"].endswith(f"/instances/{name}")
    assert deletes[0]["headers"]["authorization"] == f"Bearer fake-token-{name}"
    assert "deleting instance " + name in notes[0]
    deadline = time.monotonic() + 5
    while fake.live_instances() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert fake.live_instances() == []


def test_release_powers_off_when_the_instance_cannot_delete_itself(fake, config_of, tmp_path):
    cluster = Cluster.from_config(config_of(orchestrator_timeout=1))
    cluster.load_all_instances()
    fake.fail_next("instances.delete", code=403, message="Required 'compute.instances.delete' permission",
                   reason="forbidden")
    marker = tmp_path / "powered-off"
    settings = {**idle.watchdog_config(cluster.config, Role.ORCHESTRATOR),
                "power_off": ["sh", "-c", f"echo off > {marker}"]}
    notes = []
    assert watchdog.release(settings, notes.append)
    assert "HTTP Error 403" in notes[0] and "powering off instead" in notes[0]
    assert marker.read_text() == "off\n"
    assert len(fake.live_instances()) == 1
    assert idle.watchdog_config(cluster.config, Role.ORCHESTRATOR)["power_off"][0] == "sh", \
        "with a test endpoint the fallback never powers a machine off"


def test_an_instance_created_without_idle_shutdown_has_no_token_and_powers_off(fake, config_of, tmp_path):
    """No idle shutdown at creation: no service account, so no token; turned on later, the watchdog powers off."""
    cluster = Cluster.from_config(config_of())
    cluster.load_all_instances()
    marker = tmp_path / "powered-off"
    settings = {**idle.watchdog_config(cluster.config, Role.ORCHESTRATOR),
                "power_off": ["sh", "-c", f"echo off > {marker}"]}
    notes = []
    assert watchdog.release(settings, notes.append)
    assert "HTTP Error 404" in notes[0] and "powering off instead" in notes[0]
    assert fake.count("instances.delete") == 0 and marker.read_text() == "off\n"


# --- on real test hosts: a factory deletes itself, the client only waits


def test_an_idle_factory_deletes_itself_on_a_real_host(flambe_test_hosts, flambe_client_key, flambe_state_home):
    network = flambe_test_hosts(2)
    try:
        with FakeComputeEngine(host=network.gateway, addresses=[h.address for h in network.hosts]) as fake:
            config = parse_config({
                "provider": "gcp", "name": "idle-hosts", "key": str(flambe_client_key.path),
                "username": network.hosts[0].username, "factories_num": 1, "zone": "us-central1-a",
                "project": fake.project, "api_endpoint": fake.url, "use_public": False,
                "factories_timeout": 0.0005, "connect_timeout": 20,
            })
            cluster = Cluster.from_config(config)
            with cluster:
                cluster.load_all_instances()
                cluster.wait_until_accessible()
                instances = ClusterInstances(cluster.orchestrator, cluster.factories)

                def configure():
                    return idle.configure(config, instances,
                                          lambda host, command: cluster.pool.run(host, command).stdout,
                                          cluster.pool.map)

                first = configure()
                assert first[cluster.orchestrator.name] == "disabled 0"
                assert first[cluster.factories[0].name].startswith("started ")
                factory = cluster.factories[0].instance_id
                deadline = time.monotonic() + 60
                while fake.instance(factory) is not None and time.monotonic() < deadline:
                    time.sleep(0.5)
            assert cluster.error is None, cluster.error
            assert fake.instance(factory) is None, "the idle factory deleted itself"
            assert fake.instance(cluster.orchestrator.instance_id) is not None, "the orchestrator has no timeout"
            deletes = [c for c in fake.calls if c["method"] == "instances.delete"]
            assert [(c["client"], c["headers"]["authorization"]) for c in deletes] == [
                (network.hosts[1].address, f"Bearer fake-token-{factory}")]
            log = (network.hosts[1].home / ".flambe-cluster" / "idle-hosts" / "gcp-idle-watchdog.log").read_text()
            assert "releasing this instance" in log and f"deleting instance {factory}" in log
    finally:
        network.close()
