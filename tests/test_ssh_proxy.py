"""Hosts behind a bastion, the user's OpenSSH configuration and ssh-agent, end to end on real test hosts.

Three hosts live on a network this machine has no route to (its bridge has
no address here); a bastion host sits on the tests' usual network and on
that one.  One cluster is brought up once for the module through the
bastion (``proxy_jump``); later tests reach the same hosts by aliases of an
OpenSSH configuration file (never the real ``~/.ssh/config``), with a key
held only by a real ``ssh-agent``, and finally with the bastion's key
changed.  Tests run in file order and depend on the ones before.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from flambe_cluster.config import load_config
from flambe_cluster.errors import FlambeClusterError
from flambe_cluster.localhosts.system import read_banner
from helpers import WHERE_JOB, page_through_forward, run_cli

NAME = "proxied"


def cluster_file(path: Path, user: str, addresses: list[str], **fields) -> Path:
    """An `ssh` cluster file: addresses[0] the orchestrator, the others factories; ``key=None`` leaves `key` out."""
    body = {"provider": "ssh", "name": NAME, "username": user, "orchestrator_ip": addresses[0],
            "factories_ips": addresses[1:], **fields}
    path.write_text(yaml.safe_dump({k: v for k, v in body.items() if v is not None}, sort_keys=False))
    return path


class Env:
    def __init__(self, bastion, hosts, folder: Path, key: Path):
        self.bastion, self.hosts, self.folder, self.key = bastion, hosts, folder, key
        self.state = folder / "state"

    def cli(self, *args, timeout=900, check=None, env=None):
        return run_cli(*args, state_home=self.state, timeout=timeout, check=check, env=env)


@pytest.fixture(scope="module")
def env(flambe_test_hosts, flambe_client_key, tmp_path_factory):
    outside = flambe_test_hosts(1)
    inside = flambe_test_hosts(3, routed=False)
    try:
        bastion = outside.hosts[0]
        inside.attach(bastion)
        folder = tmp_path_factory.mktemp("proxied")
        yield Env(bastion, inside.hosts, folder, flambe_client_key.path)
    finally:
        inside.close()
        outside.close()


@pytest.fixture(scope="module")
def jump_config(env):
    """The cluster reached through the bastion with `proxy_jump`; brought up once (and down at the end)."""
    bastion = env.bastion
    config = cluster_file(env.folder / "jump.yaml", bastion.username, [h.address for h in env.hosts],
                          key=str(env.key), proxy_jump=f"{bastion.username}@{bastion.address}:{bastion.port}",
                          ssh_config=False)
    env.first_up = env.cli("up", str(config))
    yield config
    env.cli("down", str(config))


def no_banner(address: str) -> bool:
    """Whether ``address:22`` sends no SSH banner from here (a default route may still accept the connection)."""
    try:
        return not read_banner(address, 22, 2.0).startswith(b"SSH-")
    except OSError:
        return True


def test_the_private_hosts_have_no_route_from_here(env):
    for host in env.hosts:
        route = subprocess.run(["ip", "-o", "route", "get", host.address], capture_output=True, text=True).stdout
        assert " dev fcb" not in route, f"no bridge of the tests may route {host.address}: {route}"
        assert no_banner(host.address)
    seen = env.bastion.run_in_namespace(["bash", "-c", f"exec 3<>/dev/tcp/{env.hosts[0].address}/22 && head -c 4 <&3"])
    assert seen.stdout == "SSH-", "the bastion reaches them"


def test_up_exec_submit_pull_through_the_bastion(env, jump_config, tmp_path):
    assert env.first_up.returncode == 0, env.first_up.stderr
    done = env.cli("exec", str(jump_config), "--", "hostname -I", check=0)
    assert sorted(line.split("] ")[1].strip() for line in done.stdout.splitlines()) == sorted(
        h.address for h in env.hosts)
    env.cli("submit", str(jump_config), str(WHERE_JOB), check=0)
    logs = env.cli("logs", str(jump_config), "--follow", check=0)
    assert f"tasks ran on {env.hosts[1].address} {env.hosts[2].address}" in logs.stdout
    local = tmp_path / "pulled"
    env.cli("pull", str(jump_config), "job-results", str(local), check=0)
    assert {p.name.split("-", 2)[2][:-4] for p in local.glob("task-*.txt")} == {h.address for h in env.hosts[1:]}
    known = (env.state / "clusters" / NAME / "known_hosts").read_text()
    assert env.bastion.address in known, "the bastion's key is pinned with the cluster's"


def write_ssh_config(env, path: Path, identity: Path | None) -> Path:
    """Aliases `gate` (the bastion) and `node0..2` (the hosts, through `gate`)."""
    bastion = env.bastion
    lines = [f"Host gate\n  HostName {bastion.address}\n  User {bastion.username}\n  Port {bastion.port}\n"]
    if identity is not None:
        lines.append(f"  IdentityFile {identity}\n")
    for index, host in enumerate(env.hosts):
        lines.append(f"Host node{index}\n  HostName {host.address}\n  ProxyJump gate\n")
    path.write_text("".join(lines))
    return path


def test_aliases_of_an_ssh_config_reach_the_same_hosts(env, jump_config):
    ssh_config = write_ssh_config(env, env.folder / "ssh_config", env.key)
    config = cluster_file(env.folder / "aliases.yaml", env.bastion.username, ["node0", "node1", "node2"],
                          key=str(env.key), ssh_config=str(ssh_config))
    up = env.cli("up", str(config), check=0)
    assert "Ray already up: 2 workers alive" in up.stderr, "the aliases' private addresses are the hosts' own"
    done = env.cli("exec", str(config), "--", "hostname -I", check=0)
    assert sorted(line.split("] ")[1].strip() for line in done.stdout.splitlines()) == sorted(
        h.address for h in env.hosts)
    env.cli("submit", str(config), str(WHERE_JOB), check=0)  # rsync (OpenSSH) through the same aliases
    env.cli("logs", str(config), "--follow", check=0)


def make_encrypted_key(folder: Path) -> Path:
    key = folder / "id_locked"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "passphrase", "-C", "locked", "-f", str(key)],
                   check=True, capture_output=True)
    return key


def test_an_encrypted_key_without_an_agent_is_refused_at_once(env, tmp_path, monkeypatch):
    key = make_encrypted_key(tmp_path)
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    config = cluster_file(tmp_path / "c.yaml", env.bastion.username, [h.address for h in env.hosts], key=str(key),
                          ssh_config=False)
    started = time.monotonic()
    with pytest.raises(FlambeClusterError) as refused:
        load_config(config, validate=False)
    assert time.monotonic() - started < 1.0
    assert str(key) in str(refused.value) and "passphrase" in str(refused.value)
    done = env.cli("up", str(config), env={k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"})
    assert done.returncode == 2 and str(key) in done.stderr


@pytest.fixture
def agent(tmp_path):
    """A real ssh-agent (stopped by its PID at the end) holding a passphrase-protected key: (environment, key)."""
    key = make_encrypted_key(tmp_path)
    sock = tmp_path / "agent.sock"
    process = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        askpass = tmp_path / "askpass"
        askpass.write_text("#!/bin/sh\necho passphrase\n")
        askpass.chmod(0o700)
        environment = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", str(key)], check=True, capture_output=True, stdin=subprocess.DEVNULL,
                       env={**environment, "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force"})
        yield environment, key
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)


def test_up_with_the_agents_key_and_no_key_field(env, jump_config, agent, tmp_path):
    environment, key = agent
    public = key.with_name(key.name + ".pub").read_text().strip()
    for host in [env.bastion, *env.hosts]:
        with open(host.home / ".ssh" / "authorized_keys", "a") as handle:
            handle.write(public + "\n")
    ssh_config = write_ssh_config(env, tmp_path / "ssh_config", identity=None)
    config = cluster_file(tmp_path / "agent.yaml", env.bastion.username, ["node0", "node1", "node2"],
                          ssh_config=str(ssh_config))
    up = env.cli("up", str(config), env=environment)
    assert up.returncode == 0, up.stderr
    done = env.cli("exec", str(config), "--", "true", env=environment)
    assert done.returncode == 0, done.stderr


def test_attach_and_forward_through_the_bastion(env, jump_config):
    assert env.first_up.returncode == 0, env.first_up.stderr
    on_factory = env.cli("attach", str(jump_config), "--on", "factory1", "--", "hostname", "-I", check=0)
    assert on_factory.stdout.split() == [env.hosts[2].address], on_factory.stdout
    page, said = page_through_forward(env.cli, jump_config, env.state, 8766, 18766)
    assert "Directory listing" in page
    assert f"http://127.0.0.1:18766/ reaches port 8766 of {NAME}_orchestrator" in said, said


def test_down_through_the_bastion(env, jump_config):
    env.cli("down", str(jump_config), check=0)
    assert all(h.is_running() for h in env.hosts)


def test_a_changed_bastion_key_is_refused(env, jump_config):
    env.bastion.replace_host_key()
    done = env.cli("exec", str(jump_config), "--", "touch", "ran-after-key-change")
    assert done.returncode != 0
    assert "HOST KEY CHANGED" in done.stderr and "jump host" in done.stderr, done.stderr
    assert not any((h.home / "ran-after-key-change").exists() for h in env.hosts)
