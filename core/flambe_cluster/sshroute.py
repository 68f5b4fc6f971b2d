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
* the keys: the cluster's ``key``, else ``IdentityFile`` (the files that exist; OpenSSH's default
  ``~/.ssh/id_*`` are not taken); none left means ssh-agent's keys
  (a jump host without ``IdentityFile`` uses the cluster's ``key``);
* the proxy: the cluster's ``proxy_command`` or ``proxy_jump``, else ``ProxyCommand`` or ``ProxyJump``
  (each jump host is resolved the same way, so its own configuration applies).
"""

from __future__ import annotations

import functools
import getpass
import os
import pwd
import socket
import subprocess
import threading
from pathlib import Path

from attrs import define, evolve, field, frozen

from .converters import parse_jump
from .errors import UsageError
from .records import Endpoint

#: Characters a ProxyCommand's /bin/sh gives a meaning: refused in the names put into it (see expand_tokens).
_SHELL_UNSAFE = frozenset("'\"`$\\;&<>|(){}*?!#~")

MAX_HOPS = 8  # jump hosts on one route: more means the configuration loops
SSH_G_TIMEOUT = 30.0  # seconds `ssh -G` may take (a `Match exec` or canonicalization runs in it)


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
    def via(self) -> Route | None:
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
    _settings: dict[tuple[str, int | None, str | None], dict[str, list[str]]] = field(init=False, factory=dict)
    _routes: dict[Endpoint, Route] = field(init=False, factory=dict)
    _lock: threading.Lock = field(init=False, factory=threading.Lock)

    def route(self, endpoint: Endpoint) -> Route:
        """The route to ``endpoint``; raises :class:`UsageError` for a configuration that ssh refuses or that loops,
        and when this machine has no ``ssh`` to read one."""
        with self._lock:
            if endpoint not in self._routes:
                port = endpoint.port if endpoint.port != 22 else None
                self._routes[endpoint] = self._resolve(
                    endpoint.host, port, self.username, self.key, self.proxy_jump, self.proxy_command, 0
                )
            return self._routes[endpoint]

    def _lookup(self, alias: str, port: int | None, user: str | None) -> dict[str, list[str]]:
        """:func:`openssh_settings` of ``config_file`` for ``alias`` (``{}`` without one), asked once per resolver."""
        if self.config_file is None:
            return {}
        asked = (alias, port, user)
        if asked not in self._settings:
            self._settings[asked] = openssh_settings(self.config_file, alias, port, user)
        return self._settings[asked]

    def _resolve(self, alias: str, port: int | None, user: str | None, key: Path | None,
                 jump: str | None, command: str | None, depth: int) -> Route:
        if depth > MAX_HOPS:
            raise UsageError(f"more than {MAX_HOPS} jump hosts on the way to {alias!r}: does the ProxyJump "
                             f"configuration of {self.config_file} loop?")
        found = self._lookup(alias, port, user)
        hop = Hop(_first(found, "hostname") or alias, port or int(_first(found, "port") or 22),
                  user or _first(found, "user") or getpass.getuser())
        identities = (key,) if key else tuple(
            p for p in (_identity_path(f, hop, alias) for f in _configured_identities(found)) if p.is_file()
        )
        hop = evolve(hop, identities=identities or ((self.key,) if self.key and depth else ()))
        if jump is None and command is None:
            command = _first(found, "proxycommand")
            jump = _first(found, "proxyjump")
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
    return _expand(command, {"h": hop.host, "p": str(hop.port), "r": hop.user, "%": "%"})


def _identity_path(text: str, hop: Hop, alias: str) -> Path:
    """An ``IdentityFile`` value as OpenSSH reads it when logging in to ``hop`` (reached as ``alias``).

    A leading ``~`` and ``%d`` are the passwd home (OpenSSH's, not
    ``$HOME``); ``%u``/``%i`` the local user and uid, ``%l``/``%L`` the
    local host name and its first label; ``%h``, ``%p``, ``%r`` the hop's
    host, port and user, ``%n`` the alias as written, ``%%`` a ``%``.
    """
    account = pwd.getpwuid(os.getuid())
    local = socket.gethostname()
    if text == "~" or text.startswith("~/"):
        text = account.pw_dir + text[1:]
    return Path(_expand(text, {"d": account.pw_dir, "u": account.pw_name, "i": str(os.getuid()), "l": local,
                               "L": local.split(".")[0], "h": hop.host, "p": str(hop.port), "r": hop.user,
                               "n": alias, "%": "%"}))


def openssh_settings(config_file: Path, host: str, port: int | None = None,
                     user: str | None = None) -> dict[str, list[str]]:
    """What OpenSSH, reading ``config_file`` alone, would use to log in to ``host``: ``ssh -G``'s answer.

    Keys are lowercase (``hostname``, ``port``, ``user``, ``identityfile``,
    ``proxyjump``, ...), each with its values in OpenSSH's order; an unset
    proxy is absent or ``none``.  ``port`` and ``user`` are given to ssh as
    ``-p`` and ``-l`` (so ``Match user`` and ``%r`` see them).  Raises
    :class:`UsageError` when this machine has no ``ssh``, or when ssh
    refuses the configuration or the host name (the message names
    ``config_file`` and carries ssh's own).
    """
    argv = ["ssh", "-G", "-T", "-F", str(config_file), *(["-p", str(port)] if port else []),
            *(["-l", user] if user else []), "--", host]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, errors="replace", stdin=subprocess.DEVNULL,
                              timeout=SSH_G_TIMEOUT)
    except FileNotFoundError as exc:
        raise UsageError("this machine has no OpenSSH client (ssh), which flambe-cluster needs; install it "
                         "(apt-get install openssh-client)") from exc
    except subprocess.TimeoutExpired as exc:
        raise UsageError(f"ssh -G took over {SSH_G_TIMEOUT:.0f} s to read the OpenSSH configuration {config_file} "
                         f"for {host!r} (a Match exec or a host name lookup that hangs?)") from exc
    if done.returncode != 0:
        said = done.stderr.strip() or f"ssh -G exited with {done.returncode}"
        raise UsageError(f"ssh cannot resolve {host!r} with the OpenSSH configuration {config_file}: {said}")
    settings: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(" ")
        settings.setdefault(key, []).append(value)
    return settings


@functools.cache
def _default_identities() -> tuple[str, ...]:
    """The ``IdentityFile`` list ``ssh -G`` gives when none is configured (OpenSSH's defaults; they vary by version)."""
    return tuple(openssh_settings(Path(os.devnull), "localhost").get("identityfile", ()))


def _configured_identities(found: dict[str, list[str]]) -> list[str]:
    """The ``IdentityFile`` values the configuration sets (none when ssh lists only its defaults)."""
    files = found.get("identityfile", [])
    return [] if not files or tuple(files) == _default_identities() else files


def _first(found: dict[str, list[str]], key: str) -> str | None:
    values = found.get(key)
    return values[0] if values else None


def _expand(text: str, values: dict[str, str]) -> str:
    """``text`` with each ``%x`` whose ``x`` is in ``values`` replaced by its value, left to right."""
    out, index = [], 0
    while index < len(text):
        char = text[index]
        if char == "%" and index + 1 < len(text) and text[index + 1] in values:
            out.append(values[text[index + 1]])
            index += 2
        else:
            out.append(char)
            index += 1
    return "".join(out)
