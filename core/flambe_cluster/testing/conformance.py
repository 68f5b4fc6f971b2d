"""The provider conformance suite.

A provider's tests subclass :class:`ProviderConformance`, name the provider
and say how to describe a cluster on the given test hosts; every test of the
base class then runs against real hosts.  Capability flags (class
attributes) switch on the checks that only apply to some providers::

    # conftest.py
    pytest_plugins = ["flambe_cluster.testing.pytest_plugin"]

    # test_conformance.py
    class TestMyProvider(ProviderConformance):
        provider = "mine"

        def cluster_config(self, hosts, name, key):
            return {"name": name, "key": str(key), "username": hosts[0].username, ...}

Nothing here is collected unless a test module imports the base class into
a ``Test*`` subclass.
"""

from __future__ import annotations

import collections.abc
import itertools
from pathlib import Path
from typing import Any

import attrs
import pytest

from .. import ClusterConfigurationError, plugins
from ..cluster import Cluster
from ..config import parse_config
from ..records import ClusterInstances, Instance, Role
from .hosts import TestHost

_names = itertools.count()


class HostsFoundLater(collections.abc.Sequence):
    """The test hosts of the cluster under test, looked up each time they are read.

    For providers that create their hosts during the test (their addresses
    are known only then): subclass it, implement :meth:`found`, and yield an
    instance from your ``conformance_hosts`` fixture.
    """

    def found(self) -> list:
        """The hosts now behind the last cluster the suite described, orchestrator first."""
        raise NotImplementedError

    def __getitem__(self, index):
        return self.found()[index]

    def __len__(self) -> int:
        return len(self.found())


class ProviderConformance:
    """Base class of a provider's conformance tests (see the module docstring)."""

    #: the provider's entry-point name
    provider: str = ""
    #: how many factories the clusters of the suite have
    factories_num: int = 2
    #: the provider creates machines (and so journals them and rolls them back)
    creates_instances: bool = False

    def cluster_config(self, hosts: list[TestHost], name: str, key: Path) -> dict[str, Any]:
        """The configuration mapping (without ``provider``) of a cluster on ``hosts``.

        ``hosts[0]`` must become the orchestrator, the rest the factories.
        """
        raise NotImplementedError

    # --- fixtures

    @pytest.fixture(scope="class")
    @classmethod
    def conformance_hosts(cls, flambe_test_hosts):
        network = flambe_test_hosts(1 + cls.factories_num)
        yield network.hosts
        network.close()

    @pytest.fixture
    def make_cluster(self, conformance_hosts, flambe_client_key, flambe_state_home):
        clusters: list[Cluster] = []

        def make(**overrides: Any) -> Cluster:
            name = f"conformance-{next(_names)}"
            raw = {**self.cluster_config(conformance_hosts, name, flambe_client_key.path), **overrides}
            cluster = Cluster.from_config(parse_config({"provider": self.provider, **raw}))
            clusters.append(cluster)
            return cluster

        yield make
        for cluster in clusters:
            if self.creates_instances and cluster.find_instances():
                cluster.hooks.flambe_cluster_terminate(
                    config=cluster.config, instances=ClusterInstances(cluster.orchestrator, cluster.factories)
                )
            cluster.close()

    # --- the contract

    def test_registered_through_its_entry_point(self):
        assert self.provider in {p.name for p in plugins.installed_providers()}
        plugins.check_provider(self.provider, plugins.load_provider(self.provider))

    def test_options_are_an_attrs_class_reporting_unknown_fields(self, conformance_hosts, flambe_client_key):
        raw = self.cluster_config(conformance_hosts, "conformance-options", flambe_client_key.path)
        with pytest.raises(ClusterConfigurationError, match="no_such_option_zz: unknown field"):
            parse_config({"provider": self.provider, **raw, "no_such_option_zz": 1})

    def test_load_gives_one_orchestrator_and_the_factories(self, make_cluster, conformance_hosts):
        cluster = make_cluster()
        cluster.load_all_instances()
        record = cluster.orchestrator.record  # the provider's frozen record, under the seed's instance object
        assert isinstance(record, Instance) and attrs.has(type(record))
        assert cluster.orchestrator.role is Role.ORCHESTRATOR
        assert [f.role for f in cluster.factories] == [Role.FACTORY] * self.factories_num
        endpoints = {h.endpoint for h in cluster.all_hosts()}
        assert len(endpoints) == 1 + self.factories_num
        assert cluster.orchestrator.endpoint.host == conformance_hosts[0].address

    def test_load_is_idempotent_and_find_creates_nothing(self, make_cluster):
        cluster = make_cluster()
        cluster.load_all_instances()
        first = cluster.all_hosts()
        entries = cluster.state.journal.entries()
        cluster.load_all_instances()
        assert cluster.all_hosts() == first
        assert cluster.state.journal.entries() == entries, "a second load must create (and journal) nothing"
        again = make_cluster(name=cluster.name)
        assert again.find_instances()
        assert again.all_hosts() == first
        assert cluster.state.journal.entries() == entries

    def test_up_reaches_every_host_with_the_cluster_key(self, make_cluster, conformance_hosts):
        cluster = make_cluster(setup_cmds=["echo conformance > \"$HOME\"/conformance-setup"])
        with cluster:
            cluster.run()
            results = cluster.execute_on(cluster.all_hosts(), "ip -4 -o addr show dev eth0")
        assert cluster.error is None, cluster.error
        for host, result in zip(conformance_hosts, results.values()):
            assert f" {host.address}/" in result.stdout
            assert (host.home / "conformance-setup").read_text() == "conformance\n"
            public = cluster.state.key_pair(cluster.remote_key_name).public_line
            assert public in (host.home / ".ssh" / "authorized_keys").read_text()

    def test_rollback_destroys_what_the_run_created_and_is_idempotent(self, make_cluster):
        if not self.creates_instances:
            pytest.skip(f"provider {self.provider!r} creates nothing, so there is nothing to roll back")
        cluster = make_cluster()
        cluster.load_all_instances()
        assert cluster.journal.created(), "a provider that creates instances must journal them"
        cluster.rollback_env()
        cluster.rollback_env()
        assert cluster.journal.created() == []
        assert not cluster.find_instances()
