"""Content passed from the orchestrator to the factories as a tree, on 1 + 6 real test hosts.

The orchestrator's own bytes are read from its network interface: the
root-namespace end of its veth pair receives (``rx_bytes``) exactly what the
orchestrator sends.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from flambe_cluster import Cluster
from flambe_cluster import session as session_module
from flambe_cluster.commands import CommandResult
from flambe_cluster.errors import FlambeClusterError
from flambe_cluster.tree import spread
from helpers import ssh_cluster_yaml

NAME = "tree"
CONTENT_MB = 24


@pytest.fixture(scope="module")
def seven_hosts(flambe_test_hosts):
    network = flambe_test_hosts(7)
    yield network
    network.close()


def sent_by(host) -> int:
    """Bytes ``host`` has sent so far: what the root end of its veth pair received."""
    return int(Path(f"/sys/class/net/{host.veth}/statistics/rx_bytes").read_text())


def digests(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``, by relative path."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file()}


def random_folder(path: Path, megabytes: int) -> Path:
    path.mkdir()
    for i in range(megabytes):
        (path / f"part-{i:02d}.bin").write_bytes(os.urandom(2**20))
    return path


def test_wheelhouse_and_content_reach_every_factory_with_two_copies_from_the_orchestrator(
        seven_hosts, flambe_client_key, flambe_state_home, tmp_path):
    hosts = seven_hosts.hosts
    local = random_folder(tmp_path / "data", CONTENT_MB)
    size = sum(p.stat().st_size for p in local.iterdir())
    cluster = Cluster.from_yaml(ssh_cluster_yaml(tmp_path / "c.yaml", hosts, flambe_client_key.path, NAME))
    with cluster:
        cluster.run()
        before = sent_by(hosts[0])
        cluster.send_local_content({"data": str(local)}, "tree-content", all_hosts=True)
        egress = sent_by(hosts[0]) - before
    assert cluster.error is None, cluster.error
    wheelhouse = hosts[0].home / ".flambe-cluster" / NAME / "wheelhouse"
    assert any(wheelhouse.glob("uv-*.whl")) and any(wheelhouse.glob("ray-*.whl"))
    for host in hosts[1:]:
        assert digests(host.home / ".flambe-cluster" / NAME / "wheelhouse") == digests(wheelhouse), host.name
        assert digests(host.home / "tree-content" / "data" / "data") == digests(local), host.name
        assert (host.home / ".flambe-cluster" / NAME / "env" / "bin" / "ray").exists(), host.name
    assert egress <= 2.5 * size, f"the orchestrator sent {egress / size:.2f}x the content's size"


def test_a_factory_that_dies_mid_tree_is_named_and_its_subtree_still_served(
        seven_hosts, flambe_client_key, flambe_state_home, tmp_path, monkeypatch):
    hosts = seven_hosts.hosts
    parent, victim = hosts[1], hosts[2]  # factory0 passes the content to factory1, which would pass it to 3 and 4
    local = random_folder(tmp_path / "data", 2)
    cluster = Cluster.from_yaml(ssh_cluster_yaml(tmp_path / "c.yaml", hosts, flambe_client_key.path, NAME))
    real_rsync_on = session_module.HostSession.rsync_on

    def killing_first(self, host, *args, **kwargs):
        if host.private.host == parent.address and victim.is_running():
            victim.stop()  # during the fan-out: its parent's first copy is about to go to it
        return real_rsync_on(self, host, *args, **kwargs)

    try:
        with cluster:
            cluster.run()
            monkeypatch.setattr(session_module.HostSession, "rsync_on", killing_first)
            with pytest.raises(FlambeClusterError) as raised:
                cluster.send_local_content({"data": str(local)}, "tree-faults", all_hosts=True)
            monkeypatch.undo()
        message = str(raised.value)
        named = message.splitlines()[1]
        # tried from its parent, then once more from the orchestrator: the failure names the last path
        assert (named.startswith(f"{NAME}_factory1 ({victim.address}")
                and f"reached from {NAME}_orchestrator" in named), message
        assert message.startswith("a remote command failed:"), "one failure: the other factories got the content"
        for other in hosts[3:]:
            assert other.address not in message, message
        for other in [parent, *hosts[3:]]:
            assert digests(other.home / "tree-faults" / "data" / "data") == digests(local), other.name
    finally:
        victim.start()


def test_without_mirror_a_factory_passes_on_what_the_orchestrator_holds_not_its_own_files(
        seven_hosts, flambe_client_key, flambe_state_home, tmp_path):
    hosts = seven_hosts.hosts
    local = random_folder(tmp_path / "data", 1)
    cluster = Cluster.from_yaml(ssh_cluster_yaml(tmp_path / "c.yaml", hosts, flambe_client_key.path, NAME))
    giver = hosts[1]  # factory0: the orchestrator's one copy goes to it, and it passes the content on
    own = giver.home / "tree-own" / "data" / "data" / "only-on-factory0.txt"
    with cluster:
        cluster.run()
        own.parent.mkdir(parents=True)
        own.write_text("factory0's own output")
        os.system(f"chown -R {giver.username}: {giver.home / 'tree-own'}")
        cluster.send_local_content({"data": str(local)}, "tree-own", all_hosts=True)
    assert cluster.error is None, cluster.error
    assert own.read_text() == "factory0's own output", "added and updated only: its own file stays"
    for host in hosts[2:]:
        received = host.home / "tree-own" / "data" / "data"
        assert digests(received) == digests(local), f"{host.name} got files that were not the orchestrator's"


class Host:
    """A stand-in for an Instance: spread only needs hashing, ``name`` and ``label``."""

    def __init__(self, name):
        self.name = self.label = name


class Result:
    def __init__(self, ok):
        self.ok = ok


def test_spread_plans_a_binary_tree_and_reroutes_around_failures():
    source, targets = Host("o"), [Host(f"f{i}") for i in range(6)]
    copies, arrived = [], []

    def send(giver, taker):
        copies.append((giver.name, taker.name))
        return Result(True)

    spread(source, targets, send, lambda host: arrived.append(host.name))
    assert sorted(copies) == sorted([("o", "f0"), ("f0", "f1"), ("f0", "f2"), ("f1", "f3"), ("f1", "f4"), ("f2", "f5")])
    assert sorted(arrived) == ["f0", "f1", "f2", "f3", "f4", "f5", "o"]

    copies.clear()

    def failing(giver, taker):
        copies.append((giver.name, taker.name))
        if taker.name == "f0":
            return CommandResult(f"{taker.label}, reached from {giver.label}", "rsync", 255, b"", b"gone")
        if giver.name == "f1":
            raise FlambeClusterError("f1: the SSH connection broke")
        return Result(True)

    with pytest.raises(FlambeClusterError) as raised:
        spread(source, targets, failing)
    assert "f0, reached from o" in str(raised.value) and "f1: the SSH connection broke" in str(raised.value)
    served = {taker for _giver, taker in copies if taker != "f0"}
    assert served == {"f1", "f2", "f3", "f4", "f5"}, "every subtree is served by another host"
    assert ("o", "f1") in copies and ("o", "f2") in copies, "the failed factory's children come from its parent"
    assert ("f1", "f3") in copies and ("o", "f3") in copies, \
        "a broken giver's children go to its nearest working ancestor"


def test_a_copy_that_failed_from_a_factory_is_tried_again_from_the_source():
    source, targets = Host("o"), [Host(f"f{i}") for i in range(6)]
    copies = []

    def failing_once(giver, taker):
        copies.append((giver.name, taker.name))
        if (giver.name, taker.name) == ("f1", "f3"):
            return CommandResult(f"{taker.label}, reached from {giver.label}", "rsync", 12, b"", b"connection reset")
        return Result(True)

    spread(source, targets, failing_once)  # nothing raised: f3 got it from the source
    assert ("o", "f3") in copies, copies
    assert sum(1 for _giver, taker in copies if taker == "f3") == 2
    assert {taker for _giver, taker in copies} == {"f0", "f1", "f2", "f3", "f4", "f5"}
