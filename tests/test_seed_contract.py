"""The seed's contract down to its types: what a Flambé-era caller builds, reads and passes around.

Unit checks (no hosts) for the types; one run on real test hosts (the seed's ``SSHCluster`` class, as Flambé's
runner drives it) for what needs a cluster: instance objects from ``get_orchestrator``, a pickled handle, the
injected secrets sent with the seed's whitelist semantics, Ray on Flambé's port, and a job that rebuilds its
RemoteEnvironment and gathers a folder from every factory.
"""

from __future__ import annotations

import configparser
import json
import pickle
import subprocess
import time
from pathlib import Path

import pytest
from flambe_cluster import RemoteCommand, RemoteEnvironment
from flambe_cluster.secrets import filtered

GATHER_JOB = Path(__file__).parent / "jobs" / "gather_outputs.py"


def test_remote_command_is_the_seed_s_named_pair():
    done = RemoteCommand(False, "exit 1: no such file")
    assert ((done.success, done.msg) == (False, "exit 1: no such file")
            and tuple(done) == (False, "exit 1: no such file"))


def test_remote_environment_is_built_and_read_as_flambe_does():
    env = RemoteEnvironment("/home/u/.ssh/k", "10.0.0.1", ["10.0.0.2", "10.0.0.3"], "u", "alice", "34.1.1.1",
                            ["34.1.1.2", "34.1.1.3"])
    assert (env.key, env.orchestrator_ip, env.factories_ips, env.user, env.local_user) == (
        "/home/u/.ssh/k", "10.0.0.1", ("10.0.0.2", "10.0.0.3"), "u", "alice")
    assert env.public_orchestrator_ip == env.orchestrator_public_ip == "34.1.1.1"
    assert env.public_factories_ips == ("34.1.1.2", "34.1.1.3")
    variable = json.dumps({**env.as_dict(), "added_by_a_newer_cluster": 1})
    assert RemoteEnvironment.from_env({"FLAMBE_REMOTE_ENV": variable}) == env


def test_send_secrets_keeps_the_seed_s_whitelist_semantics(tmp_path, caplog):
    path = tmp_path / "secrets.ini"
    path.write_text("[GITHUB]\ntoken = g\n[PIP]\nindex = p\n[AWS]\nkey = a\n")
    sections = lambda text: configparser.ConfigParser().read_string(text.decode()) or \
        [s for s in text.decode().split() if s.startswith("[")]  # noqa: E731
    assert sections(filtered(path, None)) == ["[GITHUB]", "[PIP]", "[AWS]"]
    assert sections(filtered(path, [])) == ["[GITHUB]", "[PIP]", "[AWS]"], "an empty whitelist sends all"
    assert sections(filtered(path, ["GITHUB", "SLACK"])) == ["[GITHUB]"], "a missing section is skipped"
    assert "SLACK" in caplog.text and "token" not in caplog.text
    injected = configparser.ConfigParser()  # as Flambé's runner reads it: inject_secrets
    injected.read(path)
    assert filtered(injected, ["PIP"]).decode().split() == ["[PIP]", "index", "=", "p"]


@pytest.mark.hosts
def test_a_seed_class_cluster_as_flambe_drives_it(flambe_test_hosts, flambe_client_key, flambe_state_home, tmp_path):
    from flambe_cluster import ClusterError, OrchestratorInstance, SSHCluster

    network = flambe_test_hosts(3)
    orchestrator_host, *factory_hosts = network.hosts
    cluster = SSHCluster("seed", orchestrator_host.address, [h.address for h in factory_hosts],
                         str(flambe_client_key.path), orchestrator_host.username)
    secrets = tmp_path / "secrets.ini"
    secrets.write_text("[GITHUB]\ntoken = g\n[PIP]\nindex = p\n")
    for host in factory_hosts:  # what each factory's trials wrote
        (host.home / "outputs").mkdir()
        (host.home / "outputs" / f"trial-{host.address}.json").write_text("{}")
        subprocess.run(["chown", "-R", f"{host.username}:", str(host.home / "outputs")], check=True)
    seen: dict = {}
    try:
        with cluster:  # the seed's context manager: an error is kept in cluster.error, not raised
            cluster.inject_secrets(str(secrets))
            cluster.up()
            made = cluster.get_orchestrator(orchestrator_host.address)
            seen["made"] = (type(made), made.name, made.host, made.get_home_path())
            carried = pickle.loads(pickle.dumps(cluster.orchestrator))
            seen["carried"] = (carried.name, carried.host)
            try:
                carried.get_home_path()
            except ClusterError as exc:
                seen["carried_error"] = str(exc)
            new_secrets = cluster.send_secrets(whitelist=["GITHUB", "SLACK"])
            cluster.execute(str(GATHER_JOB), {}, new_secrets, force=False)
            log = orchestrator_host.home / ".flambe-cluster" / "seed" / "job" / "output.log"
            deadline = time.monotonic() + 120
            while "gathered" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
                time.sleep(0.5)
            seen["log"] = log.read_text() if log.exists() else "no job output"
        assert cluster.error is None, cluster.error
        assert cluster.config.ray_port == 12345, "Flambé's Experiment dials the head on 12345"
        assert seen["made"] == (OrchestratorInstance, "seed_orchestrator", orchestrator_host.address,
                                f"/home/{orchestrator_host.username}")
        assert seen["carried"] == ("seed_orchestrator", orchestrator_host.address)
        assert "unpickled away from its cluster" in seen["carried_error"]
        lines = dict(line.split(" ", 1) for line in seen["log"].splitlines() if " " in line)
        assert "gathered" in lines, seen["log"]
        env = json.loads(lines["env"])
        assert env == {"orchestrator_ip": orchestrator_host.address,
                       "factories_ips": [h.address for h in factory_hosts],
                       "user": orchestrator_host.username, "local_user": __import__("getpass").getuser()}
        assert lines["ray"].endswith(":12345")
        assert json.loads(lines["secrets"]) == ["GITHUB"]
        assert json.loads(lines["gathered"]) == sorted(f"trial-{h.address}.json" for h in factory_hosts)
        # the same cluster from a cluster file (Ray's 6379): refused, never taken for a head that is gone
        from helpers import run_cli, ssh_cluster_yaml

        head = orchestrator_host.run_in_namespace(["pgrep", "-f", "gcs_server"]).stdout
        as_file = ssh_cluster_yaml(tmp_path / "seed.yaml", network.hosts, flambe_client_key.path, "seed")
        refused = run_cli("up", str(as_file), state_home=flambe_state_home, check=1)
        assert "its Ray head was started on port 12345, but this configuration says ray_port 6379" in refused.stderr, \
            refused.stderr
        assert orchestrator_host.run_in_namespace(["pgrep", "-f", "gcs_server"]).stdout == head, \
            "the head was restarted"
    finally:
        try:
            with cluster:
                cluster.down()
        finally:
            network.close()


@pytest.mark.hosts
def test_a_0_4_style_subclass_lists_its_machines_and_runs_up_and_down(flambe_test_hosts, flambe_client_key,
                                                                      flambe_state_home, tmp_path):
    """Flambé 0.4's way to add a provider: subclass Cluster, override load_all_instances, assign orchestrator
    and factories.  The generic up (run included) and down work unchanged; the machines are never destroyed."""
    from flambe_cluster import Cluster

    class FileCluster(Cluster):
        """The machines listed in a file, one address per line, the orchestrator first."""

        def __init__(self, name, hosts_file, key, username):
            self.hosts_file = hosts_file
            super().__init__(name, len(Path(hosts_file).read_text().split()) - 1, key, username)

        def load_all_instances(self):
            first, *others = Path(self.hosts_file).read_text().split()
            self.orchestrator = self.get_orchestrator(first)
            self.factories = [self.get_factory(ip) for ip in others]

    network = flambe_test_hosts(3)
    listing = tmp_path / "hosts.txt"
    listing.write_text("\n".join(h.address for h in network.hosts) + "\n")
    cluster = FileCluster("listed", str(listing), str(flambe_client_key.path), network.hosts[0].username)
    assert cluster.config.provider == "given" and cluster.config.ray_port == 12345
    seen: dict = {}
    try:
        with cluster:
            cluster.up()
            seen["complete"] = cluster.check_ray_cluster()
            seen["names"] = [f.name for f in cluster.factories]
        assert cluster.error is None, cluster.error
        assert seen == {"complete": True, "names": ["listed_factory0", "listed_factory1"]}
        for host in network.hosts:
            assert host.run_in_namespace(["pgrep", "-f", "raylet"]).stdout.strip(), f"{host.address}: no Ray node"
        with cluster:
            seen["down"] = cluster.down()
        assert cluster.error is None, cluster.error
        assert seen["down"] is True
        for host in network.hosts:
            assert host.is_running(), "a machine the class lists is never destroyed"
            assert not host.run_in_namespace(["pgrep", "-f", "raylet"]).stdout.strip(), f"{host.address}: Ray left"
    finally:
        network.close()
