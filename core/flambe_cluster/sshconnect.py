"""Opening one verified paramiko connection along a :class:`~flambe_cluster.sshroute.Route`.

The first hop is reached over TCP (TCP_NODELAY, a kernel timeout for
unacknowledged data) or through the route's ProxyCommand (run by
``/bin/sh``, as OpenSSH runs it); each further hop through a
``direct-tcpip`` channel of the hop before it.  Every hop's host key —
jump hosts' too — is verified against the cluster's known_hosts with its
policy; a jump host's changed key is refused at once (no provider vouches
for a jump host).  Each hop is offered its key files first, then the keys of
ssh-agent (``SSH_AUTH_SOCK``, when set).
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeAlias

import paramiko
from attrs import frozen

from .errors import HostKeyError
from .hostkeys import KnownHosts, VerifyNewHostKey, fingerprint
from .sshroute import Hop, Route

logger = logging.getLogger(__name__)
Sock: TypeAlias = socket.socket | paramiko.Channel | paramiko.ProxyCommand  # what a hop's login runs over


@frozen
class Login:
    """The settings every hop's login shares."""

    known: KnownHosts
    timeout: float
    keepalive_interval: float
    dead_after: float  # seconds without an answer (a keepalive's reply, a TCP acknowledgement) before giving up


def open_socket(host: str, port: int, timeout: float, dead_after: float) -> socket.socket:
    """A TCP connection to ``host:port`` that the kernel drops when data it sent stays unacknowledged for
    ``dead_after`` s.

    With keepalives sent after every ``keepalive_interval`` of silence there
    is always such data when the peer is gone, so a silent partition breaks
    the connection (and every command on it) within interval + ``dead_after``.
    ``TCP_USER_TIMEOUT`` is Linux's; elsewhere TCP's own retransmission
    limit applies.
    """
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, max(1, int(dead_after * 1000)))
    return sock


def changed_key_error(label: str, known: KnownHosts, name: str, exc: paramiko.BadHostKeyException,
                      what: str = "the host") -> HostKeyError:
    """The refusal of a host (``what``: which one, for a jump host) whose key differs from the pinned one."""
    return HostKeyError(
        label,
        f"HOST KEY CHANGED: {known.path} pins {fingerprint(exc.expected_key)} for {name}, but {what} now presents "
        f"{fingerprint(exc.key)}. Nothing was run on it. If it was rebuilt on purpose, forget the old key with "
        f"`{known.removal_hint(name)}` and retry; otherwise someone may be intercepting the connection.",
    )


def open_route(route: Route, label: str, login: Login,
               vouched: Callable[[], Sequence[str] | None]) -> tuple[paramiko.SSHClient, list[paramiko.SSHClient]]:
    """Log in to every hop of ``route`` in turn; return the host's client and the jump hosts' (to close with it).

    ``vouched`` gives the host keys the provider reports for the host (asked
    only when its key is not pinned).  Raises what paramiko raises; for the
    host itself a changed key is paramiko's ``BadHostKeyException`` (the
    caller may re-pin a vouched key), for a jump host :class:`HostKeyError`.
    On failure everything opened is closed.
    """
    opened: list[paramiko.SSHClient] = []
    first = route.hops[0]
    sock: Sock
    if route.proxy_command:
        sock = paramiko.ProxyCommand(shlex.join(["/bin/sh", "-c", f"exec {route.proxy_command}"]))
    else:
        sock = open_socket(first.host, first.port, login.timeout, login.dead_after)
    try:
        for hop, following in zip(route.hops, route.hops[1:]):
            jump_label = f"{label} (jump host {hop.label})"
            try:
                opened.append(_login(hop, sock, jump_label, login, lambda: None))
            except paramiko.BadHostKeyException as exc:
                raise changed_key_error(jump_label, login.known, hop.known_hosts_name, exc, "the jump host") from exc
            transport = opened[-1].get_transport()
            assert transport is not None  # the client has just logged in
            sock = transport.open_channel(
                "direct-tcpip", (following.host, following.port), ("127.0.0.1", 0), timeout=login.timeout
            )
        return _login(route.target, sock, label, login, vouched), opened
    except BaseException:
        sock.close()
        for client in opened:
            client.close()
        raise


def _login(hop: Hop, sock: Sock, label: str, login: Login,
           vouched: Callable[[], Sequence[str] | None]) -> paramiko.SSHClient:
    """A client logged in to ``hop`` over ``sock`` (a socket or channel), its host key verified; closed on failure."""
    client = paramiko.SSHClient()
    try:
        login.known.load_into(client, label)
        client.set_missing_host_key_policy(VerifyNewHostKey(login.known, label, vouched))
        client.connect(
            hop.host,
            port=hop.port,
            username=hop.user,
            key_filename=[str(path) for path in hop.identities] or None,  # type: ignore[arg-type]  # a list is allowed
            sock=sock,
            timeout=login.timeout,
            banner_timeout=login.timeout,
            auth_timeout=login.timeout,
            allow_agent=True,
            look_for_keys=False,
        )
        transport = client.get_transport()
        assert transport is not None  # connect() has just opened it
        start_watchdog(transport, login.keepalive_interval, login.dead_after)
    except BaseException:
        client.close()
        raise
    return client


def start_watchdog(transport: paramiko.Transport, interval: float, dead_after: float) -> None:
    """Every ``interval`` seconds, send a keepalive that asks for a reply (``keepalive@openssh.com``, want_reply,
    as OpenSSH's ``ServerAliveInterval``); close ``transport`` when one goes unanswered for ``dead_after`` s.

    A peer that falls silent is thus dropped within ``interval`` + ``dead_after``
    on every route: through a ProxyCommand's pipe or a jump host's channel,
    where the kernel's TCP timeout cannot see the far end, as on a direct
    socket.  Commands on a closed transport fail at once ("connection lost").
    paramiko's own keepalive asks for no reply, so it cannot tell.
    """
    def ask(replied: threading.Event) -> None:
        try:
            transport.global_request("keepalive@openssh.com", wait=True)  # OpenSSH answers (a failure is an answer)
        except Exception:  # noqa: BLE001 - a transport closing meanwhile: the loop sees it
            return
        replied.set()

    def watch() -> None:
        while transport.is_active():
            time.sleep(interval)
            replied = threading.Event()
            threading.Thread(target=ask, args=(replied,), daemon=True, name="flambe ssh keepalive").start()
            if not replied.wait(dead_after) and transport.is_active():
                logger.info("no answer to a keepalive for %.0f s: closing the connection", dead_after)
                transport.close()
                return

    threading.Thread(target=watch, daemon=True, name="flambe ssh watchdog").start()


def stop_remote(channel: paramiko.Channel) -> None:
    """Ask sshd to end the command of ``channel`` on the host: a ``signal`` channel request (RFC 4254, 6.9)
    for SIGTERM, which OpenSSH (7.8 and later) sends to the session's whole process group.

    Without it a command outlives its closed channel (sshd gives a session
    without a terminal no SIGHUP): an interrupted or timed-out setup command
    would go on running.  Processes that left the session's group on purpose
    (daemons such as Ray's nodes) are not touched.  Best effort: a broken
    connection cannot carry it.
    """
    transport = channel.get_transport()
    if channel.closed or transport is None or not transport.is_active():
        return
    message = paramiko.Message()
    message.add_byte(paramiko.common.cMSG_CHANNEL_REQUEST)
    message.add_int(channel.remote_chanid)
    message.add_string("signal")
    message.add_boolean(False)
    message.add_string("TERM")
    with contextlib.suppress(paramiko.SSHException, OSError, EOFError):
        transport._send_user_message(message)  # type: ignore[attr-defined]  # paramiko's own, absent from its stubs
