"""The ``given`` provider: machines that a :class:`~flambe_cluster.Cluster` subclass lists itself.

Flambé 0.4's documented way to add a provider is a subclass that overrides
``load_all_instances`` and assigns ``self.orchestrator =
self.get_orchestrator(ip)`` and ``self.factories = [...]``.  Such a class,
when it names no provider of its own, gets this one: like ``ssh``, it never
creates, starts, stops or deletes a machine (``down`` stops the cluster's
Ray, jobs and keys on the hosts and leaves them running), and it has no
options.  Its hooks never list a machine: the class does.  Named in a
cluster file, it is refused with what to use instead.
"""

from __future__ import annotations

from flambe_cluster.provider import ClusterConfigurationError, config_class, hookimpl


@config_class
class GivenOptions:
    """No options: the class lists the machines."""


@hookimpl
def flambe_cluster_options_class() -> type:
    return GivenOptions


@hookimpl
def flambe_cluster_validate(config) -> list[str]:
    return []


@hookimpl
def flambe_cluster_load_instances(config, journal, progress):
    raise ClusterConfigurationError(
        f"cluster {config.name!r}: provider 'given' is for a Cluster subclass that lists its machines in "
        "load_all_instances; in a cluster file, list them with provider: ssh")


@hookimpl
def flambe_cluster_find_instances(config):
    return None
