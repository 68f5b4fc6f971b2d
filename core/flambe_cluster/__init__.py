"""flambe-cluster: the cluster layer of Flambé.

One orchestrator and N factories — over SSH, on AWS or on GCP — reachable,
verified, keyed, set up, and running Ray.  The public API:

- :class:`Cluster`, the seed's cluster API for any provider, and the seed's
  classes :class:`SSHCluster`, :class:`AWSCluster`, :class:`GCPCluster`;
- the instance objects :class:`OrchestratorInstance`, :class:`FactoryInstance`;
- :data:`hookimpl`, the marker provider plugins use (contract in
  :mod:`flambe_cluster.hookspecs`);
- the errors of :mod:`flambe_cluster.errors`, and the seed's ``utils.RemoteCommand``;
- :class:`RemoteEnvironment`, what a job knows about its cluster (``RemoteEnvironment.from_env()``).
"""

from typing import Any

from .errors import (
    ClusterBusyError,
    ClusterConfigurationError,
    ClusterError,
    ConnectionLostError,
    FlambeClusterError,
    HostError,
    HostKeyError,
    HostUnreachableError,
    MissingAuthError,
    ProviderError,
    RemoteCommandError,
    RemoteFileTransferError,
    SSHConnectingError,
    UsageError,
)
from .hookspecs import hookimpl
from .utils import RemoteCommand

__version__ = "0.1.0"

#: Public names loaded on first use (they import paramiko), and the module that defines each.
_LAZY = {
    "Cluster": "cluster", "SSHCluster": "cluster", "AWSCluster": "cluster", "GCPCluster": "cluster",
    "OrchestratorInstance": "handles", "FactoryInstance": "handles", "RemoteEnvironment": "remoteenv",
}

__all__ = [
    "AWSCluster",
    "Cluster",
    "ClusterBusyError",
    "ClusterConfigurationError",
    "ClusterError",
    "ConnectionLostError",
    "FactoryInstance",
    "FlambeClusterError",
    "GCPCluster",
    "HostError",
    "HostKeyError",
    "HostUnreachableError",
    "MissingAuthError",
    "OrchestratorInstance",
    "ProviderError",
    "RemoteCommand",
    "RemoteCommandError",
    "RemoteEnvironment",
    "RemoteFileTransferError",
    "SSHCluster",
    "SSHConnectingError",
    "UsageError",
    "__version__",
    "hookimpl",
]


def __getattr__(name: str) -> Any:
    # The clusters import paramiko; providers import only `hookimpl` and the errors, so load them lazily.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
