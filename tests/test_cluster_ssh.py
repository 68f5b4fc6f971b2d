"""End to end on real test hosts: `up`, `exec`, `status`, `down` and the Python API.

Every test talks to real OpenSSH servers in Linux namespaces (see
flambe_cluster.testing.hosts) through the real command line or the Cluster API.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import threading
import time

import pytest
from flambe_cluster import Cluster, SSHCluster, UsageError, hostfiles, raycluster
from flambe_cluster.errors import RemoteCommandError
from flambe_cluster.state import ClusterState
from helpers import fast_enough, run_cli, ssh_cluster_yaml, timed

# Clusters that get as far as preparing software share one name: the hosts' environment
# (Ray, installed offline) is then installed once for the module, not once per test.
E2E = "e2e"


def cli(*args, env_home, timeout=600):
    return run_cli(*args, state_home=env_home, timeout=timeout)


def authorized_keys(host):
    return (host.home / ".ssh" / "authorized_keys").read_text()


def test_up_through_the_cli_then_exec_status_down(three_hosts, flambe_client_key, flambe_state_home, tmp_path):
    hosts = three_hosts.hosts
    config = ssh_cluster_yaml(
        tmp_path / "c.yaml", hosts, flambe_client_key.path, E2E,
        setup_cmds=['echo "setup ran on $(hostname -I)" >> "$HOME"/setup-cli-e2e'],
    )
    done = cli("up", str(config), env_home=flambe_state_home)
    assert done.returncode == 0, done.stderr
    assert "cluster 'e2e' is up: 1 orchestrator, 2 factories" in done.stderr
    public_line = (flambe_state_home / "clusters" / E2E / "cluster_key.pub").read_text().strip()
    for host in hosts:
        assert (host.home / "setup-cli-e2e").read_text().split() == ["setup", "ran", "on", host.address]
        assert public_line in authorized_keys(host)
        private = host.home / ".ssh" / "flambe-cluster-e2e"
        assert oct(private.stat().st_mode & 0o777) == "0o600"

    done = cli("exec", str(config), "--", "ip -4 -o addr show dev eth0 | awk '{print $4}'", env_home=flambe_state_home)
    assert done.returncode == 0, done.stderr
    lines = sorted(done.stdout.splitlines())
    assert lines == sorted(
        [f"[e2e_orchestrator] {hosts[0].address}/24",
         f"[e2e_factory0] {hosts[1].address}/24",
         f"[e2e_factory1] {hosts[2].address}/24"]
    )

    done = cli("exec", str(config), "--on", "factories", "--", "hostname", "-I", env_home=flambe_state_home)
    assert done.returncode == 0
    assert {line.split("] ")[1].strip() for line in done.stdout.splitlines()} == {hosts[1].address, hosts[2].address}

    done = cli("status", str(config), "--json", env_home=flambe_state_home)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert [(h["role"], h["address"], h["ssh"]) for h in status["hosts"]] == [
        ("orchestrator", hosts[0].address, "ok"), ("factory", hosts[1].address, "ok"),
        ("factory", hosts[2].address, "ok")
    ]

    done = cli("down", str(config), env_home=flambe_state_home)
    assert done.returncode == 0, done.stderr
    assert all(h.is_running() for h in hosts), "the ssh provider never touches the machines themselves"


def test_second_up_reuses_the_key_pair_and_is_fast(three_hosts, flambe_client_key, flambe_state_home, tmp_path):
    config = ssh_cluster_yaml(tmp_path / "c.yaml", three_hosts.hosts, flambe_client_key.path, E2E,
                              setup_cmds=["sleep 0.3"])
    assert cli("up", str(config), env_home=flambe_state_home).returncode == 0
    key = flambe_state_home / "clusters" / E2E / "cluster_key"
    before = key.read_bytes()
    reference = timed(lambda: cli("status", str(config), env_home=flambe_state_home))
    started = time.monotonic()
    done = cli("up", str(config), env_home=flambe_state_home)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert "cluster key already on every host" in done.stderr
    assert key.read_bytes() == before
    assert fast_enough(elapsed, 2.0 + 0.3, reference), f"second up took {elapsed:.2f} s (status: {reference:.2f} s)"


def test_up_through_the_python_api(three_hosts, flambe_client_key, flambe_state_home, tmp_path):
    hosts = three_hosts.hosts
    cluster = SSHCluster(E2E, hosts[0].address, [h.address for h in hosts[1:]], str(flambe_client_key.path),
                         hosts[0].username, setup_cmds=['touch "$HOME"/setup-api-e2e'])
    with cluster:
        cluster.run()
        assert cluster.cluster_has_key()
        assert cluster.get_orchestrator_name() == "e2e_orchestrator"
        assert cluster.get_factory_basename() == "e2e_factory"
        assert cluster.get_orch_home_path() == "/home/" + hosts[0].username
        env = cluster.get_remote_env(lambda: "researcher")
        assert env.orchestrator_ip == hosts[0].address
        assert env.factories_ips == (hosts[1].address, hosts[2].address)
        assert env.key == f"/home/{hosts[0].username}/.ssh/flambe-cluster-e2e"
        assert env.local_user == "researcher"
        # the factories hold a copy of what rsync_orch sent from the orchestrator, through the cluster key
        (hosts[0].home / "shared-folder").mkdir()
        (hosts[0].home / "shared-folder" / "weights.bin").write_bytes(os.urandom(4096))
        subprocess.run(["chown", "-R", f"{hosts[0].username}:", str(hosts[0].home / "shared-folder")], check=True)
        cluster.rsync_orch("shared-folder")
    assert cluster.error is None, cluster.error
    original = (hosts[0].home / "shared-folder" / "weights.bin").read_bytes()
    for host in hosts:
        assert (host.home / "setup-api-e2e").exists()
        assert (host.home / "extensions").is_dir()
    for factory in hosts[1:]:
        assert (factory.home / "shared-folder" / "weights.bin").read_bytes() == original


def test_changed_host_key_is_refused_and_nothing_runs(three_hosts, flambe_client_key, flambe_state_home, tmp_path):
    hosts = three_hosts.hosts
    config = ssh_cluster_yaml(tmp_path / "c.yaml", hosts, flambe_client_key.path, E2E,
                              setup_cmds=['echo run >> "$HOME"/hostkey-runs'])
    assert cli("up", str(config), env_home=flambe_state_home).returncode == 0
    hosts[2].replace_host_key()  # later tests pin the new key in their own fresh state
    done = cli("up", str(config), env_home=flambe_state_home)
    assert done.returncode == 1
    assert f"e2e_factory1 ({hosts[2].address})" in done.stderr
    assert "HOST KEY CHANGED" in done.stderr
    assert "ssh-keygen -R" in done.stderr
    assert (hosts[2].home / "hostkey-runs").read_text() == "run\n", "nothing may run on a host whose key changed"
    done = cli("exec", str(config), "--", "touch", "exec-ran", env_home=flambe_state_home)
    assert done.returncode == 1 and "HOST KEY CHANGED" in done.stderr
    assert not (hosts[2].home / "exec-ran").exists()


def test_strict_policy_refuses_unknown_hosts(three_hosts, flambe_client_key, flambe_state_home, tmp_path):
    config = ssh_cluster_yaml(tmp_path / "c.yaml", three_hosts.hosts, flambe_client_key.path, "strict",
                              host_key_policy="strict", setup_cmds=['touch "$HOME"/strict-ran'])
    done = cli("up", str(config), env_home=flambe_state_home)
    assert done.returncode == 1
    assert "unknown host key SHA256:" in done.stderr and "'strict'" in done.stderr
    assert not any((h.home / "strict-ran").exists() for h in three_hosts.hosts)


def test_unreachable_host_fails_within_the_deadline(flambe_test_hosts, flambe_client_key, flambe_state_home, tmp_path):
    network = flambe_test_hosts(3)
    hosts = network.hosts
    hosts[1].partition()
    config = ssh_cluster_yaml(tmp_path / "c.yaml", hosts, flambe_client_key.path, "unreachable", connect_timeout=3)
    started = time.monotonic()
    done = cli("up", str(config), env_home=flambe_state_home)
    elapsed = time.monotonic() - started
    assert done.returncode == 1
    assert f"unreachable_factory0 ({hosts[1].address})" in done.stderr
    assert "no SSH login" in done.stderr and "within 3 s" in done.stderr
    assert elapsed < 3 + 5, f"took {elapsed:.1f} s for a 3 s deadline"
    network.close()


def test_failing_setup_command_names_host_command_code_and_stderr(three_hosts, flambe_client_key, flambe_state_home,
                                                                  tmp_path):
    hosts = three_hosts.hosts
    (hosts[2].home / "fail-here").write_text("")
    command = 'if [ -e "$HOME"/fail-here ]; then echo "disk full on purpose" >&2; exit 3; fi'
    config = ssh_cluster_yaml(tmp_path / "c.yaml", hosts, flambe_client_key.path, "setup-fails",
                              setup_cmds=[command, 'touch "$HOME"/after-failure'])
    try:
        done = cli("up", str(config), env_home=flambe_state_home)
    finally:
        (hosts[2].home / "fail-here").unlink()
    assert done.returncode == 1
    assert f"setup-fails_factory1 ({hosts[2].address}): command {command!r} exited with code 3" in done.stderr
    assert "disk full on purpose" in done.stderr
    error = done.stderr[done.stderr.index("error:"):]  # before it, the progress lines name every host
    assert "setup-fails_factory0" not in error
    assert not any((h.home / "after-failure").exists() for h in hosts), "later setup commands must not run"


def test_a_second_up_waits_or_refuses_while_one_holds_the_lock(three_hosts, flambe_client_key, flambe_state_home,
                                                               tmp_path):
    config = ssh_cluster_yaml(tmp_path / "c.yaml", three_hosts.hosts, flambe_client_key.path, E2E)
    with ClusterState.for_cluster(E2E).lock():
        done = cli("up", str(config), env_home=flambe_state_home)
    assert done.returncode == 2
    assert "cluster 'e2e' is busy" in done.stderr and "--wait" in done.stderr
    assert f"PID {os.getpid()}" in done.stderr

    holder = ClusterState.for_cluster(E2E).lock()
    holder.__enter__()
    release = threading.Timer(2.0, holder.__exit__, (None, None, None))
    release.start()
    try:
        started = time.monotonic()
        done = cli("up", str(config), "--wait", "60", env_home=flambe_state_home)
    finally:
        release.join()
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started >= 2.0, "the second up waited for the lock"


HOSTILE = ["a;b", "it's", 'say "hi"', "$(touch pwned-subst)", "`touch pwned-tick`", "two\nlines", "  spaced  ", "*",
           "-n"]


def test_hostile_exec_arguments_are_data(three_hosts, flambe_client_key, flambe_state_home, tmp_path):
    config = ssh_cluster_yaml(tmp_path / "c.yaml", three_hosts.hosts, flambe_client_key.path, E2E)
    assert cli("up", str(config), env_home=flambe_state_home).returncode == 0
    done = cli("exec", str(config), "--on", "orchestrator", "--", "echo", "a;b", env_home=flambe_state_home)
    assert done.stdout == "[e2e_orchestrator] a;b\n"
    done = cli("exec", str(config), "--on", "orchestrator", "--", "printf", "%s|", *HOSTILE, env_home=flambe_state_home)
    assert done.returncode == 0, done.stderr
    printed = done.stdout.replace("[e2e_orchestrator] ", "")
    assert printed.rstrip("\n") == "|".join(HOSTILE) + "|"
    assert not list(three_hosts.hosts[0].home.glob("pwned*"))


def test_hostile_paths_are_data_or_refused(three_hosts, flambe_client_key, flambe_state_home, tmp_path):
    hosts = three_hosts.hosts
    cluster = Cluster.from_yaml(ssh_cluster_yaml(tmp_path / "c.yaml", hosts, flambe_client_key.path, E2E))
    name = "dir ;touch pwned-a; $(touch pwned-b) `touch pwned-c` 'q' \"d\"\nx"
    local = tmp_path / "payload $(touch pwned-local);'x'"
    local.mkdir()
    (local / "data;rm -rf ~.txt").write_text("payload")
    with cluster:
        cluster.run()
        cluster.create_dirs([name, f"{name}/inner"])
        assert cluster.existing_dir(name)
        assert cluster.existing_dir(f"{name}/inner")
        for host in hosts:
            assert (host.home / name / "inner").is_dir()
        sent = cluster.send_local_content({"res $(touch pwned-key)": str(local)}, name, all_hosts=True)
        cluster.remove_dir(f"{name}/inner", content_only=False)
        assert not cluster.existing_dir(f"{name}/inner")
        cluster.remove_dir(name, content_only=True, all_hosts=False)
        assert (hosts[0].home / name).is_dir() and not any((hosts[0].home / name).iterdir())
        for bad in ["../escape", "/etc", "~/x", "", "a/../../b"]:
            with pytest.raises(UsageError):
                cluster.create_dirs([bad])
    assert cluster.error is None, cluster.error
    assert sent == {"res $(touch pwned-key)": f"/home/{hosts[0].username}/{name}/res $(touch pwned-key)/{local.name}"}
    for host in hosts[1:]:
        assert (host.home / name / "res $(touch pwned-key)" / local.name / "data;rm -rf ~.txt").read_text() == "payload"
    for host in hosts:
        assert not list(host.home.rglob("pwned*"))
    assert not list(tmp_path.rglob("pwned*"))


def test_twenty_megabytes_of_output_arrive_intact(three_hosts, flambe_client_key, flambe_state_home, tmp_path):
    cluster = Cluster.from_yaml(ssh_cluster_yaml(tmp_path / "c.yaml", three_hosts.hosts, flambe_client_key.path, "big"))
    size = 20 * 2**20
    command = (
        f"(yes stderr-line | head -c 5000000 >&2) & "
        f"python3 -c 'import sys, hashlib; [sys.stdout.buffer.write(hashlib.sha256(str(i).encode()).digest()) "
        f"for i in range({size // 32})]'; wait"
    )
    expected = b"".join(hashlib.sha256(str(i).encode()).digest() for i in range(size // 32))
    with cluster:
        cluster.find_instances()
        started = time.monotonic()
        result = cluster.pool.run(cluster.orchestrator, command, timeout=120)
        elapsed = time.monotonic() - started
    assert cluster.error is None, cluster.error
    assert len(result.stdout_bytes) == size
    assert result.stdout_bytes == expected
    assert len(result.stderr_bytes) == 5000000
    assert elapsed < 60


def test_command_timeout_is_reported(three_hosts, flambe_client_key, flambe_state_home, tmp_path):
    cluster = Cluster.from_yaml(ssh_cluster_yaml(tmp_path / "c.yaml", three_hosts.hosts, flambe_client_key.path,
                                                 "slow"))
    with cluster:
        cluster.find_instances()
        result = cluster.pool.run(cluster.orchestrator, "sleep 30", timeout=0.5, check=False)
    assert result.exit_code is None
    assert "timed out after 0.5 s" in result.describe_failure()


# --- issue 11, items 13 and 14: who is named when an orchestrator-run step fails; status, secrets, --wait


@pytest.mark.parametrize("cut", ["stop", "partition"])
def test_a_factory_cut_off_during_a_gather_is_named_not_only_the_orchestrator(
        three_hosts, flambe_client_key, flambe_state_home, tmp_path, cut):
    hosts = three_hosts.hosts
    config = ssh_cluster_yaml(tmp_path / "c.yaml", hosts, flambe_client_key.path, E2E, connect_timeout=5)
    assert cli("up", str(config), env_home=flambe_state_home).returncode == 0
    lost = hosts[2]
    cluster = Cluster.from_yaml(config)
    with cluster:
        cluster.find_instances()
        hostfiles.create_dirs_on(cluster.session, cluster.factories, ["gathered"])
        getattr(lost, cut)()
        try:
            with pytest.raises(RemoteCommandError) as info:
                cluster.session.gather("gathered", cluster.factories)
        finally:
            lost.start() if cut == "stop" else lost.heal()
    message = str(info.value)
    head, first = message.splitlines()[:2]
    assert head == "a remote command failed:", "the factory that answered is not blamed: " + message
    assert first.startswith(f"{E2E}_factory1 ({lost.address}") and f"reached from {E2E}_orchestrator" in first, message


def test_status_exits_1_while_a_ray_worker_is_down(three_hosts, flambe_client_key, flambe_state_home, tmp_path):
    config = ssh_cluster_yaml(tmp_path / "c.yaml", three_hosts.hosts, flambe_client_key.path, E2E)
    assert cli("up", str(config), env_home=flambe_state_home).returncode == 0
    assert cli("status", str(config), env_home=flambe_state_home).returncode == 0
    cluster = Cluster.from_yaml(config)
    with cluster:
        cluster.find_instances()
        raycluster.stop_node(cluster.session, cluster.factories[1])
    stopped = cluster.factories[1]
    done = cli("status", str(config), env_home=flambe_state_home)  # at once: the head may still list the worker
    assert done.returncode == 1, done.stdout + done.stderr
    assert "1/2 workers alive" in done.stdout, done.stdout
    assert f"{stopped.name} ({stopped.private.host}): a Ray node" not in done.stdout, "factory1 runs no node"
    again = cli("up", str(config), env_home=flambe_state_home)
    assert again.returncode == 0, again.stderr
    started = re.findall(r"starting the Ray (head.*|worker on .*)", again.stderr)
    assert started == [f"worker on {stopped.label}"], again.stderr
    assert cli("status", str(config), env_home=flambe_state_home).returncode == 0


def test_down_removes_the_secrets_and_the_cluster_key_from_every_host(three_hosts, flambe_client_key,
                                                                      flambe_state_home, tmp_path):
    secrets = tmp_path / "secrets.ini"
    secrets.write_text("[GITHUB]\ntoken = t0k\n[AWS]\nkey = k3y\n")
    secrets.chmod(0o600)
    config = ssh_cluster_yaml(tmp_path / "c.yaml", three_hosts.hosts, flambe_client_key.path, E2E, secrets=str(secrets))
    assert cli("up", str(config), env_home=flambe_state_home).returncode == 0
    sent = three_hosts.hosts[0].home / ".flambe-cluster" / E2E / "secrets.ini"
    cluster = Cluster.from_yaml(config)
    with cluster:
        cluster.find_instances()
        hostfiles.send_secrets(cluster.session, ["GITHUB"])
    assert "t0k" in sent.read_text() and "k3y" not in sent.read_text()
    public = ClusterState(flambe_state_home / "clusters" / E2E).key_pair(f"flambe-cluster-{E2E}").public_line
    for host in three_hosts.hosts:
        assert public in (host.home / ".ssh" / "authorized_keys").read_text()
    done = cli("down", str(config), "--yes", env_home=flambe_state_home)
    assert done.returncode == 0, done.stderr
    assert not sent.exists(), "no secret outlives the cluster"
    for host in three_hosts.hosts:  # a machine handed back cannot log in to the others
        ssh = host.home / ".ssh"
        assert sorted(p.name for p in ssh.glob(f"flambe-cluster-{E2E}*")) == [], host.name
        authorized = (ssh / "authorized_keys").read_text()
        assert public not in authorized and flambe_client_key.public_line.strip() in authorized, host.name
    assert not (flambe_state_home / "clusters" / E2E / "cluster_key").exists(), "the next cluster gets a new pair"


def test_up_with_wait_says_what_it_waits_for(three_hosts, flambe_client_key, flambe_state_home, tmp_path):
    config = ssh_cluster_yaml(tmp_path / "c.yaml", three_hosts.hosts, flambe_client_key.path, E2E)
    with ClusterState.for_cluster(E2E).lock():
        started = time.monotonic()
        done = cli("up", str(config), "--wait", "5", env_home=flambe_state_home)
    assert done.returncode == 2, done.stderr
    assert time.monotonic() - started >= 5
    assert f"waiting up to 5 s for PID {os.getpid()} on {os.uname().nodename} to release cluster '{E2E}'" in done.stderr
    assert "is busy" in done.stderr


def test_a_state_folder_with_a_space_a_quote_and_a_percent_sign_works_for_ssh_and_rsync(three_hosts, flambe_client_key,
                                                                                       tmp_path):
    """OpenSSH reads `UserKnownHostsFile=a b` as two files and expands `%` in it: the path is quoted and escaped."""
    home = tmp_path / "my state 'q' 50%"
    config = ssh_cluster_yaml(tmp_path / "c.yaml", three_hosts.hosts, flambe_client_key.path, E2E)
    done = cli("up", str(config), env_home=home)
    assert done.returncode == 0, done.stderr
    try:
        made = cli("exec", str(config), "--", 'mkdir -p spaced && hostname -I > spaced/"$(hostname -I | tr -d " ")"',
                   env_home=home)
        assert made.returncode == 0, made.stderr
        pulled = cli("pull", str(config), "spaced", str(tmp_path / "back"), env_home=home)
        assert pulled.returncode == 0, pulled.stderr
        assert sorted(p.name for p in (tmp_path / "back").rglob("*") if p.is_file()) == sorted(
            h.address for h in three_hosts.hosts), "the factories' copies gathered, then the folder brought back"
    finally:
        assert cli("down", str(config), "--yes", env_home=home).returncode == 0


def test_a_cluster_of_the_same_name_on_other_machines_is_refused_before_anything_is_touched(
        three_hosts, flambe_client_key, flambe_state_home, tmp_path):
    hosts = three_hosts.hosts
    first = ssh_cluster_yaml(tmp_path / "first.yaml", hosts, flambe_client_key.path, E2E)
    assert cli("up", str(first), env_home=flambe_state_home).returncode == 0
    raylets = {h.address: pids_of(h, "raylet") for h in hosts[1:]}
    other = ssh_cluster_yaml(tmp_path / "other.yaml", [hosts[1], hosts[2]], flambe_client_key.path, E2E)
    for command in (["up"], ["status"], ["down", "--yes"]):
        done = cli(command[0], str(other), *command[1:], env_home=flambe_state_home)
        assert done.returncode == 2, (command, done.stderr)
        assert (f"cluster 'e2e' of this state folder ({flambe_state_home / 'clusters' / E2E}) is in another place: "
                f"orchestrator {hosts[0].address}, provider ssh; this file names orchestrator {hosts[1].address}, "
                "provider ssh. Nothing was touched.") in done.stderr, done.stderr
    assert {h.address: pids_of(h, "raylet") for h in hosts[1:]} == raylets, "the first cluster's workers were touched"
    assert cli("status", str(first), env_home=flambe_state_home).returncode == 0


def pids_of(host, pattern: str) -> list[int]:
    return sorted(int(p) for p in host.run_in_namespace(["pgrep", "-f", pattern]).stdout.split())
