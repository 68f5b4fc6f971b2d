"""Two clients, one cluster: `up`s from two state folders (two laptops) on real test hosts (ssh provider).

Each state folder has its own local lock, so the clients meet only on the
hosts: the lock on the orchestrator (:mod:`flambe_cluster.hostlock`) makes
the second wait while the first prepares the hosts, then find the cluster
prepared.  Without it both ship the wheelhouse to the same temporary files,
distribute their own key pairs over each other's and start Ray at once.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import run_cli, ssh_cluster_yaml
from test_resize import pids

NAME = "twins"


@pytest.fixture
def twins(flambe_test_hosts, flambe_client_key, tmp_path):
    """1+2 test hosts, one cluster file, two state folders (alice's, bob's); afterwards `down`, the hosts go."""
    network = flambe_test_hosts(3)
    config = ssh_cluster_yaml(tmp_path / "cluster.yaml", network.hosts, flambe_client_key.path, NAME, ray_timeout=90)
    homes = [tmp_path / "alice", tmp_path / "bob"]
    try:
        yield network, config, homes
    finally:
        try:
            run_cli("down", str(config), state_home=homes[0], timeout=300)
        finally:
            network.close()


def start_cli(*args, state_home) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flambe_cluster", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**__import__("os").environ, "FLAMBE_CLUSTER_HOME": str(state_home), "COLUMNS": "200"})


@pytest.mark.hosts
def test_two_ups_from_two_state_folders_end_with_one_cluster(twins, monkeypatch):
    network, config, homes = twins
    clients = [start_cli("up", str(config), "--wait", "600", state_home=home) for home in homes]
    outputs = [client.communicate(timeout=900) for client in clients]
    for client, (out, err) in zip(clients, outputs):
        assert client.returncode == 0, f"exit {client.returncode}\n{out}\n{err}"
    waited = [err for _, err in outputs if "(another client) to release cluster 'twins'" in err]
    assert len(waited) == 1, "exactly one client waited for the other:\n" + "\n---\n".join(e for _, e in outputs)
    assert "rolling back" not in "".join(err for _, err in outputs)
    orchestrator, *factories = network.hosts
    assert len(pids(orchestrator, "gcs_server")) == 1, "one Ray head"
    for factory in factories:
        assert len(pids(factory, "raylet")) == 1, f"{factory.address}: one Ray worker"
    for home in homes:  # each client sees the whole cluster
        status = json.loads(run_cli("status", str(config), "--json", state_home=home, check=0).stdout)
        assert status["ray"]["alive_workers"] == 2, status

    # while one client holds the lock, another that will not wait is refused, naming the holder; nothing changes
    from flambe_cluster import Cluster, hostlock

    monkeypatch.setenv("FLAMBE_CLUSTER_HOME", str(homes[0]))
    head = pids(orchestrator, "gcs_server")
    with Cluster.from_yaml(config) as alice:
        alice.load_all_instances()
        with hostlock.held(alice.session):
            refused = run_cli("up", str(config), state_home=homes[1], check=2)
    assert "cluster 'twins' is busy: " in refused.stderr and f"state folder {alice.state.root}" in refused.stderr, \
        refused.stderr
    assert "--wait SECONDS" in refused.stderr
    assert pids(orchestrator, "gcs_server") == head
    # the lock went with its holder: the next `up` takes it at once
    again = run_cli("up", str(config), state_home=homes[1], check=0)
    assert "another client" not in again.stderr, again.stderr


def gcp_twins(network, flambe_client_key, tmp_path):
    """The GCP fake handing out ``network``'s hosts, and a cluster file on it."""
    from gcp_fake import on_test_hosts, write_cluster_file

    fake = on_test_hosts(network)
    config = write_cluster_file(tmp_path / "cluster.yaml", fake, "gcp-twins", network.hosts[0].username,
                                flambe_client_key.path)
    return fake, config


@pytest.mark.hosts
def test_two_gcp_ups_from_two_state_folders_create_one_cluster_and_roll_back_nothing(flambe_test_hosts,
                                                                                     flambe_client_key, tmp_path):
    """The case seen on GCP: both clients insert the same instances (one of each pair answers 409 and adopts the
    other's), then meet at the orchestrator's lock: one cluster, both exit 0, nothing deleted."""
    network = flambe_test_hosts(3)
    fake, config = gcp_twins(network, flambe_client_key, tmp_path)
    homes = [tmp_path / "alice", tmp_path / "bob"]
    try:
        clients = [start_cli("up", str(config), "--wait", "600", state_home=home) for home in homes]
        outputs = [client.communicate(timeout=900) for client in clients]
        for client, (out, err) in zip(clients, outputs):
            assert client.returncode == 0, f"exit {client.returncode}\n{out}\n{err}"
        errors = "".join(err for _, err in outputs)
        assert "rolling back" not in errors, errors
        assert len(fake.live_instances()) == 3, "one cluster"
        assert fake.count("instances.delete") == 0, "nothing the other client uses was deleted"
        for home in homes:
            status = json.loads(run_cli("status", str(config), "--json", state_home=home, check=0).stdout)
            assert status["ray"]["alive_workers"] == 2, status
    finally:
        try:
            if fake.live_instances():
                run_cli("down", str(config), state_home=homes[0], timeout=300)
        finally:
            fake.close()
            network.close()


@pytest.mark.hosts
def test_a_client_refused_by_the_orchestrator_s_lock_destroys_nothing_it_created(flambe_test_hosts, flambe_client_key,
                                                                                tmp_path, monkeypatch):
    """Alice's run created the instances; bob adopted them and holds the lock while he prepares them.  Alice,
    who will not wait, is refused: she must not roll back (delete) what bob is preparing."""
    from flambe_cluster import Cluster, ClusterBusyError, hostlock

    network = flambe_test_hosts(3)
    fake, config = gcp_twins(network, flambe_client_key, tmp_path)
    try:
        monkeypatch.setenv("FLAMBE_CLUSTER_HOME", str(tmp_path / "alice"))
        alice = Cluster.from_yaml(config)
        monkeypatch.setenv("FLAMBE_CLUSTER_HOME", str(tmp_path / "bob"))
        bob = Cluster.from_yaml(config)
        with alice:
            alice.load_all_instances()  # alice's run creates the instances
        assert len(alice.journal.created()) == 3
        with bob:
            bob.load_all_instances()  # bob adopts them
            with hostlock.held(bob.session), alice:  # the seed's context manager keeps the error in alice.error
                alice.up()  # the same run, refused at the orchestrator's lock
        assert bob.error is None, bob.error
        assert isinstance(alice.error, ClusterBusyError), alice.error
        assert "is preparing its hosts" in str(alice.error)
        assert fake.count("instances.delete") == 0 and len(fake.live_instances()) == 3, "nothing was rolled back"
    finally:
        try:
            if fake.live_instances():
                run_cli("down", str(config), state_home=tmp_path / "alice", timeout=300)
        finally:
            fake.close()
            network.close()
