"""Hosts left damaged or replaced, repaired by the next `up` (issue 11: items 5 and 6). Real test hosts."""

from __future__ import annotations

import pytest
from flambe_cluster import SSHCluster, hookimpl
from flambe_cluster.errors import HostKeyError
from flambe_cluster.records import Endpoint, Instance, Role
from flambe_cluster.ssh import SSHPool
from helpers import run_cli, ssh_cluster_yaml

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
    made = factory.run_in_namespace(["runuser", "-u", factory.username, "--", "python3", "-m", "venv", "--without-pip",
                                     env])
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


class Vouching:
    """A plugin vouching, as a cloud's console would, for the key each test host has now (or for none)."""

    def __init__(self, hosts, vouch: bool) -> None:
        self.hosts, self.vouch = hosts, vouch

    @hookimpl
    def flambe_cluster_host_keys(self, config, instance):
        if not self.vouch:
            return None
        (host,) = [h for h in self.hosts if h.address == instance.endpoint.host]
        return [host.host_key_path.with_name(host.host_key_path.name + ".pub").read_text().strip()]


def test_a_host_replaced_at_its_address_is_repinned_from_the_providers_key_and_its_peers_told(
        two_hosts, flambe_client_key, flambe_state_home, caplog):
    def cluster(vouch: bool) -> SSHCluster:  # not a `with` block: that would swallow a failed assertion
        made = SSHCluster("replaced", two_hosts[0].address, [two_hosts[1].address], str(flambe_client_key.path),
                          two_hosts[0].username)
        made.plugin_manager.register(Vouching(two_hosts, vouch))  # registered last: asked first
        made.load_all_instances()
        return made

    first = cluster(vouch=True)
    try:
        first.distribute_keys()
        assert first.cluster_has_key()
    finally:
        first.close()
    two_hosts[1].replace_host_key()  # a new instance at the same address, with a new key
    public = two_hosts[1].host_key_path.with_name(two_hosts[1].host_key_path.name + ".pub")
    new = " ".join(public.read_text().split()[:2])

    unvouched = cluster(vouch=False)
    try:
        with pytest.raises(HostKeyError, match="HOST KEY CHANGED"):
            unvouched.cluster_has_key()
    finally:
        unvouched.close()
    assert new not in (flambe_state_home / "clusters" / "replaced" / "known_hosts").read_text()

    vouched = cluster(vouch=True)
    try:
        assert not vouched.cluster_has_key(), "the hosts' known_hosts still pins the replaced host's old key"
        assert "which the provider vouches for" in caplog.text and "replaced_factory0" in caplog.text
        vouched.distribute_keys()
        assert vouched.cluster_has_key()
    finally:
        vouched.close()
    assert new in (flambe_state_home / "clusters" / "replaced" / "known_hosts").read_text()
    assert new in (two_hosts[0].home / ".ssh" / "flambe-cluster-replaced.known_hosts").read_text()
