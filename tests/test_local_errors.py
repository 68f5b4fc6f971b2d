"""A local cluster whose hosts cannot be built fails ``up`` with a one-line error and exit code 1.

The failure is real: the cluster asks for a subnet that a network of this
machine (a bridge the test makes) already uses.  Needs root; skipped otherwise.
"""

from __future__ import annotations

import ipaddress
import subprocess

import pytest
import yaml
from flambe_cluster import localhosts
from helpers import run_cli

pytestmark = pytest.mark.hosts


@pytest.fixture
def taken_subnet(flambe_test_hosts):
    """A /24 this machine uses: the subnet of a bridge without hosts."""
    network = flambe_test_hosts(0)
    yield ipaddress.IPv4Network(f"{network.gateway}/24", strict=False)
    network.close()


def addresses_in(subnet: ipaddress.IPv4Network) -> list[str]:
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=True).stdout
    found = (line.split()[line.split().index("inet") + 1] for line in out.splitlines() if " inet " in line)
    return [a for a in found if ipaddress.IPv4Interface(a).ip in subnet]


def test_a_taken_subnet_is_a_one_line_error_with_exit_code_1(taken_subnet, tmp_path):
    if localhosts.require_root_namespaces():
        pytest.skip(localhosts.require_root_namespaces())
    config = tmp_path / "taken.yaml"
    config.write_text(yaml.safe_dump({"provider": "local", "name": "taken", "factories_num": 1,
                                      "mode": "namespaces", "subnet": str(taken_subnet)}))
    before = addresses_in(taken_subnet)
    state = tmp_path / "state"

    done = run_cli("up", str(config), state_home=state, check=1)

    assert "Traceback" not in done.stderr, done.stderr
    error, log = done.stderr.strip().splitlines()[-2:]
    assert error == (f"error: subnet {taken_subnet} overlaps networks already on this machine: "
                     f"{taken_subnet}"), done.stderr
    assert [line for line in done.stderr.splitlines() if line.startswith("error:")] == [error]
    assert log.startswith("the whole log of this run: "), done.stderr
    # nothing of the failed cluster is left: no address, no record, no host folders
    assert addresses_in(taken_subnet) == before
    cluster_state = state / "clusters" / "taken"
    assert not (cluster_state / "local-hosts.json").exists()
    assert not (cluster_state / "hosts").exists()


def test_a_subnet_that_is_not_private_is_a_configuration_problem(tmp_path):
    config = tmp_path / "public.yaml"
    config.write_text(yaml.safe_dump({"provider": "local", "name": "public", "factories_num": 1,
                                      "mode": "namespaces", "subnet": "8.8.8.0/24"}))
    done = run_cli("up", str(config), state_home=tmp_path / "state", check=2)
    assert "subnet: subnet 8.8.8.0/24 is not a private network" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
