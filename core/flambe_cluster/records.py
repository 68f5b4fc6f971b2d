"""Value objects that cross the provider boundary.

All are frozen attrs classes: providers build them, the core reads them, and
no SDK object (boto3, google-cloud) ever appears inside one.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import attrs
from attrs import field, frozen

_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


class Role(enum.Enum):
    """What a host does in the cluster."""

    ORCHESTRATOR = "orchestrator"
    FACTORY = "factory"


def _parse_host(value: object) -> str:
    """An IP address (normalised) or a DNS host name; anything else raises ValueError."""
    text = str(value).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    if _HOSTNAME.fullmatch(text):
        return text
    raise ValueError(f"expected an IP address or host name, got {value!r}")


def _check_port(_instance: object, _attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 65535:
        raise ValueError(f"expected a TCP port between 1 and 65535, got {value!r}")


@frozen
class Endpoint:
    """Where an SSH server listens: an address and a port.

    ``Endpoint.parse("10.0.0.5:2222")`` and ``Endpoint.parse("10.0.0.5")``
    (port 22) are the accepted spellings; IPv6 literals need brackets when a
    port is given (``[fd00::5]:2222``).
    """

    host: str = field(converter=_parse_host)
    port: int = field(default=22, validator=_check_port)

    @classmethod
    def parse(cls, value: object) -> Endpoint:
        """Parse ``host``, ``host:port`` or ``[v6]:port``; raises ValueError naming the value."""
        if isinstance(value, Endpoint):
            return value
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"expected 'host' or 'host:port', got {value!r}")
        text = value.strip()
        host, port = text, 22
        if text.startswith("["):
            inside, _, rest = text[1:].partition("]")
            host = inside
            if rest:
                if not rest.startswith(":"):
                    raise ValueError(f"expected '[address]:port', got {value!r}")
                port = _parse_port(rest[1:], value)
        elif text.count(":") == 1:
            host, port_text = text.split(":")
            port = _parse_port(port_text, value)
        return cls(host, port)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 22 else f"{host}:{self.port}"

    @property
    def known_hosts_name(self) -> str:
        """The name OpenSSH and paramiko use for this endpoint in known_hosts."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


def _parse_port(text: str, original: object) -> int:
    if not text.isdigit():
        raise ValueError(f"expected a numeric port in 'host:port', got {original!r}")
    return int(text)


@frozen
class Instance:
    """One host of the cluster, as the provider knows it.

    ``public`` is where the client reaches the host, ``private`` where the
    other hosts of the cluster reach it (the same when there is only one
    address).  ``use_public`` says which one the client uses.
    ``instance_id`` is the provider's handle (an EC2 instance id, a GCP
    instance name) or ``None`` for machines the user brought.  ``down``
    destroys the machines that have one (the command line asks first on a
    terminal).  ``gpus`` is the
    number of GPUs when known, ``None`` when it is still to be detected.
    """

    name: str
    role: Role
    public: Endpoint
    private: Endpoint
    use_public: bool = True
    instance_id: str | None = None
    gpus: int | None = None

    @classmethod
    def at(cls, role: Role, name: str, ip: str, private_ip: str | None = None, use_public: bool = True,
           gpus: int | None = 0) -> Instance:
        """The record of the host at ``ip`` (``host[:port]``); ``private_ip`` defaults to ``ip``."""
        public = Endpoint.parse(ip)
        private = Endpoint.parse(private_ip) if private_ip else public
        return cls(name=name, role=role, public=public, private=private, use_public=use_public, gpus=gpus)

    @property
    def endpoint(self) -> Endpoint:
        """The endpoint the client connects to."""
        return self.public if self.use_public else self.private

    @property
    def label(self) -> str:
        """Short human name for messages: ``name (address)``."""
        return f"{self.name} ({self.endpoint})"

    def to_json(self) -> dict[str, Any]:
        """The host as the state folder's member record holds it (all but ``gpus``)."""
        return {"name": self.name, "role": self.role.value, "public": str(self.public), "private": str(self.private),
                "use_public": self.use_public, "instance_id": self.instance_id}

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> Instance:
        """The host :meth:`to_json` wrote (``gpus`` unknown); raises KeyError, TypeError or ValueError when damaged."""
        return cls(name=item["name"], role=Role(item["role"]), public=Endpoint.parse(item["public"]),
                   private=Endpoint.parse(item["private"]), use_public=item["use_public"],
                   instance_id=item["instance_id"], gpus=None)


def identity(host: Instance) -> tuple[str, str]:
    """What makes ``host`` the same machine from one ``up`` to the next: its instance id, else its private address
    (the one the hosts and Ray know it by: the same machine reached through another name, such as an
    ``~/.ssh/config`` alias or a bastion, is still the same)."""
    return ("id", host.instance_id) if host.instance_id else ("at", str(host.private))


def orchestrator_name(cluster: str) -> str:
    """The seed's orchestrator name: ``<cluster>_orchestrator``."""
    return f"{cluster}_orchestrator"


def factory_name(cluster: str, index: int | None = None) -> str:
    """The seed's factory name ``<cluster>_factory<index>`` (without ``index``: the base name)."""
    return f"{cluster}_factory" + ("" if index is None else str(index))


def host_name(cluster: str, role: Role, index: int) -> str:
    """The name of the orchestrator, or of factory ``index``."""
    return orchestrator_name(cluster) if role is Role.ORCHESTRATOR else factory_name(cluster, index)


def _instances(value: Iterable[Instance]) -> tuple[Instance, ...]:
    return tuple(value)


def _strings(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _place(value: Mapping[str, str]) -> dict[str, str]:
    return dict(value)


@frozen
class ClusterInstances:
    """The orchestrator and the factories, as a provider found or made them."""

    orchestrator: Instance
    factories: tuple[Instance, ...] = field(converter=_instances)

    @classmethod
    def named(
        cls,
        cluster: str,
        endpoints: Sequence[tuple[Endpoint, Endpoint]],
        *,
        use_public: bool = True,
        instance_ids: Sequence[str | None] | None = None,
    ) -> ClusterInstances:
        """Instances with the seed's names, from ``(public, private)`` endpoints, the orchestrator's first.

        The orchestrator is ``<cluster>_orchestrator``, factory ``i`` is
        ``<cluster>_factory<i>``; ``instance_ids`` (one per endpoint pair)
        are the provider's handles, if it has any.
        """
        ids = list(instance_ids) if instance_ids is not None else [None] * len(endpoints)
        made = [
            Instance(
                name=host_name(cluster, Role.ORCHESTRATOR if index == 0 else Role.FACTORY, index - 1),
                role=Role.ORCHESTRATOR if index == 0 else Role.FACTORY,
                public=public,
                private=private,
                use_public=use_public,
                instance_id=ids[index],
            )
            for index, (public, private) in enumerate(endpoints)
        ]
        return cls(made[0], made[1:])

    def __iter__(self) -> Iterator[Instance]:
        yield self.orchestrator
        yield from self.factories

    def __len__(self) -> int:
        return 1 + len(self.factories)


@frozen
class Resources:
    """CPUs and GPUs of a host (or the common minimum over hosts)."""

    cpu: int
    gpu: int

    def as_dict(self) -> dict[str, int]:
        return {"cpu": self.cpu, "gpu": self.gpu}


@frozen
class CreatedResource:
    """One thing a provider created and recorded in the journal.

    ``kind`` is provider-defined ("instance", "alarm", ...), ``resource_id``
    the provider's id for it; ``details`` are JSON-serialisable extras a
    rollback needs (a region, a zone).
    """

    kind: str
    resource_id: str
    details: dict[str, Any] = field(factory=dict)


@frozen
class TaggedCluster:
    """A cluster whose machines a provider found in the cloud by the project's tags (``list --provider``).

    ``name`` is the cluster's name as tagged; ``machines`` describes each
    live machine (``"i-0abc (running, orchestrator)"``); ``remove`` is a
    command line that destroys them all (the cloud's own CLI); ``place`` is
    where it lives, in the terms of ``flambe_cluster_place`` (e.g. region and
    creator): two clusters of one name in two places are two entries.
    """

    name: str
    machines: tuple[str, ...] = field(converter=_strings)
    remove: str
    place: dict[str, str] = field(factory=dict, converter=_place, hash=False)


#: The markets a machine is bought on.
MARKETS = ("on-demand", "spot")


@frozen
class Offer:
    """What one machine is and what it costs: its type, its market and its price per hour in USD.

    ``usd_per_hour`` is ``None`` when the provider cannot tell (no price
    source answered, no ``prices:`` entry).  :meth:`details` is how a
    provider records it in the journal entry of what it created, so the
    cost of a cluster is computed from the record alone
    (:mod:`flambe_cluster.costs`).
    """

    instance_type: str
    market: str = field(validator=attrs.validators.in_(MARKETS))
    usd_per_hour: float | None = None

    def details(self) -> dict[str, Any]:
        """The journal details of a created machine bought on this offer."""
        return {"instance_type": self.instance_type, "market": self.market, "usd_per_hour": self.usd_per_hour}

    def describe(self) -> str:
        """``"g4dn.xlarge spot at $0.1578/h"`` (or ``"..., price unknown"``)."""
        price = f"at ${self.usd_per_hour:.4g}/h" if self.usd_per_hour is not None else "price unknown"
        return f"{self.instance_type} {self.market} {price}"


@frozen
class PlannedChange:
    """One change ``up`` would make to paid machines: launch ``count`` machines of ``role``, or terminate some.

    ``names`` are the instance ids of the machines a termination removes (empty for a launch);
    ``offer`` what each costs (``None``: unknown).
    """

    action: str = field(validator=attrs.validators.in_(("launch", "terminate")))
    role: Role
    count: int
    offer: Offer | None = None
    names: tuple[str, ...] = field(default=(), converter=_strings)

    def line(self) -> str:
        """One line of the plan, e.g. ``launch 2 × g4dn.xlarge spot at $0.1578/h each (factories)``."""
        what = self.offer.describe() if self.offer else "type and price unknown"
        if self.count > 1 and self.offer and self.offer.usd_per_hour is not None:
            what += " each"
        if self.action == "launch":
            role = "orchestrator" if self.role is Role.ORCHESTRATOR else "factory" if self.count == 1 else "factories"
            return f"launch {self.count} × {what} ({role})"
        return f"terminate {', '.join(self.names) or f'{self.count} machines'} ({what})"
