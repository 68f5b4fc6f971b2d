"""Resolving routes (OpenSSH configuration, proxies, keys) and the OpenSSH options built from them; no hosts needed."""

from __future__ import annotations

import getpass
import shlex
from pathlib import Path

import pytest
from flambe_cluster import ClusterConfigurationError
from flambe_cluster.config import parse_config
from flambe_cluster.records import Endpoint
from flambe_cluster.ssh import openssh_route_options
from flambe_cluster.sshroute import Hop, Resolver, Route

BASE = {"provider": "ssh", "name": "c", "username": "u", "orchestrator_ip": "10.0.0.5", "factories_ips": [],
        "ssh_config": False}


def test_a_proxy_jump_chain_is_resolved_first_hop_first(tmp_path):
    key = tmp_path / "id"
    resolver = Resolver("u", key, None, proxy_jump="a@gate1:2222,gate2")
    route = resolver.route(Endpoint.parse("10.0.0.5"))
    assert route.hops == (Hop("gate1", 2222, "a", (key,)), Hop("gate2", 22, getpass.getuser(), (key,)),
                          Hop("10.0.0.5", 22, "u", (key,)))


def test_aliases_follow_the_config_and_the_cluster_file_wins(tmp_path):
    identity = tmp_path / "gate_key"
    identity.write_text("x")
    config = tmp_path / "ssh_config"
    config.write_text(f"Host gate\n  HostName 192.0.2.1\n  User admin\n  Port 2200\n  IdentityFile {identity}\n"
                      "Host node*\n  HostName 10.9.0.7\n  User ignored\n  Port 2022\n  ProxyJump gate\n")
    route = Resolver("u", None, config).route(Endpoint.parse("node1"))
    assert route.hops == (Hop("192.0.2.1", 2200, "admin", (identity,)), Hop("10.9.0.7", 2022, "u", ()))
    assert Resolver("u", None, config).route(Endpoint.parse("node1:2500")).target.port == 2500
    assert Resolver("u", None, config, proxy_command="nc %h %p").route(Endpoint.parse("node1")) == Route(
        (Hop("10.9.0.7", 2022, "u", ()),), "nc 10.9.0.7 2022")
    looping = tmp_path / "loop"
    looping.write_text("Host a\n  ProxyJump b\nHost b\n  ProxyJump a\n")
    with pytest.raises(Exception, match="loop"):
        Resolver("u", None, looping).route(Endpoint.parse("a"))


def test_openssh_gets_the_route_spelled_out_with_the_same_pins(tmp_path):
    key = tmp_path / "id"
    route = Route((Hop("gate1", 2222, "a", (key,)), Hop("gate2", 22, "b", ()), Hop("10.0.0.5", 22, "u", (key,))))
    options = openssh_route_options(route, tmp_path / "known", 5)
    assert options[:4] == ["-i", str(key), "-o", "IdentitiesOnly=yes"]
    assert options[options.index("-F") + 1] == "/dev/null"
    outer = shlex.split(options[5].removeprefix("ProxyCommand=").replace("%%", "%"))
    assert (outer[-3:] == ["-W", "10.0.0.5:22", "gate2"]
            and outer[outer.index("-l"):outer.index("-l") + 2] == ["-l", "b"])
    assert "IdentitiesOnly=no" in outer, "gate2 uses the agent's keys"
    assert f"UserKnownHostsFile={tmp_path / 'known'}" in outer and "StrictHostKeyChecking=yes" in outer
    inner = shlex.split(next(o for o in outer if o.startswith("ProxyCommand=")).removeprefix("ProxyCommand="))
    assert inner[-3:] == ["-W", "gate2:22", "gate1"] and "2222" in inner
    assert next(o for o in inner if o.startswith("ProxyCommand=")) == "ProxyCommand=none"
    direct = openssh_route_options(Route((Hop("h", 22, "u", ()),), "nc %h 22"), tmp_path / "k", 5,
                                   config_file=Path("/c"))
    assert "ProxyCommand=nc %%h 22" in direct and direct[direct.index("-F") + 1] == "/c"


def test_new_fields_are_checked(tmp_path):
    with pytest.raises(ClusterConfigurationError) as caught:
        parse_config({**BASE, "proxy_jump": "a@b:99999", "ssh_config": str(tmp_path / "absent")})
    text = str(caught.value)
    assert "proxy_jump: expected a jump host" in text and "ssh_config:" in text and "does not exist" in text
    with pytest.raises(ClusterConfigurationError, match="either proxy_jump or proxy_command"):
        parse_config({**BASE, "proxy_jump": "gate", "proxy_command": "nc %h %p"})
    config = parse_config({**BASE, "proxy_jump": "a@gate:2222, b@[fd00::1]:22"}, validate=False)
    assert config.proxy_jump == "a@gate:2222,b@[fd00::1]:22" and config.key is None and config.ssh_config is None


def test_a_hostile_address_is_refused_before_a_proxy_command_runs(tmp_path):
    import subprocess

    from flambe_cluster import UsageError

    for command in ("true %h %p", "sh -c 'true %h %p'"):  # a quote of ours would end the user's own
        with pytest.raises(UsageError, match="which a ProxyCommand's shell would run or split"):
            Resolver("u", None, None, proxy_command=command).route(Endpoint.parse("[fe80::1%$(touch${IFS}x)]:22"))
    assert not (tmp_path / "x").exists()
    route = Resolver("u", None, None, proxy_command="printf '%%s\\n' %h %p").route(Endpoint.parse("[fe80::1%eth0]:22"))
    done = subprocess.run(["/bin/sh", "-c", route.proxy_command], capture_output=True, text=True)
    assert done.stdout.splitlines() == ["fe80::1%eth0", "22"], "an IPv6 zone is a plain address"
