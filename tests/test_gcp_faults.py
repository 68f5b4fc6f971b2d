"""A fault at each step of a GCP `up` leaves nothing the run created.

The real command line (or the Python API, for the steps after the software
install, which is skipped there to keep the run short) against the local
Compute Engine fake, which hands out the addresses of three real test hosts.
Faults: validation, an insert refused after the orchestrator exists, an
operation that ends in error, an instance that never runs, an instance that
never answers SSH, a host key other than the one the instance published, the
key distribution, a failing setup command, a failing
install, Ray, the idle watchdog, and Ctrl-C.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import yaml
from flambe_cluster import Cluster
from flambe_cluster.config import parse_config
from flambe_cluster.errors import FlambeClusterError, HostKeyError
from flambe_cluster.records import ClusterInstances
from gcp_fake import FakeComputeEngine


@pytest.fixture(scope="module")
def hosts_and_fake(flambe_test_hosts):
    network = flambe_test_hosts(3)
    fake = FakeComputeEngine(host=network.gateway, addresses=[h.address for h in network.hosts], boot_seconds=0.3)
    fake.start()
    yield network, fake
    fake.close()
    network.close()


@pytest.fixture
def fake(hosts_and_fake):
    network, engine = hosts_and_fake
    engine.set_addresses([h.address for h in network.hosts])
    engine.clear_faults()
    assert engine.live_instances() == [], "the previous test left instances behind"
    return engine


@pytest.fixture
def raw(hosts_and_fake, fake, flambe_client_key, flambe_state_home, request):
    network, _ = hosts_and_fake
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.replace("test_", "").lower())[-38:].strip("-")
    name = "f-" + name.lstrip("0123456789-")
    return {"provider": "gcp", "name": name, "key": str(flambe_client_key.path), "username": network.hosts[0].username,
            "factories_num": 2, "zone": "us-central1-a", "project": fake.project, "api_endpoint": fake.url,
            "use_public": False, "connect_timeout": 10}


def up(raw, tmp_path, home, **overrides):
    body = {**raw, **overrides}
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    env = {**os.environ, "FLAMBE_CLUSTER_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "flambe_cluster", "up", str(path)], capture_output=True, text=True,
                          timeout=600, env=env)


def left(fake, name):
    return [i["name"] for i in fake.live_instances() if i["labels"]["flambe-cluster"] == name]


def test_validation_reports_every_problem_and_creates_nothing(fake, raw, tmp_path, flambe_state_home):
    done = up(raw, tmp_path, flambe_state_home, zone="us-central1-z", orchestrator_type="n9-bogus",
              orchestrator_image="ubuntu-os-cloud/ubuntu-1404-lts")
    assert done.returncode == 2, done.stderr
    assert "3 problems" in done.stderr
    for field in ("zone:", "orchestrator_type:", "orchestrator_image:"):
        assert field in done.stderr
    assert fake.count("instances.insert") == 0


def test_an_insert_refused_after_the_orchestrator_exists(fake, raw, tmp_path, flambe_state_home):
    inserts = fake.count("instances.insert")
    fake.fail_next("instances.insert", code=403, message="Quota 'GPUS_ALL_REGIONS' exceeded. Limit: 0.0 globally.",
                   reason="quotaExceeded", after=1)
    done = up(raw, tmp_path, flambe_state_home)
    assert done.returncode == 1
    assert f"creating instance {raw['name']}-factory0-" in done.stderr and "GPUS_ALL_REGIONS" in done.stderr
    assert fake.count("instances.insert") - inserts == 2
    assert left(fake, raw["name"]) == []


def test_an_operation_that_ends_in_error(fake, raw, tmp_path, flambe_state_home):
    fake.fail_operation("ZONE_RESOURCE_POOL_EXHAUSTED", after=2)
    done = up(raw, tmp_path, flambe_state_home)
    assert done.returncode == 1
    assert "ZONE_RESOURCE_POOL_EXHAUSTED" in done.stderr and f"{raw['name']}-factory1-" in done.stderr
    assert left(fake, raw["name"]) == []


def test_an_instance_that_never_runs(fake, raw, tmp_path, flambe_state_home):
    fake.stall("orchestrator", status="PROVISIONING")
    done = up(raw, tmp_path, flambe_state_home, create_timeout=2)
    assert done.returncode == 1
    assert "did not reach RUNNING" in done.stderr and "is PROVISIONING" in done.stderr
    assert left(fake, raw["name"]) == []


def test_an_instance_that_never_answers_ssh(hosts_and_fake, fake, raw, tmp_path, flambe_state_home):
    network, _ = hosts_and_fake
    silent = network.gateway.rsplit(".", 1)[0] + ".250"  # on the hosts' network, no host there
    fake.set_addresses([network.hosts[0].address, network.hosts[1].address, silent])
    done = up(raw, tmp_path, flambe_state_home, connect_timeout=3)
    assert done.returncode == 1
    assert f"{raw['name']}_factory1 ({silent})" in done.stderr
    assert left(fake, raw["name"]) == []


def test_a_failing_setup_command_on_a_cluster_that_partly_existed(fake, raw, tmp_path, flambe_state_home):
    earlier = Cluster.from_config(parse_config({**raw, "factories_num": 1}))
    earlier.load_all_instances()
    before = left(fake, raw["name"])
    done = up(raw, tmp_path, flambe_state_home, setup_cmds=["echo broken >&2; exit 3"])
    assert done.returncode == 1
    assert "exit 3" in done.stderr or "exit code 3" in done.stderr, done.stderr
    assert left(fake, raw["name"]) == before, "only the factory this run created is deleted"
    earlier.hooks.terminate(config=earlier.config, instances=ClusterInstances(earlier.orchestrator,
                                                                                              earlier.factories))
    assert left(fake, raw["name"]) == []


def test_a_failing_install(fake, raw, tmp_path, flambe_state_home):
    done = up(raw, tmp_path, flambe_state_home, python="/no/such/python3")
    assert done.returncode == 1
    assert "/no/such/python3" in done.stderr
    assert left(fake, raw["name"]) == []


def test_a_host_key_other_than_the_published_one_is_refused(hosts_and_fake, fake, raw):
    network, _ = hosts_and_fake
    hosts = network.hosts
    keys = [hosts[0].host_key_line(), hosts[2].host_key_line(), hosts[2].host_key_line()]  # factory 0's is wrong
    for host, key in zip(hosts, keys):
        fake.publish_host_keys(host.address, [key])
    try:
        cluster = Cluster.from_config(parse_config(raw))
        with cluster:
            cluster.run()
        assert isinstance(cluster.error, HostKeyError)
        assert cluster.error.host == f"{raw['name']}_factory0 ({hosts[1].address})"
        assert "not one of the host keys the provider reports" in str(cluster.error)
        assert left(fake, raw["name"]) == []
        assert not (hosts[1].home / ".ssh" / f"flambe-cluster-{raw['name']}").exists(), "nothing ran on it"
    finally:
        for host in hosts:
            fake.publish_host_keys(host.address, [])


class Injected(FlambeClusterError):
    pass


@pytest.mark.parametrize("step", ["distribute_keys", "create_dirs", "launch_ray_cluster", "idle", "interrupt"])
def test_a_fault_at_a_later_step(fake, raw, monkeypatch, step):
    """The software install is skipped (it is the slow step; test_a_failing_install covers it): `up` then starts
    Ray as it does once every host is ready."""
    monkeypatch.setattr(Cluster, "_prepare_software",
                        lambda self, start_ray: self.launch_ray_cluster() if start_ray else None)
    overrides = {}
    if step == "idle":
        monkeypatch.setattr(Cluster, "launch_ray_cluster", lambda self: None)
        overrides = {"python": "/no/such/python3"}  # the watchdog's interpreter: a real failure on the hosts
    elif step == "interrupt":
        def interrupted(self):
            raise KeyboardInterrupt()

        monkeypatch.setattr(Cluster, "launch_ray_cluster", interrupted)
    else:
        def fail(self, *args, **kwargs):
            raise Injected(f"injected failure at {step}")

        monkeypatch.setattr(Cluster, step, fail)
    cluster = Cluster.from_config(parse_config({**raw, **overrides}))
    if step == "interrupt":  # rolled back, then the interrupt goes on: the program is meant to stop
        with pytest.raises(KeyboardInterrupt), cluster:
            cluster.up()
    else:
        with cluster:
            cluster.up()
    assert cluster.error is not None
    if step == "idle":
        assert "starting the idle watchdog failed on 3 host(s)" in str(cluster.error)
        assert "/no/such/python3" in str(cluster.error)
    elif step == "interrupt":
        assert isinstance(cluster.error, KeyboardInterrupt)
    else:
        assert str(cluster.error) == f"injected failure at {step}"
    assert left(fake, raw["name"]) == [] and cluster.journal.created() == []
