"""The built-in ssh provider passes the conformance suite on real hosts."""

from flambe_cluster.testing.conformance import ProviderConformance


class TestSSHProviderConformance(ProviderConformance):
    provider = "ssh"

    def cluster_config(self, hosts, name, key):
        return {
            "name": name,
            "key": str(key),
            "username": hosts[0].username,
            "orchestrator_ip": hosts[0].address,
            "factories_ips": [h.address for h in hosts[1:]],
        }
