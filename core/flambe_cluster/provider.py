"""Everything a provider may use, in one import: the face of flambe-cluster for plugins.

A provider package imports ``flambe_cluster`` (the marker :data:`hookimpl`
and the errors) and this module, nothing else of the core; the layering
contract in ``.importlinter`` holds every built-in provider to that.  The
hooks themselves are documented in :mod:`flambe_cluster.hookspecs`.

- the marker: :data:`hookimpl`;
- :class:`Progress`, the type of the ``progress`` callable that
  ``flambe_cluster_load_instances`` receives to report each instance's
  state while it boots;
- records crossing the hook boundary: :class:`Instance`, :class:`Endpoint`,
  :class:`Role`, :class:`ClusterInstances`, :class:`CreatedResource`,
  :class:`Resources`, :class:`TaggedCluster`, and the validated :class:`ClusterConfig`; the seed's
  host names (:func:`host_name`);
- declaring options: :func:`config_class` and the converters (``to_*``,
  :func:`matching`, :func:`one_of`, :func:`describe_value`, :data:`SAFE_NAME`);
- the journal a load hook records creations in (:class:`RunJournal`), and a
  cluster's local state folder (:class:`ClusterState`: its pinned
  ``known_hosts``, key pairs), and :func:`public_key_line` of a private key;
- the errors of :mod:`flambe_cluster.errors`;
- :mod:`flambe_cluster.localhosts`, for providers that start sshd hosts on
  this machine (the ``local`` one).
"""

from . import localhosts
from .converters import (
    SAFE_NAME,
    config_class,
    describe_value,
    matching,
    one_of,
    to_bool,
    to_int,
    to_optional_path,
    to_safe_name,
    to_seconds,
    to_str,
    to_str_tuple,
)
from .costs import listed_price, warn_never_idle
from .errors import (
    ClusterConfigurationError,
    ClusterError,
    FlambeClusterError,
    HostError,
    HostUnreachableError,
    ProviderError,
    RemoteCommandError,
    UsageError,
)
from .hookspecs import hookimpl
from .progress import Progress
from .records import (
    ClusterInstances,
    CreatedResource,
    Endpoint,
    Instance,
    Offer,
    PlannedChange,
    Resources,
    Role,
    TaggedCluster,
    host_name,
)
from .settings import ClusterConfig
from .sshroute import Resolver
from .state import ClusterState, KeyPair, RunJournal, public_key_line

__all__ = [
    "SAFE_NAME",
    "ClusterConfig",
    "ClusterConfigurationError",
    "ClusterError",
    "ClusterInstances",
    "ClusterState",
    "CreatedResource",
    "Endpoint",
    "FlambeClusterError",
    "HostError",
    "HostUnreachableError",
    "Instance",
    "KeyPair",
    "Offer",
    "PlannedChange",
    "Progress",
    "ProviderError",
    "RemoteCommandError",
    "Resources",
    "Role",
    "RunJournal",
    "TaggedCluster",
    "UsageError",
    "config_class",
    "describe_value",
    "hookimpl",
    "host_name",
    "listed_price",
    "localhosts",
    "matching",
    "one_of",
    "public_key_line",
    "resolved_endpoint",
    "to_bool",
    "to_int",
    "to_optional_path",
    "to_safe_name",
    "to_seconds",
    "to_str",
    "to_str_tuple",
    "warn_never_idle",
]


def resolved_endpoint(config: ClusterConfig, endpoint: Endpoint) -> Endpoint:
    """``endpoint`` with the ``HostName`` and ``Port`` the configuration's ``ssh_config`` gives it.

    An alias of the user's OpenSSH configuration means nothing to the other
    hosts; this is the address it stands for (``endpoint`` itself when no
    configuration names it).  Raises :class:`UsageError` for an unreadable
    configuration.
    """
    target = Resolver(config.username, config.key, config.ssh_config).route(endpoint).target
    return Endpoint(target.host, target.port)
