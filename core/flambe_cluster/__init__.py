"""flambe-cluster: the cluster layer of Flambé.

One orchestrator and N factories — over SSH, on AWS or on GCP — reachable,
verified, keyed, set up, and running Ray.  The public API:

- :class:`Cluster`, the seed's cluster API for any provider;
- :data:`hookimpl`, the marker provider plugins use (contract in
  :mod:`flambe_cluster.hookspecs`);
- the errors of :mod:`flambe_cluster.errors`.
"""

from .errors import (
    ClusterBusyError,
    ClusterConfigurationError,
    ClusterError,
    FlambeClusterError,
    HostError,
    HostKeyError,
    HostUnreachableError,
    ProviderError,
    RemoteCommandError,
    UsageError,
)
from .hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "Cluster",
    "ClusterBusyError",
    "ClusterConfigurationError",
    "ClusterError",
    "FlambeClusterError",
    "HostError",
    "HostKeyError",
    "HostUnreachableError",
    "ProviderError",
    "RemoteCommandError",
    "UsageError",
    "__version__",
    "hookimpl",
]


def __getattr__(name: str):
    # Cluster imports paramiko; providers import only `hookimpl`, so load it lazily.
    if name == "Cluster":
        from .cluster import Cluster

        return Cluster
    raise AttributeError(name)
