"""End to end on GCP: `up` → `submit` → `logs` → second `up` → `down` through the real command line.

The real google-cloud-compute client talks to the local Compute Engine fake
(tests/gcp_fake.py), which hands out the addresses of three real test hosts
(OpenSSH servers in Linux namespaces), so everything after provisioning —
SSH, keys, offline install, Ray, the job, the idle watchdogs — runs for real.
The cluster is brought up once for the module (the offline install of Ray
takes about a minute here).  The factories have one T4 each, and a stand-in
``nvidia-smi`` that sees it (no GPU can be had here).
"""

from __future__ import annotations

import json
import time

import pytest
from gcp_fake import on_test_hosts, write_cluster_file
from helpers import WHERE_JOB, fast_enough, install_nvidia_smi, run_cli, timed

NAME = "gcp-e2e"


class Env:
    def __init__(self, network, fake, config, state):
        self.network, self.hosts, self.fake, self.config, self.state = network, network.hosts, fake, config, state

    def cli(self, *args, timeout=600, check=None):
        return run_cli(*args, state_home=self.state, timeout=timeout, check=check)

    def watchdogs(self, host) -> list[str]:
        ps = host.run_in_namespace(["ps", "-eww", "-o", "pid=,args="]).stdout.splitlines()
        return [line.split()[0] for line in ps if "gcp-idle-watchdog.py run" in line]


@pytest.fixture(scope="module")
def env(flambe_test_hosts, flambe_client_key, tmp_path_factory):
    network = flambe_test_hosts(3)
    fake = on_test_hosts(network)
    for host in network.hosts[1:]:  # the factories (the orchestrator is inserted first: the lowest address)
        install_nvidia_smi(host, 1)
    folder = tmp_path_factory.mktemp("gcp-e2e")
    config = write_cluster_file(
        folder / "cluster.yaml", fake, NAME, network.hosts[0].username, flambe_client_key.path,
        "factories_gpu_type: nvidia-tesla-t4\n"
        "factories_gpu_count: 1\n"
        "labels: {suite: e2e}\n"
        "setup_cmds: ['echo \"set up on $(hostname -I)\" > \"$HOME\"/gcp-setup']\n")
    env = Env(network, fake, config, folder / "state")
    env.first_up = env.cli("up", str(config), timeout=900)
    try:
        yield env
    finally:
        if fake.live_instances():
            env.cli("down", str(config))
        fake.close()
        network.close()


def test_up_creates_one_orchestrator_and_two_factories_with_the_cluster_labels_and_starts_ray(env):
    up = env.first_up
    assert up.returncode == 0, up.stderr
    assert f"cluster {NAME!r} is up: 1 orchestrator, 2 factories" in up.stderr
    assert "its orchestrator (e2-standard-2) never shuts itself down when idle (orchestrator_timeout: -1)" in up.stderr
    live = env.fake.live_instances()
    assert len(live) == 3 and env.fake.count("instances.insert") == 3
    assert sorted(i["labels"]["flambe-role"] for i in live) == ["factory", "factory", "orchestrator"]
    assert all(i["labels"]["flambe-cluster"] == NAME and i["labels"]["suite"] == "e2e" for i in live)
    assert sorted(i["networkInterfaces"][0]["networkIP"] for i in live) == sorted(h.address for h in env.hosts)
    for host in env.hosts:
        assert (host.home / "gcp-setup").read_text().split() == ["set", "up", "on", host.address]
    status = json.loads(env.cli("status", str(env.config), "--json", check=0).stdout)
    assert [(h["role"], h["address"], h["ssh"]) for h in status["hosts"]] == [
        ("orchestrator", env.hosts[0].address, "ok"), ("factory", env.hosts[1].address, "ok"),
        ("factory", env.hosts[2].address, "ok")]
    ray = status["ray"]
    assert ray["alive_workers"] == 2
    workers = {n["ip"]: n for n in ray["nodes"] if n["alive"] and not n["head"]}
    assert set(workers) == {env.hosts[1].address, env.hosts[2].address}
    assert all(w["resources"].get("GPU") == 1 for w in workers.values()), \
        "each factory's GPU is the one nvidia-smi sees (its accelerator configuration promises one)"


def test_each_factory_runs_one_idle_watchdog_and_the_orchestrator_none(env):
    assert env.watchdogs(env.hosts[0]) == [], "orchestrator_timeout defaults to -1"
    for factory in env.hosts[1:]:
        assert len(env.watchdogs(factory)) == 1
        settings = json.loads((factory.home / ".flambe-cluster" / NAME / "gcp-idle-watchdog.json").read_text())
        assert settings["timeout_hours"] == 1.0 and settings["role"] == "factory"


def test_submit_runs_ray_tasks_on_both_factories(env, tmp_path):
    env.cli("submit", str(env.config), str(WHERE_JOB), check=0)
    logs = env.cli("logs", str(env.config), "--follow", check=0)
    assert f"tasks ran on {env.hosts[1].address} {env.hosts[2].address}" in logs.stdout
    assert "gpus 2" in logs.stdout, "one GPU per factory, as nvidia-smi sees them"
    assert "job finished with exit code 0" in logs.stderr


def test_a_second_up_reuses_the_instances_and_the_watchdogs(env):
    before = {h.address: env.watchdogs(h) for h in env.hosts}
    reference = timed(lambda: env.cli("status", str(env.config), "--json", check=0))
    lists = env.fake.count("instances.list")
    started = time.monotonic()
    up = env.cli("up", str(env.config), check=0)
    elapsed = time.monotonic() - started
    assert env.fake.count("instances.insert") == 3, "nothing new is created"
    assert env.fake.count("instances.list") == lists + 2, "one list request to plan (nothing to change), one to find"
    assert "Ray already up: 2 workers alive" in up.stderr and "installing" not in up.stderr
    assert {h.address: env.watchdogs(h) for h in env.hosts} == before, "no second watchdog, none restarted"
    assert fast_enough(elapsed, 10, reference), f"second up took {elapsed:.1f} s (status: {reference:.1f} s)"


def test_down_deletes_every_instance_and_waits(env):
    done = env.cli("down", str(env.config), check=0)
    assert f"cluster {NAME!r} is down" in done.stderr
    assert env.fake.live_instances() == [], "down returns when the instances are gone"
    assert env.fake.count("instances.delete") == 3
    status = env.cli("status", str(env.config), check=0)
    assert "does not exist" in status.stdout
    for host in env.hosts[1:]:
        names = host.run_in_namespace(["ps", "-e", "-o", "comm="]).stdout.split()
        assert "raylet" not in names
