"""The validated description of a cluster: :class:`ClusterConfig`.

Its fields are the seed's common parameters (``name``, ``factories_num``,
``key``, ``username``, ``setup_cmds``) and the core's settings, each declared
once with its converter; the provider's own options ride along in
``options`` (an instance of the provider's
:func:`~flambe_cluster.converters.config_class`).  Reading a file into one is
:mod:`flambe_cluster.config`'s job.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from attrs import field

from .converters import (
    config_class,
    init_fields,
    one_of,
    to_int,
    to_optional_path,
    to_optional_private_key_path,
    to_optional_str,
    to_optional_usd,
    to_prices,
    to_proxy_jump,
    to_safe_name,
    to_seconds,
    to_ssh_config,
    to_str,
    to_str_tuple,
    to_username,
)

HOST_KEY_POLICIES = ("accept-new", "strict")


def _one_proxy(config: ClusterConfig, _attribute: Any, value: str | None) -> None:
    """The validator of ``proxy_command``."""
    if value is not None and config.proxy_jump is not None:
        raise ValueError("set either proxy_jump or proxy_command, not both (OpenSSH too uses only one)")


@config_class
class ClusterConfig:
    """A validated cluster description.

    ``options`` is the provider's options object (see
    ``flambe_cluster_options_class``); ``source`` names the file it came from.
    """

    provider: str = field(converter=to_str, metadata={"help": "a provider name (see `flambe-cluster providers`)"})
    name: str = field(converter=to_safe_name, metadata={"help": "the cluster's name"})
    username: str = field(converter=to_username, metadata={"help": "the user name on all hosts"})
    factories_num: int = field(converter=to_int(minimum=0), metadata={"help": "the number of factories"})
    options: Any = field(default=None)
    key: Path | None = field(default=None, converter=to_optional_private_key_path)
    """The SSH private key for all hosts; ``None``: the keys of ssh-agent (``SSH_AUTH_SOCK``)."""
    # attrs' stubs type a default as the field, but this one goes through the converter
    ssh_config: Path | None = field(default=True, converter=to_ssh_config)  # type: ignore[assignment]
    """The OpenSSH client configuration honoured for every host reached (``None``: none)."""
    proxy_jump: str | None = field(default=None, converter=to_proxy_jump)
    proxy_command: str | None = field(default=None, converter=to_optional_str, validator=_one_proxy)
    setup_cmds: tuple[str, ...] = field(default=(), converter=to_str_tuple)
    host_key_policy: str = field(default="accept-new", converter=one_of(*HOST_KEY_POLICIES))
    connect_timeout: float = field(default=60.0, converter=to_seconds)
    command_timeout: float = field(default=1800.0, converter=to_seconds)
    keepalive_interval: float = field(default=15.0, converter=to_seconds)
    keepalive_count: int = field(default=3, converter=to_int(minimum=2))
    state_dir: Path | None = field(default=None, converter=to_optional_path)
    python: str = field(default="python3", converter=to_str)
    ray_port: int = field(default=6379, converter=to_int(minimum=1, maximum=65535))
    ray_timeout: float = field(default=120.0, converter=to_seconds)
    secrets: Path | None = field(default=None, converter=to_optional_path)
    prices: dict[str, float] = field(factory=dict, converter=to_prices)
    """USD per hour by machine type (``"TYPE"`` on-demand, ``"TYPE spot"``), before any price the provider looks up."""
    max_cost: float | None = field(default=None, converter=to_optional_usd)
    """USD: ``up`` refuses once the cluster's recorded cost reaches it, and ``up --watch`` takes the cluster down."""
    source: str | None = field(default=None)


#: The keys of a configuration that belong to the cluster, not to the provider's options.
COMMON_FIELDS = frozenset(init_fields(ClusterConfig)) - {"options", "source"}
