"""The user's OpenSSH configuration as OpenSSH itself reads it (``ssh -G``): ``Include``, ``Match``, tokens.

The first tests need no hosts (``ssh -G`` opens no connection); the last
reaches real test hosts whose aliases live only in an ``Include``d file, with
``exec`` (paramiko) and ``pull`` (rsync over OpenSSH) alike.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from flambe_cluster import UsageError
from flambe_cluster.records import Endpoint
from flambe_cluster.sshroute import Hop, Resolver
from helpers import run_cli


def including(folder: Path, included: str) -> Path:
    """An ``ssh_config`` holding only ``Include <folder>/included.conf``, which holds ``included``."""
    (folder / "included.conf").write_text(included)
    config = folder / "ssh_config"
    config.write_text(f"Include {folder / 'included.conf'}\n")
    return config


def test_a_host_of_an_included_file_is_resolved_with_its_proxy_jump(tmp_path):
    identity = tmp_path / "gpu_key"
    identity.write_text("x")
    config = including(tmp_path, f"Host gpu-alias\n  HostName 192.0.2.7\n  User alice\n  Port 2201\n"
                                 f"  IdentityFile {identity}\n  ProxyJump bob@192.0.2.1:2200,gate\n"
                                 "Host gate\n  HostName 192.0.2.2\n  User gateuser\n  Port 2022\n")
    route = Resolver("u", None, config).route(Endpoint.parse("gpu-alias"))
    assert route.hops == (Hop("192.0.2.1", 2200, "bob", ()), Hop("192.0.2.2", 2022, "gateuser", ()),
                          Hop("192.0.2.7", 2201, "u", (identity,))), "the cluster's username wins over User"
    assert route.proxy_command is None


def test_tokens_and_match_work_as_in_openssh_and_each_host_is_asked_once(tmp_path):
    (tmp_path / "u-2201.key").write_text("x")
    asked = tmp_path / "asked"
    config = including(tmp_path, f'Match originalhost gate exec "printf x >> {asked}"\n'
                                 "Host tok-*\n  HostName %h.example.net\n  Port 2201\n"
                                 f"  IdentityFile {tmp_path}/%r-%p.key\n  ProxyJump gate\n")
    once = Resolver("u", None, config).route(Endpoint.parse("tok-1"))
    assert once.hops == (Hop("gate", 22, once.hops[0].user, ()),
                         Hop("tok-1.example.net", 2201, "u", (tmp_path / "u-2201.key",)))
    per_lookup = len(asked.read_text())
    assert per_lookup > 0, "Match exec ran"
    resolver = Resolver("u", None, config)
    for name in ("tok-1", "tok-2", "tok-1"):
        assert resolver.route(Endpoint.parse(name)).hops[0].host == "gate"
    assert len(asked.read_text()) == 2 * per_lookup, "the jump host was asked once more, not once per route"


def test_openssh_defaults_are_not_identities_and_none_is_no_proxy(tmp_path):
    config = including(tmp_path, "Host plain\n  HostName 192.0.2.3\n  ProxyJump none\n  ProxyCommand none\n")
    route = Resolver("u", None, config).route(Endpoint.parse("plain"))
    assert route.hops == (Hop("192.0.2.3", 22, "u", ()),) and route.proxy_command is None, "ssh-agent's keys, direct"


def test_a_configuration_ssh_refuses_or_no_ssh_at_all_is_a_clear_error(tmp_path, monkeypatch):
    config = including(tmp_path, "Host broken\n  NoSuchOption yes\n")
    with pytest.raises(UsageError) as refused:
        Resolver("u", None, config).route(Endpoint.parse("broken"))
    assert str(config) in str(refused.value) and "nosuchoption" in str(refused.value).lower()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(UsageError, match="OpenSSH client"):
        Resolver("u", None, config).route(Endpoint.parse("other"))


@pytest.mark.hosts
def test_hosts_named_in_an_included_file_are_reached_by_exec_and_rsync(flambe_test_hosts, flambe_client_key, tmp_path):
    network = flambe_test_hosts(2)
    try:
        config = including(tmp_path, "".join(
            f"Host gpu-alias{index}\n  HostName {host.address}\n  User {host.username}\n  Port {host.port}\n"
            f"  IdentityFile {flambe_client_key.path}\n" for index, host in enumerate(network.hosts)))
        cluster = tmp_path / "c.yaml"
        cluster.write_text(yaml.safe_dump({
            "provider": "ssh", "name": "included", "username": network.hosts[0].username,
            "orchestrator_ip": "gpu-alias0", "factories_ips": ["gpu-alias1"], "ssh_config": str(config),
            "connect_timeout": 15}, sort_keys=False))  # no `key`: the included IdentityFile logs in
        state = tmp_path / "state"
        done = run_cli("exec", str(cluster), "--", "hostname -I", state_home=state, timeout=300, check=0)
        assert sorted(line.split("] ")[1].strip() for line in done.stdout.splitlines()) == sorted(
            h.address for h in network.hosts)
        (network.hosts[0].home / "results").mkdir()
        (network.hosts[0].home / "results" / "found.txt").write_text("by rsync\n")
        run_cli("pull", str(cluster), "results", str(tmp_path / "pulled"), state_home=state, timeout=300, check=0)
        assert (tmp_path / "pulled" / "found.txt").read_text() == "by rsync\n"
    finally:
        network.close()
