"""The SSH provider: machines the user already has, reached over SSH.

It never creates, starts, stops or deletes a machine: ``load_instances`` and
``find_instances`` only describe the hosts listed in the configuration, and
there is nothing to roll back or terminate.

Options (besides the common cluster fields)::

    orchestrator_ip: 10.0.0.5                 # or [public, private]; host:port allowed
    factories_ips: [10.0.0.6, "10.0.0.7:2222", [34.1.2.3, 10.0.0.8]]
    use_public: true                          # connect to the public address (default)

An address may be an alias of the OpenSSH configuration (``ssh_config``); a
host given by one address alone then has the alias's ``HostName`` and
``Port`` as its private address, which the other hosts reach.
"""

from __future__ import annotations

from attrs import field, frozen
from flambe_cluster.provider import ClusterInstances, Endpoint, config_class, hookimpl, resolved_endpoint, to_bool

__all__ = ["HostAddresses", "SSHOptions"]


@frozen
class HostAddresses:
    """A host's public and private endpoints (the same when one address is given)."""

    public: Endpoint
    private: Endpoint

    @classmethod
    def parse(cls, value: object) -> HostAddresses:
        """``"ip"``, ``"ip:port"`` or ``[public, private]``; raises ValueError naming the value."""
        if isinstance(value, HostAddresses):
            return value
        if isinstance(value, (list, tuple)):
            if len(value) != 2:
                raise ValueError(f"expected an address or a [public, private] pair, got a list of {len(value)}")
            return cls(Endpoint.parse(value[0]), Endpoint.parse(value[1]))
        endpoint = Endpoint.parse(value)
        return cls(endpoint, endpoint)


def _to_addresses(value: object) -> HostAddresses:
    return HostAddresses.parse(value)


def _to_address_list(value: object) -> tuple[HostAddresses, ...]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"expected a list of addresses, got {type(value).__name__} {value!r}")
    parsed = []
    for index, item in enumerate(value):
        try:
            parsed.append(HostAddresses.parse(item))
        except ValueError as exc:
            raise ValueError(f"item {index}: {exc}") from None
    return tuple(parsed)


@config_class
class SSHOptions:
    """The SSH provider's options."""

    orchestrator_ip: HostAddresses = field(
        converter=_to_addresses, metadata={"help": "the orchestrator's address ('ip', 'ip:port' or [public, private])"}
    )
    factories_ips: tuple[HostAddresses, ...] = field(
        converter=_to_address_list, metadata={"help": "the list of factory addresses"}
    )
    use_public: bool = field(default=True, converter=to_bool)

    @property
    def implied_factories_num(self) -> int:
        return len(self.factories_ips)


@hookimpl
def flambe_cluster_options_class() -> type:
    return SSHOptions


@hookimpl
def flambe_cluster_validate(config) -> list[str]:
    """Each address may appear once (the same machine cannot be two hosts)."""
    problems = []
    options: SSHOptions = config.options
    seen: dict = {options.orchestrator_ip.public: "orchestrator_ip"}
    for index, address in enumerate(options.factories_ips):
        where = f"factories_ips[{index}]"
        if address.public in seen:
            problems.append(f"{where}: {address.public} is already listed as {seen[address.public]}; each host once")
        seen.setdefault(address.public, where)
    private: dict = {options.orchestrator_ip.private.host: "orchestrator_ip"}
    for index, address in enumerate(options.factories_ips):
        where = f"factories_ips[{index}]"
        if address.private.host in private:
            problems.append(
                f"{where}: private address {address.private.host} is also {private[address.private.host]}'s; "
                "hosts reach each other (and Ray tells nodes apart) by private address, so give each its own "
                "([public, private])"
            )
        private.setdefault(address.private.host, where)
    return problems


def _private(config, host: HostAddresses) -> Endpoint:
    """The host's private endpoint; one address given alone is resolved through the OpenSSH configuration
    (an alias stands for the address it names)."""
    return resolved_endpoint(config, host.private) if host.private == host.public else host.private


def _instances(config) -> ClusterInstances:
    options: SSHOptions = config.options
    hosts = [options.orchestrator_ip, *options.factories_ips]
    return ClusterInstances.named(config.name, [(h.public, _private(config, h)) for h in hosts],
                                  use_public=options.use_public)


@hookimpl
def flambe_cluster_place(config) -> dict:
    """The orchestrator's private address (an alias resolved): two clusters of one name on other machines are
    two clusters."""
    return {"orchestrator": str(_private(config, config.options.orchestrator_ip))}


@hookimpl
def flambe_cluster_load_instances(config, journal, progress) -> ClusterInstances:
    """The listed hosts; nothing is created, so nothing is journaled (each is shown as given)."""
    made = _instances(config)
    for instance in [made.orchestrator, *made.factories]:
        progress(instance.name, f"given at {instance.endpoint}")
    return made


@hookimpl
def flambe_cluster_find_instances(config) -> ClusterInstances:
    """The listed hosts (they always exist as far as this provider knows)."""
    return _instances(config)
