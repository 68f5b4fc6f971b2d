"""Hosts left damaged or replaced, repaired by the next `up` (issue 11: items 5 and 6). Real test hosts."""

from __future__ import annotations

import pytest

from conftest import run_cli, ssh_cluster_yaml
from flambe_cluster import SSHCluster
from flambe_cluster.errors import HostKeyError
from flambe_cluster.records import Endpoint, Instance, Role
from flambe_cluster.ssh import SSHPool

pytestmark = pytest.mark.hosts


@pytest.fixture
def two_hosts(flambe_test_hosts):
    network = flambe_test_hosts(2)
    yield network.hosts
    network.close()


def test_a_half_built_environment_is_rebuilt_and_down_still_works(two_hosts, flambe_client_key, flambe_state_home,
                                                                 tmp_path):
    factory = two_hosts[1]
    config = str(ssh_cluster_yaml(tmp_path / "c.yaml", two_hosts, flambe_client_key.path, "halfbuilt"))
    env = f"/home/{factory.username}/.flambe-cluster/halfbuilt/env"
    # what `python -m venv` killed before it installed pip leaves behind: bin/python, no pip
    made = factory.run_in_namespace(["runuser", "-u", factory.username, "--", "python3", "-m", "venv", "--without-pip", env])
    assert made.returncode == 0, made.stderr

    run_cli("down", config, state_home=flambe_state_home, check=0)  # no helper runs in a half-built environment
    run_cli("up", config, state_home=flambe_state_home, check=0)
    assert factory.run_in_namespace(["test", "-f", f"{env}/flambe-session.build"]).returncode == 0
    run_cli("down", config, state_home=flambe_state_home, check=0)


def test_a_replaced_instance_is_repinned_only_from_a_vouched_key(two_hosts, flambe_client_key, tmp_path, caplog):
    host = two_hosts[0]
    endpoint = Endpoint(host.address, host.port)
    instance = Instance("replaced", Role.ORCHESTRATOR, endpoint, endpoint)
    public = host.host_key_path.with_name(host.host_key_path.name + ".pub")
    vouched: dict = {"keys": None}  # what the provider's flambe_cluster_host_keys hook reports for the instance
    known_hosts = tmp_path / "known_hosts"
    pool = SSHPool(username=host.username, key_path=flambe_client_key.path, known_hosts=known_hosts,
                   connect_timeout=20, vouched_keys=lambda _: vouched["keys"])
    old = public.read_text().split()[:2]
    pool.run(instance, "true")
    pool.close()
    host.replace_host_key()  # a new instance at the same address, with a new key
    new = public.read_text().split()[:2]

    for keys in (None, [" ".join(old)]):  # the provider knows nothing, or vouches for another key
        vouched["keys"] = keys
        with pytest.raises(HostKeyError, match="HOST KEY CHANGED"):
            pool.run(instance, "true")
        assert " ".join(old) in known_hosts.read_text(), "the refusal changes no pin"

    vouched["keys"] = [" ".join(new) + " root@replaced"]
    assert pool.run(instance, "echo ran").stdout.strip() == "ran"
    assert known_hosts.read_text() == f"{endpoint.known_hosts_name} {' '.join(new)}\n"
    assert "vouches for" in caplog.text and "replaced" in caplog.text
    pool.close()


def test_the_hosts_known_hosts_counts_as_missing_once_a_pinned_key_changes(two_hosts, flambe_client_key,
                                                                         flambe_state_home):
    def cluster() -> SSHCluster:  # not a `with` block: that would swallow a failed assertion
        made = SSHCluster("stalepin", two_hosts[0].address, [two_hosts[1].address], str(flambe_client_key.path),
                          two_hosts[0].username)
        made.load_all_instances()
        return made

    first = cluster()
    try:
        first.distribute_keys()
        assert first.cluster_has_key()
        first.session.forget_host_keys(first.session.hosts())  # as re-pinning a replaced instance does
    finally:
        first.close()
    two_hosts[1].replace_host_key()
    second = cluster()
    try:
        assert not second.cluster_has_key(), "the hosts' known_hosts still pins the replaced host's old key"
        second.distribute_keys()
        assert second.cluster_has_key()
    finally:
        second.close()
    public = two_hosts[1].host_key_path.with_name(two_hosts[1].host_key_path.name + ".pub")
    known = two_hosts[0].home / ".ssh" / "flambe-cluster-stalepin.known_hosts"
    assert " ".join(public.read_text().split()[:2]) in known.read_text()
