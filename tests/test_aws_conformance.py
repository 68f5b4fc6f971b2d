"""The AWS provider passes the provider conformance suite, on moto + real test hosts.

The suite describes a cluster on given hosts; an EC2 provider cannot choose
its addresses — moto hands out a new one per instance.  So here the hosts
follow the instances (tests/aws_support.py: each instance moto launches gets
a real OpenSSH host at its private address), and ``conformance_hosts`` is
the hosts of the cluster under test, orchestrator first, as the provider
reports its instances.
"""

from __future__ import annotations

import pytest
from aws_support import aws_cloud  # noqa: F401 - a fixture
from flambe_cluster.config import parse_config
from flambe_cluster.testing.conformance import HostsFoundLater, ProviderConformance
from flambe_cluster_aws import instances as fleet

pytestmark = pytest.mark.hosts


class HostsOfTheClusterUnderTest(HostsFoundLater):
    """The test hosts behind the instances of the last cluster the suite described (looked up when read)."""

    def __init__(self, cloud, suite: type) -> None:
        self.cloud, self.suite = cloud, suite

    def found(self) -> list:
        found = fleet.find(parse_config(self.cloud.config(self.suite.current_name)))
        by_address = {host.address: host for host in self.cloud.hosts_by_id.values()}
        return [] if found is None else [by_address[instance.private.host] for instance in found]


class TestAWSProviderConformance(ProviderConformance):
    provider = "aws"
    creates_instances = True
    current_name = ""

    @pytest.fixture(scope="class")
    @classmethod
    def conformance_hosts(cls, aws_cloud):
        yield HostsOfTheClusterUnderTest(aws_cloud, cls)

    @pytest.fixture(autouse=True)
    def _cloud(self, aws_cloud):
        self.cloud = aws_cloud

    def cluster_config(self, hosts, name, key):
        type(self).current_name = name
        config = self.cloud.config(name, key=str(key))
        config.pop("provider")
        return config
