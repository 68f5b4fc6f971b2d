"""Setup commands tracked per host by digest (flambe_cluster.setupsteps), on real test hosts.

Each setup command appends its mark to ``~/ran`` on the host it runs on, so a host's file lists every command
that ran there, in order."""

from __future__ import annotations

import json

import pytest
import yaml
from flambe_cluster import Cluster, setupsteps
from helpers import run_cli, ssh_cluster_yaml

NAME = "setupsteps"


def mark(label: str) -> str:
    return f'echo {label} >> "$HOME"/ran'


def ran(host) -> list[str]:
    path = host.home / "ran"
    return path.read_text().split() if path.exists() else []


def with_setup(config, commands, hosts=None) -> None:
    body = yaml.safe_load(config.read_text())
    body["setup_cmds"] = commands
    if hosts is not None:
        body["factories_ips"] = [h.address for h in hosts[1:]]
    config.write_text(yaml.safe_dump(body, sort_keys=False))


@pytest.mark.hosts
def test_setup_runs_only_where_and_from_where_it_changed(flambe_test_hosts, flambe_client_key, flambe_state_home,
                                                         tmp_path):
    network = flambe_test_hosts(4)
    try:
        hosts = network.hosts
        config = ssh_cluster_yaml(tmp_path / "c.yaml", hosts[:3], flambe_client_key.path, NAME,
                                  setup_cmds=[mark("one"), mark("two"), mark("three")])

        def up(*extra):
            return run_cli("up", str(config), *extra, state_home=flambe_state_home, check=0)

        up()
        assert [ran(h) for h in hosts[:3]] == [["one", "two", "three"]] * 3

        second = up()
        assert [ran(h) for h in hosts[:3]] == [["one", "two", "three"]] * 3, "unchanged: no command ran again"
        assert "setup commands: all 3 already done on every host" in second.stderr, second.stderr

        with_setup(config, [mark("one"), mark("two"), mark("three-b"), mark("four")])
        status = run_cli("status", str(config), "--json", state_home=flambe_state_home)
        setup = json.loads(status.stdout)["setup"]
        assert setup == {"commands": 4, "done": {f"{NAME}_orchestrator": 2, f"{NAME}_factory0": 2,
                                                 f"{NAME}_factory1": 2}}, setup
        shown = run_cli("status", str(config), state_home=flambe_state_home)
        assert f"setup: behind on {NAME}_orchestrator (2/4 done)" in shown.stdout, shown.stdout
        up()
        assert [ran(h) for h in hosts[:3]] == [["one", "two", "three", "three-b", "four"]] * 3, \
            "a changed third command runs again with those after it, and only those"

        with_setup(config, [mark("one"), mark("two"), mark("three-b"), mark("four")], hosts=hosts)
        grown = up()
        assert [ran(h) for h in hosts[:3]] == [["one", "two", "three", "three-b", "four"]] * 3, "healthy: untouched"
        assert ran(hosts[3]) == ["one", "two", "three-b", "four"], "the new factory gets the whole setup"
        assert "setup command 1/4 on 1 of 4 hosts" in grown.stderr, grown.stderr
        shown = run_cli("status", str(config), state_home=flambe_state_home, check=0)
        assert "setup: all 4 commands done on every host" in shown.stdout, shown.stdout

        up("--rerun-setup")
        assert ran(hosts[3]) == ["one", "two", "three-b", "four"] * 2, "--rerun-setup runs every command again"

        flaky = f'test ! -e "$HOME"/fail-here || exit 3; {mark("five")}'
        (hosts[3].home / "fail-here").touch()
        with_setup(config, [mark("one"), mark("two"), mark("three-b"), mark("four"), flaky, mark("six")], hosts=hosts)
        failed = run_cli("up", str(config), state_home=flambe_state_home, check=1)
        error = failed.stderr[failed.stderr.index("a remote command failed"):]
        assert f"{NAME}_factory2" in error and f"{NAME}_factory1" not in error, failed.stderr
        assert [ran(h)[-1] for h in hosts] == ["five", "five", "five", "four"], "six never ran"
        (hosts[3].home / "fail-here").unlink()
        up()
        assert [ran(h)[-2:] for h in hosts] == [["five", "six"]] * 4, \
            "the hosts where five worked recorded it: only factory2 ran it again"

        # a repair (new_only): only a host without a record runs the setup, even when the file's setup changed
        cluster = Cluster.from_yaml(config)
        try:
            cluster.load_all_instances()
            (hosts[3].home / ".flambe-cluster" / NAME / "setup-done").unlink()  # a new machine at its address
            before = [ran(h) for h in hosts[:3]]
            setupsteps.run(cluster.session, [mark("one"), mark("changed")], new_only=True)
            assert [ran(h) for h in hosts[:3]] == before, "the healthy hosts are left as they are"
            assert ran(hosts[3])[-2:] == ["one", "changed"]
        finally:
            cluster.close()
    finally:
        run_cli("down", str(config), state_home=flambe_state_home)
        network.close()
