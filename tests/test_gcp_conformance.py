"""The GCP provider passes the provider conformance suite.

Instances come from the local Compute Engine fake (tests/gcp_fake.py), which
hands out the addresses of the suite's real test hosts, so the suite's `up`
reaches real OpenSSH servers.
"""

import pytest
from flambe_cluster.testing.conformance import ProviderConformance
from gcp_fake import FakeComputeEngine


class TestGCPProviderConformance(ProviderConformance):
    provider = "gcp"
    creates_instances = True

    @pytest.fixture(scope="class")
    @classmethod
    def conformance_hosts(cls, flambe_test_hosts, request):
        network = flambe_test_hosts(1 + cls.factories_num)
        fake = FakeComputeEngine(host=network.gateway, addresses=[h.address for h in network.hosts]).start()
        for host in network.hosts:  # the host keys each instance's guest agent publishes
            fake.publish_host_keys(host.address, [host.host_key_line()])
        request.cls.fake = fake
        yield network.hosts
        fake.close()
        network.close()

    def cluster_config(self, hosts, name, key):
        return {
            "name": name,
            "key": str(key),
            "username": hosts[0].username,
            "factories_num": self.factories_num,
            "project": self.fake.project,
            "zone": "us-central1-a",
            "api_endpoint": self.fake.url,
        }
