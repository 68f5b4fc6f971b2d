"""Talking to hosts: one persistent, verified SSH connection per host.

:class:`SSHPool` opens one paramiko connection per host (TCP_NODELAY set,
handshakes bounded because they are CPU-bound, retried until a deadline for
hosts still booting) and runs every command on it in a fresh channel, with a
timeout, stdout and stderr read together (large outputs never deadlock; each
is streamed to an optional callback and only its tail kept in memory) and
the exit status checked.  A connection that breaks mid-command is a
:class:`HostError` at once; keepalives bound how long a silent peer (a
partition, a host powered off) goes unnoticed.  Host keys are verified
against the cluster's own known_hosts file: ``accept-new`` pins a host's key
on first contact and refuses a changed one, ``strict`` refuses unknown hosts
too.  Callers quote every value they put into a command with
:func:`shlex.quote` (:func:`shell_join` for argv lists).
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

import paramiko
from attrs import define, field, validators

from .errors import FlambeClusterError, HostError, HostKeyError, HostsFailedError, HostUnreachableError, RemoteCommandError
from .commands import CommandResult, OutputTail, shown
from .hostkeys import KnownHosts, VerifyNewHostKey, fingerprint
from .records import Endpoint, Instance

OUTPUT_LIMIT = 32 * 2**20  # bytes of each of stdout and stderr a command's result keeps (the tail)
KEEPALIVE_INTERVAL = 15.0  # seconds of silence before a keepalive is sent
KEEPALIVE_COUNT = 3  # a peer that leaves this many intervals unanswered is dead: 45 s by default
MAX_CONCURRENT_HANDSHAKES = 8
MAX_CHANNELS_PER_CONNECTION = 8  # sshd's default MaxSessions is 10
T = TypeVar("T")
logger = logging.getLogger(__name__)


@define
class Connection:
    """One open SSH connection to one host; commands run in fresh channels on it."""

    instance: Instance
    client: paramiko.SSHClient
    command_timeout: float
    output_limit: int = OUTPUT_LIMIT
    _channels: threading.BoundedSemaphore = field(
        init=False, factory=lambda: threading.BoundedSemaphore(MAX_CHANNELS_PER_CONNECTION)
    )
    _closed_here: bool = field(init=False, default=False)  # set by close(): commands then say why they stopped

    @property
    def host_key(self) -> paramiko.PKey:
        return self.client.get_transport().get_remote_server_key()

    def is_active(self) -> bool:
        transport = self.client.get_transport()
        return transport is not None and transport.is_active()

    def run(
        self,
        command: str,
        timeout: float | None = None,
        stdin: bytes | None = None,
        on_stdout: Callable[[bytes], None] | None = None,
        on_stderr: Callable[[bytes], None] | None = None,
    ) -> CommandResult:
        """Run a shell command line, read stdout and stderr to the end, return the result.

        ``on_stdout`` and ``on_stderr`` get each chunk of their stream as it
        arrives (to print or follow it); whether or not they are given, the
        result keeps only the last ``output_limit`` bytes of each stream.

        Never raises for a non-zero exit (see :meth:`CommandResult.check`);
        on timeout the channel is closed and ``exit_code`` is ``None``.
        Raises :class:`HostError` at once, naming the host and saying
        "connection lost", if the connection breaks before the command ends
        (the host went down, keepalives went unanswered, or :meth:`close`
        was called); waiting costs no CPU.  At most
        ``MAX_CHANNELS_PER_CONNECTION`` commands run at once per host; more wait.
        """
        timeout = self.command_timeout if timeout is None else timeout
        with self._channels:
            return self._run(command, timeout, stdin, OutputTail(self.output_limit, on_stdout), OutputTail(self.output_limit, on_stderr))

    def _run(self, command: str, timeout: float, stdin: bytes | None, out: OutputTail, err: OutputTail) -> CommandResult:
        deadline = time.monotonic() + timeout
        transport = self.client.get_transport()
        try:
            channel = transport.open_session(timeout=min(timeout, 30))
        except (paramiko.SSHException, OSError, AttributeError) as exc:
            raise HostError(self.instance.label, f"the SSH connection is broken ({exc}); retry the command") from exc

        def result(exit_code: int | None) -> CommandResult:
            return CommandResult(
                self.instance.label, command, exit_code, out.data(), err.data(), timeout, out.dropped, err.dropped
            )

        with channel:
            try:
                channel.exec_command(command)
                if stdin:
                    channel.sendall(stdin)
                channel.shutdown_write()
            except (paramiko.SSHException, OSError) as exc:
                raise HostError(self.instance.label, f"the SSH connection broke ({exc}); retry the command") from exc
            wakeup = channel.fileno()  # readable when data arrives or the channel closes (then forever)
            while True:
                while channel.recv_ready():
                    out.add(channel.recv(1 << 20))
                while channel.recv_stderr_ready():
                    err.add(channel.recv_stderr(1 << 20))
                if channel.eof_received and not channel.recv_ready() and not channel.recv_stderr_ready():
                    break
                if channel.closed or not transport.is_active():  # closed without EOF: the connection died
                    raise self._lost(transport, command)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return result(None)
                select.select([wakeup], [], [], min(remaining, 5.0))
            if not channel.status_event.wait(max(0.0, deadline - time.monotonic())):
                return result(None)
            if channel.exit_status == -1 and not transport.is_active():  # closed before any exit status came
                raise self._lost(transport, command)
            return result(channel.recv_exit_status())

    def _lost(self, transport: paramiko.Transport, command: str) -> HostError:
        if self._closed_here:
            why = "the cluster's connections were closed (interrupted)"
        else:
            reason = transport.get_exception()
            why = f"the host went down or stopped answering ({reason or 'the connection was closed'})"
        return HostError(self.instance.label, f"connection lost while running {shown(command)!r}: {why}")

    def close(self) -> None:
        """Close the connection; commands running on it end at once with :class:`HostError`."""
        self._closed_here = True
        self.client.close()


def _open_socket(endpoint: Endpoint, timeout: float, dead_after: float) -> socket.socket:
    """A TCP connection to ``endpoint`` that the kernel drops when data it sent stays unacknowledged for ``dead_after`` s.

    With keepalives sent after every ``keepalive_interval`` of silence there
    is always such data when the peer is gone, so a silent partition breaks
    the connection (and every command on it) within interval + ``dead_after``.
    ``TCP_USER_TIMEOUT`` is Linux's; elsewhere TCP's own retransmission
    limit applies.
    """
    sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if hasattr(socket, "TCP_USER_TIMEOUT"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, max(1, int(dead_after * 1000)))
    return sock


@define
class SSHPool:
    """Persistent, verified SSH connections to a cluster's hosts.

    Connections open lazily (or all at once with :meth:`connect_all`) and
    stay open until :meth:`close`.  Thread-safe.

    A keepalive is sent after ``keepalive_interval`` seconds without
    traffic; a peer that stops answering (partitioned, powered off) is
    dropped within ``keepalive_interval`` × ``keepalive_count`` seconds
    (``keepalive_count`` ≥ 2), and commands on it raise :class:`HostError`.
    Each command's result keeps the last ``output_limit`` bytes of its
    stdout and of its stderr.
    """

    username: str
    key_path: Path
    known_hosts: Path
    host_key_policy: str = "accept-new"
    connect_timeout: float = 60.0
    command_timeout: float = 1800.0
    vouched_keys: Callable[[Instance], Sequence[str] | None] = lambda instance: None
    keepalive_interval: float = field(default=KEEPALIVE_INTERVAL, validator=validators.gt(0))
    keepalive_count: int = field(default=KEEPALIVE_COUNT, validator=validators.ge(2))
    output_limit: int = field(default=OUTPUT_LIMIT, validator=validators.gt(0))
    _known: KnownHosts = field(init=False)
    _connections: dict[Endpoint, Connection] = field(init=False, factory=dict)
    _locks: dict[Endpoint, threading.Lock] = field(init=False, factory=dict)
    _guard: threading.Lock = field(init=False, factory=threading.Lock)
    _handshakes: threading.BoundedSemaphore = field(
        init=False, factory=lambda: threading.BoundedSemaphore(MAX_CONCURRENT_HANDSHAKES)
    )
    _generation: int = field(init=False, default=0)  # bumped by close(): connects in progress give up

    def __attrs_post_init__(self) -> None:
        self._known = KnownHosts(self.known_hosts, self.host_key_policy)

    def connection(self, instance: Instance, deadline: float | None = None) -> Connection:
        """The open connection to ``instance``, connecting first if needed.

        Retries refused, timed-out or not-yet-authorised logins until
        ``deadline`` (monotonic; default now + ``connect_timeout``), then
        raises :class:`HostUnreachableError` naming the host and the last
        error.  A host key that changed, or is unknown under ``strict``,
        raises :class:`HostKeyError` at once.
        """
        endpoint = instance.endpoint
        with self._guard:
            lock = self._locks.setdefault(endpoint, threading.Lock())
        with lock:
            existing = self._connections.get(endpoint)
            if existing is not None and existing.is_active():
                return existing
            generation = self._generation
            connection = self._connect(instance, deadline or time.monotonic() + self.connect_timeout)
            if generation != self._generation:  # the pool was closed meanwhile: do not keep it open
                connection.close()
                raise HostUnreachableError(instance.label, "gave up connecting: the cluster's connections were closed")
            self._connections[endpoint] = connection
            return connection

    def _connect(self, instance: Instance, deadline: float) -> Connection:
        endpoint = instance.endpoint
        last_error = "no attempt made"
        delay = 0.2
        generation = self._generation
        while True:
            if self._generation != generation:
                raise HostUnreachableError(instance.label, "gave up connecting: the cluster's connections were closed")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise HostUnreachableError(
                    instance.label,
                    f"no SSH login as {self.username!r} within {self.connect_timeout:g} s (last error: {last_error}). "
                    "Check that the host is up, reachable from here, and accepts the cluster's key.",
                )
            client = paramiko.SSHClient()
            self._known.load_into(client, instance.label)
            client.set_missing_host_key_policy(
                VerifyNewHostKey(self._known, instance.label, lambda: self.vouched_keys(instance))
            )
            try:
                with self._handshakes:
                    dead_after = self.keepalive_interval * (self.keepalive_count - 1)
                    sock = _open_socket(endpoint, timeout=min(remaining, 10.0), dead_after=dead_after)
                    client.connect(
                        endpoint.host,
                        port=endpoint.port,
                        username=self.username,
                        key_filename=str(self.key_path),
                        sock=sock,
                        timeout=min(remaining, 10.0),
                        banner_timeout=min(remaining, 10.0),
                        auth_timeout=min(remaining, 10.0),
                        allow_agent=False,
                        look_for_keys=False,
                    )
                client.get_transport().set_keepalive(self.keepalive_interval)
                return Connection(instance, client, self.command_timeout, self.output_limit)
            except HostKeyError:
                client.close()
                raise
            except paramiko.BadHostKeyException as exc:
                client.close()
                name = endpoint.known_hosts_name
                if self._known.replace_vouched(name, exc.key, self.vouched_keys(instance)):
                    logger.warning("%s: host key changed from %s to %s, which the provider vouches for (the instance "
                                   "was replaced at the same address); pinned the new key in %s", instance.label,
                                   fingerprint(exc.expected_key), fingerprint(exc.key), self.known_hosts)
                    continue
                raise HostKeyError(
                    instance.label,
                    f"HOST KEY CHANGED: {self.known_hosts} pins {fingerprint(exc.expected_key)}, but the host now "
                    f"presents {fingerprint(exc.key)}. Nothing was run on it. If the host was rebuilt on purpose, "
                    f"forget the old key with `{self._known.removal_hint(name)}` and retry; otherwise someone may "
                    "be intercepting the connection.",
                ) from exc
            except paramiko.AuthenticationException as exc:
                client.close()
                last_error = f"authentication failed with key {self.key_path} ({exc})"
            except (OSError, paramiko.SSHException, EOFError) as exc:
                client.close()
                last_error = str(exc) or type(exc).__name__
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 2.0)

    def map(self, instances: Iterable[Instance], action: Callable[[Instance], T]) -> dict[Instance, T]:
        """Run ``action(instance)`` for all instances at once; return results in order.

        Every failure is collected: one failing host raises its own error;
        several raise :class:`HostsFailedError` (or one
        :class:`RemoteCommandError` when all are command failures).

        Each action runs in a daemon thread of its own: an interrupt
        (KeyboardInterrupt) of the calling thread leaves ``map`` at once
        without waiting for them, and they never keep the interpreter alive
        at exit.  :meth:`close` ends the commands they are running.
        """
        instances = list(instances)
        outcomes: dict[Instance, tuple[T | None, BaseException | None]] = {}

        def work(instance: Instance) -> None:
            try:
                outcomes[instance] = (action(instance), None)
            except BaseException as exc:  # handed to the calling thread below
                outcomes[instance] = (None, exc)

        threads = [threading.Thread(target=work, args=(i,), name=f"flambe-ssh {i.name}", daemon=True) for i in instances]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        results: dict[Instance, T] = {}
        errors: list[FlambeClusterError] = []
        for instance in instances:
            value, error = outcomes[instance]
            if error is None:
                results[instance] = value  # type: ignore[assignment]
            elif isinstance(error, FlambeClusterError):
                errors.append(error)
            elif isinstance(error, (paramiko.SSHException, OSError, EOFError)):
                errors.append(HostError(instance.label, f"the SSH connection broke ({error!r})"))
            else:
                raise error
        if errors:
            raise _combine(errors)
        return results

    def connect_all(self, instances: Iterable[Instance]) -> None:
        """Open connections to all instances at once, with one shared deadline."""
        deadline = time.monotonic() + self.connect_timeout
        self.map(instances, lambda instance: self.connection(instance, deadline))

    def run(
        self,
        instance: Instance,
        command: str,
        *,
        timeout: float | None = None,
        check: bool = True,
        stdin: bytes | None = None,
        on_stdout: Callable[[bytes], None] | None = None,
        on_stderr: Callable[[bytes], None] | None = None,
    ) -> CommandResult:
        """Run ``command`` on one host (see :meth:`Connection.run`); raises :class:`RemoteCommandError` on failure if ``check``."""
        result = self.connection(instance).run(
            command, timeout=timeout, stdin=stdin, on_stdout=on_stdout, on_stderr=on_stderr
        )
        return result.check() if check else result

    def run_all(
        self,
        instances: Iterable[Instance],
        command: str | Callable[[Instance], str],
        *,
        timeout: float | None = None,
        check: bool = True,
    ) -> dict[Instance, CommandResult]:
        """Run a command on every host at once (``command`` may depend on the host).

        With ``check``, raises one :class:`RemoteCommandError` listing every
        failing host after all have finished.
        """
        make = command if callable(command) else (lambda _instance: command)
        results = self.map(instances, lambda instance: self.run(instance, make(instance), timeout=timeout, check=False))
        failures = [result for result in results.values() if not result.ok]
        if check and failures:
            raise RemoteCommandError(failures)
        return results

    def host_key(self, instance: Instance) -> paramiko.PKey:
        """The key the host presented (connecting first if needed)."""
        return self.connection(instance).host_key

    def close(self) -> None:
        """Close every connection (idempotent; the pool reopens on next use).

        Commands in flight end at once with :class:`HostError` and connects
        in progress give up, so threads of :meth:`map` finish promptly.
        """
        with self._guard:
            connections = list(self._connections.values())
            self._connections.clear()
            self._generation += 1
        for connection in connections:
            connection.close()


def _combine(errors: list[FlambeClusterError]) -> FlambeClusterError:
    if len(errors) == 1:
        return errors[0]
    if all(isinstance(e, RemoteCommandError) for e in errors):
        return RemoteCommandError([f for e in errors for f in e.failures])  # type: ignore[attr-defined]
    return HostsFailedError(errors)


def openssh_options(
    key_path: Path,
    known_hosts: Path,
    connect_timeout: float,
    keepalive_interval: float = KEEPALIVE_INTERVAL,
    keepalive_count: int = KEEPALIVE_COUNT,
) -> list[str]:
    """OpenSSH client options matching the pool: same key, same pinned host keys, same keepalives, no prompts."""
    return [
        "-i", str(key_path),
        "-o", "IdentitiesOnly=yes",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", f"ConnectTimeout={max(1, int(connect_timeout))}",
        "-o", f"ServerAliveInterval={max(1, int(keepalive_interval))}",
        "-o", f"ServerAliveCountMax={keepalive_count}",
        "-o", "LogLevel=ERROR",
    ]
