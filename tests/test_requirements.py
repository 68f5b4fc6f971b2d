"""What the client and the hosts must have, said before anything fails with another tool's error."""

from __future__ import annotations

import pwd
import subprocess
from types import SimpleNamespace

import pytest
from flambe_cluster import ClusterError
from flambe_cluster.environment import HostReport, check_pythons
from flambe_cluster.sync import check_client_rsync, rsync_problem
from flambe_cluster.wheelhouse import HostPlatform
from helpers import run_cli, ssh_cluster_yaml


def test_an_old_or_foreign_rsync_on_the_client_is_named():
    assert rsync_problem("rsync  version 3.2.7  protocol version 31\nCopyright") is None
    assert rsync_problem("rsync  version 2.6.9  protocol version 29\n") == "this machine's rsync is 2.6.9"
    assert "not Samba's rsync" in rsync_problem("openrsync: protocol version 29\nrsync version 2.6.9 compatible\n")
    assert "not Samba's rsync (no version)" in rsync_problem("")
    check_client_rsync()  # this machine's (Debian's) rsync will do


def test_a_host_whose_python_is_too_old_is_named_before_anything_is_installed():
    session = SimpleNamespace(config=SimpleNamespace(python="python3"))
    from flambe_cluster.records import ClusterInstances, Endpoint

    new, old = ClusterInstances.named("c", [(Endpoint.parse(f"10.0.0.{i}"), Endpoint.parse(f"10.0.0.{i}"))
                                            for i in (1, 2)])
    reports = {new: HostReport(HostPlatform("3.11", "x86_64", "2.36"), 2, None),
               old: HostReport(HostPlatform("3.8", "x86_64", "2.31"), 2, None)}
    with pytest.raises(ClusterError) as refused:
        check_pythons(session, reports)
    message = str(refused.value)
    assert "python3 on c_factory0 (10.0.0.2) is 3.8" in message and "orchestrator" not in message
    assert "Set `python:`" in message
    check_pythons(session, {new: reports[new]})


WRAPPER = """#!/bin/sh
# stand-in for an old interpreter (tests): Debian's python3, whose version_info says 3.8 where OLD is set
exec env PYTHONPATH="$HOME/old-python${PYTHONPATH:+:$PYTHONPATH}" /usr/bin/python3 "$@"
"""


@pytest.mark.hosts
def test_a_real_host_with_an_old_python_gets_the_named_error_and_nothing_installed(flambe_test_hosts,
                                                                                   flambe_client_key, tmp_path):
    network = flambe_test_hosts(2)
    try:
        for host in network.hosts:  # `python: python3x` on both; only the factory's says it is 3.8
            tool = host.home / "bin" / "python3x"
            tool.parent.mkdir(exist_ok=True)
            tool.write_text(WRAPPER)
            tool.chmod(0o755)
        fake = network.hosts[1].home / "old-python"
        fake.mkdir()
        (fake / "sitecustomize.py").write_text("import sys\nsys.version_info = (3, 8, 18, 'final', 0)\n")
        for host in network.hosts:
            subprocess.run(["chown", "-R", f"{host.username}:", str(host.home)], check=True)
        inside = pwd.getpwnam(network.hosts[0].username).pw_dir  # each host's home, as the host sees it
        config = ssh_cluster_yaml(tmp_path / "c.yaml", network.hosts, flambe_client_key.path, "oldpy",
                                  python=f"{inside}/bin/python3x")
        done = run_cli("up", str(config), state_home=tmp_path / "state", check=1)
        factory = network.hosts[1]
        assert f"/bin/python3x on oldpy_factory0 ({factory.address}) is 3.8" in done.stderr, done.stderr
        assert "Set `python:`" in done.stderr and "oldpy_orchestrator" not in done.stderr.split("error:")[-1]
        assert not (factory.home / ".flambe-cluster" / "oldpy" / "env").exists(), "nothing installed"
    finally:
        network.close()
