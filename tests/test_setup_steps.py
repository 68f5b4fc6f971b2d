"""Setup commands tracked per host by digest (flambe_cluster.setupsteps), on real test hosts.

Each setup command appends its mark to ``~/ran`` on the host it runs on, so a host's file lists every command
that ran there, in order."""

from __future__ import annotations

import json

import pytest
import yaml
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

        with_setup(config, [mark("one"), "exit 3", mark("never")], hosts=hosts)
        failed = run_cli("up", str(config), state_home=flambe_state_home, check=1)
        assert "exit 3" in failed.stderr
        with_setup(config, [mark("one"), mark("two"), mark("after")], hosts=hosts)
        up()
        assert ran(hosts[3])[-2:] == ["four", "after"], "the commands before the failed one stand; only the new runs"
    finally:
        run_cli("down", str(config), state_home=flambe_state_home)
        network.close()
