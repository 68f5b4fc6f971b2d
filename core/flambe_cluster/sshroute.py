"""How the client reaches each host, resolved once per host: OpenSSH configuration, proxies, users, keys.

:class:`Resolver` turns an address of the cluster file (an IP address, a
name, or an alias of the user's OpenSSH configuration) into a
:class:`Route`: the hops from here to the host, each with the address,
port, user and identity files to log in with, and the ProxyCommand (if
any) that reaches the first hop.  The one route feeds both paramiko
(:mod:`flambe_cluster.sshconnect`) and OpenSSH
(:func:`flambe_cluster.ssh.openssh_route_options`), so both reach the same
machine the same way.

What wins, as OpenSSH's command line wins over its configuration file:

* the host: the configuration's ``HostName`` for the alias, else the address as written;
* the port: a port written in the cluster file (other than 22), else ``Port``, else 22;
* the user: the cluster's ``username`` (jump hosts: ``user@`` of the jump, else ``User``, else the local user);
* the keys: the cluster's ``key``, else ``IdentityFile``; none left means ssh-agent's keys
  (a jump host without ``IdentityFile`` uses the cluster's ``key``);
* the proxy: the cluster's ``proxy_command`` or ``proxy_jump``, else ``ProxyCommand`` or ``ProxyJump``
  (each jump host is resolved the same way, so its own configuration applies).
"""

from __future__ import annotations

import getpass
import threading
from pathlib import Path

import paramiko
from attrs import define, field, frozen

from .converters import parse_jump
from .errors import UsageError
from .records import Endpoint

#: Characters a ProxyCommand's /bin/sh gives a meaning: refused in the names put into it (see expand_tokens).
_SHELL_UNSAFE = frozenset("'\"`$\\;&<>|(){}*?!#~")

MAX_HOPS = 8  # jump hosts on one route: more means the configuration loops


@frozen
class Hop:
    """One SSH server on the way: where it listens, who logs in, with which key files (none: ssh-agent's)."""

    host: str
    port: int
    user: str
    identities: tuple[Path, ...] = ()

    @property
    def known_hosts_name(self) -> str:
        """The name its key is pinned under (``host`` or ``[host]:port``), as paramiko and OpenSSH look it up."""
        return Endpoint(self.host, self.port).known_hosts_name

    @property
    def label(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


@frozen
class Route:
    """The hops from here to a host, the host last; ``proxy_command`` (a shell line) reaches the first."""

    hops: tuple[Hop, ...]
    proxy_command: str | None = None

    @property
    def target(self) -> Hop:
        return self.hops[-1]

    @property
    def via(self) -> "Route | None":
        """The route to the last jump host (``None`` when the host is reached without one)."""
        return Route(self.hops[:-1], self.proxy_command) if len(self.hops) > 1 else None


@define
class Resolver:
    """Resolves addresses to routes (see the module docstring); thread-safe, each address resolved once.

    ``config_file`` is the OpenSSH client configuration to honour (``None``:
    none); ``key`` the cluster's key (``None``: ssh-agent's keys).
    """

    username: str
    key: Path | None
    config_file: Path | None
    proxy_jump: str | None = None
    proxy_command: str | None = None
    _config: paramiko.SSHConfig | None = field(init=False, default=None)
    _routes: dict[Endpoint, Route] = field(init=False, factory=dict)
    _lock: threading.Lock = field(init=False, factory=threading.Lock)

    def route(self, endpoint: Endpoint) -> Route:
        """The route to ``endpoint``; raises :class:`UsageError` for a configuration that cannot be read or loops."""
        with self._lock:
            if endpoint not in self._routes:
                port = endpoint.port if endpoint.port != 22 else None
                self._routes[endpoint] = self._resolve(
                    endpoint.host, port, self.username, self.key, self.proxy_jump, self.proxy_command, 0
                )
            return self._routes[endpoint]

    def _lookup(self, alias: str) -> dict:
        if self.config_file is None:
            return {}
        if self._config is None:
            try:
                self._config = paramiko.SSHConfig.from_path(str(self.config_file))
            except (OSError, paramiko.SSHException, ValueError) as exc:
                raise UsageError(f"cannot read the OpenSSH configuration {self.config_file}: {exc}") from exc
        return self._config.lookup(alias)

    def _resolve(self, alias: str, port: int | None, user: str | None, key: Path | None,
                 jump: str | None, command: str | None, depth: int) -> Route:
        if depth > MAX_HOPS:
            raise UsageError(f"more than {MAX_HOPS} jump hosts on the way to {alias!r}: does the ProxyJump "
                             f"configuration of {self.config_file} loop?")
        found = self._lookup(alias)
        identities = (key,) if key else tuple(
            p for p in (Path(f).expanduser() for f in found.get("identityfile", ())) if p.is_file()
        )
        hop = Hop(found.get("hostname", alias), port or int(found.get("port", 22)),
                  user or found.get("user") or getpass.getuser(), identities or ((self.key,) if self.key and depth else ()))
        if jump is None and command is None:
            command = found.get("proxycommand")
            jump = found.get("proxyjump")
        if command and command != "none":
            return Route((hop,), expand_tokens(command, hop))
        if jump and jump != "none":
            *before, last = jump.split(",")
            jump_user, jump_host, jump_port = parse_jump(last)
            via = self._resolve(jump_host, jump_port, jump_user, None, ",".join(before) or None, None, depth + 1)
            return Route((*via.hops, hop), via.proxy_command)
        return Route((hop,))


def expand_tokens(command: str, hop: Hop) -> str:
    """OpenSSH's ``%h``, ``%p``, ``%r`` and ``%%`` in a ProxyCommand, expanded for ``hop``.

    The line runs under ``/bin/sh``: a host or user name holding a shell
    metacharacter (``fe80::1%$(cmd)``) is refused with :class:`UsageError`,
    as OpenSSH ≥ 9.6 refuses it, rather than quoted (a quote of ours would
    end one the user wrote around ``%h``).
    """
    for what, value in (("host", hop.host), ("user", hop.user)):
        unsafe = sorted({c for c in value if c in _SHELL_UNSAFE or c.isspace()})
        if unsafe:
            raise UsageError(f"the {what} name {value!r} holds {' '.join(map(repr, unsafe))}, which a ProxyCommand's "
                             "shell would run or split; use a plain host name or address")
    values = {"h": hop.host, "p": str(hop.port), "r": hop.user, "%": "%"}
    out, index = [], 0
    while index < len(command):
        char = command[index]
        if char == "%" and index + 1 < len(command) and command[index + 1] in values:
            out.append(values[command[index + 1]])
            index += 2
        else:
            out.append(char)
            index += 1
    return "".join(out)
