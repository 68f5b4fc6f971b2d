"""What the client and the hosts must have, said before anything fails with another tool's error."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from flambe_cluster import ClusterError
from flambe_cluster.environment import HostReport, check_pythons
from flambe_cluster.sync import check_client_rsync, rsync_problem
from flambe_cluster.wheelhouse import HostPlatform


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
