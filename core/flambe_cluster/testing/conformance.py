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

Beyond the required hooks, every optional hook the provider declares is
checked (a test whose hook is not declared is skipped, saying so), and so
are ``down`` leaving nothing the provider made, progress for every host, and
two loads of one cluster at once.  Install what the suite needs with
``pip install 'flambe-cluster[testing]'``.

Nothing here is collected unless a test module imports the base class into
a ``Test*`` subclass.
"""

from __future__ import annotations

import collections.abc
import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import pytest

from .. import ClusterConfigurationError, FlambeClusterError, plugins
from ..cluster import Cluster
from ..config import parse_config
from ..records import Instance, Role
from .hosts import LoopbackTestNetwork, TestHostNetwork

if TYPE_CHECKING:  # the plugin module registers a check when imported: only its type here
    from .pytest_plugin import ClientKey

_names = itertools.count()


class ConformanceHost(Protocol):
    """What the suite reads of a test host: a :class:`~.hosts.TestHost`, a loopback one, or one a provider's
    tests find."""

    @property
    def address(self) -> str: ...

    @property
    def home(self) -> Path: ...

    @property
    def username(self) -> str: ...


class HostsFoundLater(collections.abc.Sequence[Any]):
    """The test hosts of the cluster under test, looked up each time they are read.

    For providers that create their hosts during the test (their addresses
    are known only then): subclass it, implement :meth:`found`, and yield an
    instance from your ``conformance_hosts`` fixture.
    """

    def found(self) -> list[Any]:
        """The hosts now behind the last cluster the suite described, orchestrator first."""
        raise NotImplementedError

    def __getitem__(self, index: Any) -> Any:
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

    def cluster_config(self, hosts: Sequence[ConformanceHost], name: str, key: Path) -> dict[str, Any]:
        """The configuration mapping (without ``provider``) of a cluster on ``hosts``.

        ``hosts[0]`` must become the orchestrator, the rest the factories.
        """
        raise NotImplementedError

    # --- fixtures

    @pytest.fixture(scope="class")
    @classmethod
    def conformance_hosts(
            cls, flambe_ssh_hosts: Callable[[int], TestHostNetwork | LoopbackTestNetwork]
    ) -> Iterator[Sequence[ConformanceHost]]:
        network = flambe_ssh_hosts(1 + cls.factories_num)
        yield network.hosts
        network.close()

    @pytest.fixture
    def make_cluster(self, conformance_hosts: Sequence[ConformanceHost], flambe_client_key: ClientKey,
                     flambe_state_home: Path) -> Iterator[Callable[..., Cluster]]:
        clusters: list[Cluster] = []

        def make(**overrides: Any) -> Cluster:
            name = f"conformance-{next(_names)}"
            raw = {**self.cluster_config(conformance_hosts, name, flambe_client_key.path), **overrides}
            cluster = Cluster.from_config(parse_config({"provider": self.provider, **raw}))
            clusters.append(cluster)
            return cluster

        yield make
        for cluster in clusters:
            if self.creates_instances:
                try:
                    found = cluster.find_instances()
                except FlambeClusterError:  # incomplete (a test released some): the provider removes what is left
                    found = False
                cluster.hooks.terminate(
                    config=cluster.config, instances=cluster.session.instances() if found else None)
            cluster.close()

    def declared(self, hook: str) -> None:
        """Skip the calling test, saying why, unless the provider implements the optional ``hook``."""
        if not callable(getattr(plugins.load_provider(self.provider), hook, None)):
            pytest.skip(f"provider {self.provider!r} does not implement the optional hook {hook}")

    # --- the contract

    def test_registered_through_its_entry_point(self) -> None:
        assert self.provider in {p.name for p in plugins.installed_providers()}
        plugins.check_provider(self.provider, plugins.load_provider(self.provider))

    def test_options_are_an_attrs_class_reporting_unknown_fields(
            self, conformance_hosts: Sequence[ConformanceHost], flambe_client_key: ClientKey) -> None:
        raw = self.cluster_config(conformance_hosts, "conformance-options", flambe_client_key.path)
        with pytest.raises(ClusterConfigurationError, match="no_such_option_zz: unknown field"):
            parse_config({"provider": self.provider, **raw, "no_such_option_zz": 1})

    def test_load_gives_one_orchestrator_and_the_factories(self, make_cluster: Callable[..., Cluster],
                                                           conformance_hosts: Sequence[ConformanceHost]) -> None:
        cluster = make_cluster()
        cluster.load_all_instances()
        orchestrator = cluster.orchestrator
        assert orchestrator is not None  # loaded
        record = orchestrator.record  # the provider's frozen record, under the seed's instance object
        assert isinstance(record, Instance) and attrs.has(type(record))
        assert orchestrator.role is Role.ORCHESTRATOR
        assert [f.role for f in cluster.factories] == [Role.FACTORY] * self.factories_num
        endpoints = {h.endpoint for h in cluster.all_hosts()}
        assert len(endpoints) == 1 + self.factories_num
        assert orchestrator.endpoint.host == conformance_hosts[0].address

    def test_load_is_idempotent_and_find_creates_nothing(self, make_cluster: Callable[..., Cluster]) -> None:
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

    def test_up_reaches_every_host_with_the_cluster_key(self, make_cluster: Callable[..., Cluster],
                                                        conformance_hosts: Sequence[ConformanceHost]) -> None:
        cluster = make_cluster(setup_cmds=["echo conformance > \"$HOME\"/conformance-setup"])
        with cluster:
            cluster.run()
            for index, host in enumerate(conformance_hosts):  # each host's home says which host it is
                (host.home / "conformance-id").write_text(f"host {index} at {host.address}\n")
            results = cluster.execute_on(cluster.all_hosts(), 'cat "$HOME"/conformance-id')
        assert cluster.error is None, cluster.error
        for index, (host, result) in enumerate(zip(conformance_hosts, results.values())):
            assert result.stdout == f"host {index} at {host.address}\n", \
                "the cluster's hosts, in order, are the given ones"
            assert (host.home / "conformance-setup").read_text() == "conformance\n"
            public = cluster.state.key_pair(cluster.remote_key_name).public_line
            assert public in (host.home / ".ssh" / "authorized_keys").read_text()

    def test_rollback_destroys_what_the_run_created_and_is_idempotent(
            self, make_cluster: Callable[..., Cluster]) -> None:
        if not self.creates_instances:
            pytest.skip(f"provider {self.provider!r} creates nothing, so there is nothing to roll back")
        cluster = make_cluster()
        cluster.load_all_instances()
        assert cluster.journal.created(), "a provider that creates instances must journal them"
        cluster.rollback_env()
        cluster.rollback_env()
        assert cluster.journal.created() == []
        assert not cluster.find_instances()

    def test_load_reports_progress_for_every_host(self, make_cluster: Callable[..., Cluster]) -> None:
        cluster = make_cluster()
        said: dict[str, list[str]] = {}
        cluster.on_progress = lambda subject, state, **_: said.setdefault(subject, []).append(state)
        cluster.load_all_instances()
        missing = [h.name for h in cluster.all_hosts() if h.name not in said]
        assert not missing, f"no progress reported for {missing} (the provider's load reports each host's state)"

    def test_down_leaves_nothing_the_provider_made(self, make_cluster: Callable[..., Cluster],
                                                   conformance_hosts: Sequence[ConformanceHost]) -> None:
        cluster = make_cluster()
        with cluster:
            cluster.run()
            assert cluster.down() is True
        assert cluster.error is None, cluster.error
        assert cluster.state.journal.outstanding() == [], "down destroys (and journals) all it made"
        again = make_cluster(name=cluster.name)
        if self.creates_instances:
            assert not again.find_instances(), "after down the provider finds none of the cluster's instances"

    def test_two_loads_at_once_make_one_cluster(self, make_cluster: Callable[..., Cluster]) -> None:
        if not self.creates_instances:
            pytest.skip(f"provider {self.provider!r} creates nothing: two loads list the same machines")
        first = make_cluster()
        second = make_cluster(name=first.name)
        errors: list[BaseException] = []

        def load(cluster: Cluster) -> None:
            try:
                cluster.load_all_instances()
            except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=load, args=(c,)) for c in (first, second)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(600)
        assert not errors, errors
        found = make_cluster(name=first.name)
        assert found.find_instances()
        assert len(found.all_hosts()) == 1 + self.factories_num, "one cluster, not two"
        assert {h.endpoint for h in found.all_hosts()} == {h.endpoint for h in first.all_hosts()}

    def test_host_keys_are_those_the_hosts_present(self, make_cluster: Callable[..., Cluster]) -> None:
        self.declared("flambe_cluster_host_keys")
        cluster = make_cluster()
        with cluster:
            cluster.run()
            for host in cluster.all_hosts():
                lines = cluster.hooks.host_keys(config=cluster.config, instance=host)
                presented = cluster.pool.host_key(host)
                assert lines is None or f"{presented.get_name()} {presented.get_base64()}" in \
                    [" ".join(line.split()[:2]) for line in lines], host.label
        assert cluster.error is None, cluster.error

    def test_promised_gpus_are_a_count_or_unknown(self, make_cluster: Callable[..., Cluster]) -> None:
        self.declared("flambe_cluster_promised_gpus")
        cluster = make_cluster()
        cluster.load_all_instances()
        for host in cluster.all_hosts():
            promised = cluster.hooks.promised_gpus(config=cluster.config, instance=host)
            assert promised is None or (isinstance(promised, int) and promised >= 0), (host.label, promised)

    def test_place_is_stable_text_that_reads_no_api(self, make_cluster: Callable[..., Cluster]) -> None:
        self.declared("flambe_cluster_place")
        cluster = make_cluster()
        place = cluster.place()
        assert place == cluster.place() and all(isinstance(k, str) and isinstance(v, str) for k, v in place.items())
        assert place["provider"] == self.provider

    def test_release_removes_exactly_the_given_factories(self, make_cluster: Callable[..., Cluster]) -> None:
        self.declared("flambe_cluster_release_instances")
        cluster = make_cluster()
        cluster.load_all_instances()
        kept, released = cluster.factories[:-1], cluster.factories[-1]
        cluster.hooks.release_instances(config=cluster.config, instances=[released.record])
        if not self.creates_instances:
            return  # machines the user brought stay as they are: nothing to find gone
        again = make_cluster(name=cluster.name, factories_num=self.factories_num - 1)
        assert again.find_instances()
        assert {h.endpoint for h in again.factories} == {h.endpoint for h in kept}
