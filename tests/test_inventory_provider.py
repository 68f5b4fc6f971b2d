"""The example third-party provider ``inventory`` (examples/inventory-provider).

It is listed by ``flambe-cluster providers`` under its own distribution, and
its inventory parser reports every problem naming the file and the line.  Its
conformance tests live with it, as a plugin author's would
(``examples/inventory-provider/tests/``; in the suite's ``testpaths``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

inventory_provider = pytest.importorskip(
    "flambe_cluster_inventory",
    reason="the example provider is not installed: pip install ./examples/inventory-provider",
)

from flambe_cluster import ClusterConfigurationError  # noqa: E402
from flambe_cluster.config import parse_config  # noqa: E402
from flambe_cluster.records import Endpoint, Role  # noqa: E402

# --- registration


def test_cli_lists_the_provider_with_its_distribution():
    result = subprocess.run(
        [sys.executable, "-m", "flambe_cluster", "providers"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if " inventory " in line]
    assert len(rows) == 1, result.stdout
    assert "flambe-cluster-inventory" in rows[0] and "0.1.0" in rows[0], rows[0]
    assert "flambe_cluster_inventory" in rows[0]


# --- configuration and parser (no hosts needed)


@pytest.fixture
def key(tmp_path):
    path = tmp_path / "id_test"
    path.write_text("not a real key; only its existence is checked\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def configure(tmp_path, key):
    """configure(inventory_text, **fields): write hosts.ini and parse an inventory cluster on it."""

    def make(text: str, **fields):
        path = tmp_path / "hosts.ini"
        path.write_text(textwrap.dedent(text).lstrip("\n"))
        raw = {"provider": "inventory", "name": "lab", "username": "flambe", "key": str(key), "inventory": str(path)}
        return path, parse_config({**raw, **fields})

    return make


def test_every_host_line_form(configure):
    _, config = configure(
        """
        ; a lab
        [orchestrator]
        head ansible_host=10.0.0.5 ansible_port=2222 private_ip=10.1.0.5   # the head node

        [web]
        10.9.9.9

        [factories]
        10.0.0.6
        10.0.0.7 ansible_port=2200
        10.0.0.8:2201
        gpu3 ansible_host=gpu3.lab.example.org
        """
    )
    assert config.factories_num == 4
    cluster = inventory_provider.flambe_cluster_find_instances(config=config)
    assert cluster.orchestrator.name == "lab_orchestrator" and cluster.orchestrator.role is Role.ORCHESTRATOR
    assert cluster.orchestrator.public == Endpoint("10.0.0.5", 2222)
    assert cluster.orchestrator.private == Endpoint("10.1.0.5", 2222)
    assert [f.name for f in cluster.factories] == [f"lab_factory{i}" for i in range(4)]
    assert [f.role for f in cluster.factories] == [Role.FACTORY] * 4
    assert [str(f.endpoint) for f in cluster.factories] == [
        "10.0.0.6", "10.0.0.7:2200", "10.0.0.8:2201", "gpu3.lab.example.org"
    ]
    assert all(f.private == f.public for f in cluster.factories)


def test_other_groups_and_private_addresses(configure):
    _, config = configure(
        """
        [heads]
        10.0.0.5 private_ip=10.1.0.5
        [workers]
        10.0.0.6 private_ip=10.1.0.6
        """,
        orchestrator_group="heads",
        factories_group="workers",
        use_public=False,
        factories_num=1,
    )
    cluster = inventory_provider.flambe_cluster_load_instances(config=config, journal=None,
                                                               progress=lambda subject, state, **_: None)
    assert [str(i.endpoint) for i in cluster] == ["10.1.0.5", "10.1.0.6"]


def test_the_converter_accepts_its_own_output(configure):
    path, config = configure("[orchestrator]\n10.0.0.5\n[factories]\n")
    inventory = config.options.inventory
    assert inventory_provider.read_inventory(inventory) is inventory
    assert inventory.path == path.absolute()
    assert config.factories_num == 0


def test_a_bad_line_names_the_file_the_line_and_what_was_expected(configure):
    with pytest.raises(ClusterConfigurationError) as caught:
        configure(
            """
            [orchestrator]
            10.0.0.5

            [factories]
            10.0.0.6 ansible_port=twenty-two
            """
        )
    (problem,) = caught.value.problems
    assert problem.startswith("inventory: ")
    assert "hosts.ini line 5: " in problem
    assert "ansible_port: expected a TCP port between 1 and 65535, got 'twenty-two'" in problem


@pytest.mark.parametrize(
    "line, expected",
    [
        ("10.0.0.6 ansible_user=ubuntu",
         "unknown host variable 'ansible_user'; the user name is the cluster file's username"),
        ("10.0.0.6 ansible_prot=22", "unknown host variable 'ansible_prot'; did you mean 'ansible_port'?"),
        ("10.0.0.6 private", "expected key=value after the host '10.0.0.6', got 'private'"),
        ("node[01:10]", "host ranges like 'node[01:10]' are not supported"),
        ("not_an address!", "expected key=value after the host"),
        ("bad!host", "expected an address ('10.0.0.5', 'node1.lab', optionally ':port')"),
        ("n1 ansible_host=10.0.0.6:22", "ansible_host: expected an IP address or host name, got '10.0.0.6:22'"),
        ("10.0.0.6:2222 ansible_port=22", "the port is given twice"),
        ("10.0.0.6 ansible_port=22 ansible_port=23", "ansible_port is given twice"),
        ("10.0.0.6 ansible_host='unclosed", "no closing quotation"),
        ("[factories:vars]", "[factories:vars] sections are not supported"),
        ("[factories:children]", "[factories:children] sections are not supported"),
        ("[bad group]", "expected a group name"),
    ],
)
def test_strict_host_lines(configure, line, expected):
    with pytest.raises(ClusterConfigurationError) as caught:
        configure(f"[orchestrator]\n10.0.0.5\n[factories]\n{line}\n")
    (problem,) = caught.value.problems
    assert "hosts.ini line 4: " in problem and expected in problem, problem


def test_every_problem_is_reported_at_once(configure):
    with pytest.raises(ClusterConfigurationError) as caught:
        configure(
            """
            10.0.0.4
            [orchestrator]
            10.0.0.5 ansible_port=0
            [factories]
            10.0.0.6 color=blue
            """,
            use_public="yes",
            no_such_option=1,
        )
    message = str(caught.value)
    assert "hosts.ini line 1: expected a [group] header before the first host" in message
    assert "hosts.ini line 3: ansible_port: expected a TCP port" in message
    assert "hosts.ini line 5: unknown host variable 'color'" in message
    assert "use_public: expected true or false" in message
    assert "no_such_option: unknown field" in message
    assert len(caught.value.problems) == 3  # the inventory's three lines are one problem of the field


def test_two_orchestrators_name_the_group_and_the_lines(configure):
    with pytest.raises(ClusterConfigurationError) as caught:
        configure(
            """
            [orchestrator]
            10.0.0.5
            10.0.0.6
            [factories]
            10.0.0.7
            """
        )
    (problem,) = caught.value.problems
    assert "hosts.ini line 1: group [orchestrator] lists 2 hosts (lines 2, 3)" in problem
    assert "expected exactly one host, the orchestrator" in problem


def test_validation_reports_missing_groups_and_duplicates_together(configure):
    with pytest.raises(ClusterConfigurationError) as caught:
        configure(
            """
            [orchestrator]
            n1 ansible_host=10.0.0.5
            [factories]
            10.0.0.6
            10.0.0.5
            n1 ansible_host=10.0.0.9
            10.0.0.6:22
            """
        )
    problems = caught.value.problems
    assert len(problems) == 3, problems
    assert ("line 5: host 10.0.0.5 in [factories] has the same address (10.0.0.5) as n1 at line 2 in [orchestrator]"
            in problems[0])
    assert "line 6: host n1 in [factories] is already listed at line 2 in [orchestrator]" in problems[1]
    assert ("line 7: host 10.0.0.6:22 in [factories] has the same address (10.0.0.6) as 10.0.0.6 at line 4"
            in problems[2])

    with pytest.raises(ClusterConfigurationError) as caught:
        configure("[orchestrator]\n[web]\n10.0.0.5\n")
    missing, empty = caught.value.problems
    assert ("has no [factories] group (named by factories_group)" in missing
            and "groups found: [orchestrator], [web]" in missing)
    assert "hosts.ini line 1: group [orchestrator] lists no host" in empty

    with pytest.raises(ClusterConfigurationError,
                       match="factories_group: expected a group other than orchestrator_group"):
        configure("[orchestrator]\n10.0.0.5\n", factories_group="orchestrator")


def test_factories_num_must_match_the_factories_group(configure):
    with pytest.raises(ClusterConfigurationError,
                       match=r"factories_num: expected 1 \(the number of factories listed\), got 3"):
        configure("[orchestrator]\n10.0.0.5\n[factories]\n10.0.0.6\n", factories_num=3)


def test_a_missing_or_unreadable_inventory(configure, tmp_path, key):
    raw = {"provider": "inventory", "name": "lab", "username": "flambe", "key": str(key)}
    with pytest.raises(ClusterConfigurationError) as caught:
        parse_config({**raw, "inventory": str(tmp_path / "nope.ini")})
    assert caught.value.problems == [
        f"inventory: expected the path of an Ansible-style INI inventory file, "
        f"but {str(tmp_path / 'nope.ini')!r} does not exist"
    ]
    with pytest.raises(ClusterConfigurationError,
                       match="inventory: required, expected the path of an Ansible-style INI"):
        parse_config(raw)
    (tmp_path / "binary.ini").write_bytes(b"[orchestrator]\n\xff\xfe\n")
    with pytest.raises(ClusterConfigurationError, match=r"binary.ini: expected a UTF-8 text inventory"):
        parse_config({**raw, "inventory": str(tmp_path / "binary.ini")})


def test_many_bad_lines_are_summed_up(configure):
    with pytest.raises(ClusterConfigurationError) as caught:
        configure("[orchestrator]\n" + "x=1\n" * 25)
    (problem,) = caught.value.problems
    assert problem.count("expected the host first") == inventory_provider.MAX_REPORTED
    assert problem.endswith("and 15 more problem(s) in the same file")
