"""The local provider passes the provider conformance suite, in the mode this user gets.

The suite describes a cluster on given hosts; the local provider makes its own.
So ``conformance_hosts`` is the hosts of the cluster under test, read (when
used) from the record the provider keeps in the cluster's state folder,
orchestrator first.  As root the hosts are namespaced; as an ordinary user
they are loopback hosts (``test_local_unprivileged.py`` runs this module as
one).
"""

from __future__ import annotations

import getpass
import json
from pathlib import Path

import flambe_cluster_local as local_provider
import pytest
from attrs import frozen
from flambe_cluster.state import ClusterState
from flambe_cluster.testing.conformance import HostsFoundLater, ProviderConformance

pytestmark = pytest.mark.hosts


@frozen
class RecordedHost:
    """A host of a local cluster, as its record names it."""

    address: str
    home: Path
    username: str


class HostsOfTheClusterUnderTest(HostsFoundLater):
    """The hosts of the last cluster the suite described, from its record (looked up when read)."""

    def __init__(self, suite: type) -> None:
        self.suite = suite

    def found(self) -> list[RecordedHost]:
        record = ClusterState.for_cluster(self.suite.current_name, None).root / local_provider.RECORD
        if not record.exists():
            return []
        recorded = json.loads(record.read_text())
        user = local_provider.NAMESPACE_USER if recorded["mode"] == "namespaces" else getpass.getuser()
        return [RecordedHost(h["address"], Path(h["home"]), user) for h in recorded["hosts"]]


class TestLocalProviderConformance(ProviderConformance):
    provider = "local"
    creates_instances = True
    current_name = ""

    @pytest.fixture(scope="class")
    @classmethod
    def conformance_hosts(cls):  # overrides the suite's fixed hosts
        yield HostsOfTheClusterUnderTest(cls)

    @pytest.fixture(autouse=True)
    def _private_state(self, flambe_state_home):
        """Every cluster of the suite, its client key included, lives in the test's own state folder."""

    def cluster_config(self, hosts, name, key):
        type(self).current_name = name
        # no key: the provider makes the client key its hosts accept (the suite's key is not on them)
        return {"name": name, "factories_num": self.factories_num}  # mode auto: namespaces as root, loopback otherwise
