"""The example provider passes flambe-cluster's conformance suite, as a plugin author runs it.

``pytest tests/`` in this folder: as root the hosts are OpenSSH servers in
Linux namespaces, as an ordinary user loopback OpenSSH servers run as that
user.  Install first: ``pip install 'flambe-cluster[testing]' .``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from flambe_cluster.testing.conformance import ProviderConformance

pytestmark = pytest.mark.hosts


class TestInventoryConformance(ProviderConformance):
    provider = "inventory"

    @pytest.fixture(autouse=True)
    def _inventory_folder(self, tmp_path: Path) -> None:
        self.folder = tmp_path

    def cluster_config(self, hosts, name, key):
        orchestrator, *factories = hosts
        # Every spelling of a host line the parser accepts, on the real hosts.
        lines = [
            "# written by the conformance test",
            "[orchestrator]",
            f"head ansible_host={orchestrator.address} ansible_port={orchestrator.port} "
            f"private_ip={orchestrator.address}",
            "",
            "; the factories",
            "[factories]",
        ]
        for index, host in enumerate(factories):
            lines.append(f"{host.address}:{host.port}" if index % 2 == 0
                         else f"{host.address} ansible_port={host.port}  # a comment")
        path = self.folder / f"{name}.ini"
        path.write_text("\n".join(lines) + "\n")
        return {"name": name, "key": str(key), "username": orchestrator.username, "inventory": str(path)}
