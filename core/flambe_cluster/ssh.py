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

import contextlib
import logging
import os
import select
import shlex
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import paramiko
from attrs import define, field, validators

from .commands import CommandResult, OutputTail, shown
from .errors import (
    ConnectionLostError,
    FlambeClusterError,
    HostError,
    HostKeyError,
    HostsFailedError,
    HostUnreachableError,
    RemoteCommandError,
    UsageError,
)
from .hostkeys import KnownHosts, fingerprint
from .records import Endpoint, Instance
from .sshconnect import Login, changed_key_error, open_route, stop_remote
from .sshroute import Resolver, Route

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
    jumps: Sequence[paramiko.SSHClient] = ()  # the jump hosts' connections it goes through, closed with it
    _channels: threading.BoundedSemaphore = field(
        init=False, factory=lambda: threading.BoundedSemaphore(MAX_CHANNELS_PER_CONNECTION)
    )
    _closed_here: bool = field(init=False, default=False)  # set by close(): commands then say why they stopped
    _running: set[paramiko.Channel] = field(init=False, factory=set)  # channels whose command has not ended yet

    @property
    def host_key(self) -> paramiko.PKey:
        transport = self.client.get_transport()
        assert transport is not None, "the connection is closed"  # host_key is read only of an open connection
        return transport.get_remote_server_key()

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
        keep: int | None = None,
        until: threading.Event | None = None,
    ) -> CommandResult:
        """Run a shell command line, read stdout and stderr to the end, return the result.

        ``on_stdout`` and ``on_stderr`` get each chunk of their stream as it
        arrives (to print or follow it); whether or not they are given, the
        result keeps only the last ``keep`` bytes of each stream (default
        ``output_limit``; a caller that prints the streams needs only a little).

        Never raises for a non-zero exit (see :meth:`CommandResult.check`);
        on timeout the channel is closed and ``exit_code`` is ``None``; the
        same when ``until`` is set before the command ends (within half a
        second; the command is ended on the host, see :func:`stop_remote`).
        Raises :class:`HostError` at once, naming the host and saying
        "connection lost", if the connection breaks before the command ends
        (the host went down, keepalives went unanswered, or :meth:`close`
        was called); waiting costs no CPU.  At most
        ``MAX_CHANNELS_PER_CONNECTION`` commands run at once per host; more wait.
        """
        timeout = self.command_timeout if timeout is None else timeout
        with self._channels:
            limit = self.output_limit if keep is None else keep
            return self._run(command, timeout, stdin, OutputTail(limit, on_stdout), OutputTail(limit, on_stderr), until)

    def _run(self, command: str, timeout: float, stdin: bytes | None, out: OutputTail, err: OutputTail,
             until: threading.Event | None) -> CommandResult:
        deadline = time.monotonic() + timeout
        transport = self.client.get_transport()
        try:
            if transport is None:  # close() ran: as before, a broken connection
                raise AttributeError("'NoneType' object has no attribute 'open_session'")
            channel = transport.open_session(timeout=min(timeout, 30))
        except (paramiko.SSHException, OSError, AttributeError) as exc:
            raise ConnectionLostError(self.instance.label, f"connection lost: the SSH connection is broken ({exc}); "
                                      "retry the command") from exc

        def result(exit_code: int | None) -> CommandResult:
            return CommandResult(
                self.instance.label, command, exit_code, out.data(), err.data(), timeout, out.dropped, err.dropped
            )

        with channel:
            self._running.add(channel)
            try:
                return self._wait(channel, command, deadline, stdin, out, err, result, until)
            finally:
                self._running.discard(channel)
                if channel.exit_status == -1:  # left before it ended (timeout, interrupt): end it on the host too
                    stop_remote(channel)

    def _wait(self, channel: paramiko.Channel, command: str, deadline: float, stdin: bytes | None, out: OutputTail,
              err: OutputTail, result: Callable[[int | None], CommandResult],
              until: threading.Event | None) -> CommandResult:
        transport = channel.get_transport()
        try:
            channel.exec_command(command)
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
        except (paramiko.SSHException, OSError) as exc:
            raise ConnectionLostError(self.instance.label, f"connection lost: the SSH connection broke ({exc}); "
                                      "retry the command") from exc
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
            if remaining <= 0 or (until is not None and until.is_set()):
                return result(None)
            select.select([wakeup], [], [], min(remaining, 5.0 if until is None else 0.5))
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
        return ConnectionLostError(self.instance.label, f"connection lost while running {shown(command)!r}: {why}")

    def close(self) -> None:
        """Close the connection; commands running on it end at once with :class:`HostError`, and on the host
        (see :func:`stop_remote`)."""
        self._closed_here = True
        for channel in list(self._running):
            stop_remote(channel)
        self.client.close()
        for jump in self.jumps:
            jump.close()


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

    Hosts are reached along the routes :meth:`route` resolves (see
    :mod:`flambe_cluster.sshroute`): ``key_path`` ``None`` logs in with
    ssh-agent's keys, ``ssh_config`` is the OpenSSH configuration honoured
    (``None``: none), ``proxy_jump``/``proxy_command`` as OpenSSH's options.
    """

    username: str
    key_path: Path | None
    known_hosts: Path
    ssh_config: Path | None = None
    proxy_jump: str | None = None
    proxy_command: str | None = None
    host_key_policy: str = "accept-new"
    connect_timeout: float = 60.0
    command_timeout: float = 1800.0
    vouched_keys: Callable[[Instance], Sequence[str] | None] = lambda instance: None
    keepalive_interval: float = field(default=KEEPALIVE_INTERVAL, validator=validators.gt(0))
    keepalive_count: int = field(default=KEEPALIVE_COUNT, validator=validators.ge(2))
    output_limit: int = field(default=OUTPUT_LIMIT, validator=validators.gt(0))
    _known: KnownHosts = field(init=False)
    _resolver: Resolver = field(init=False)
    _connections: dict[Endpoint, Connection] = field(init=False, factory=dict)
    _locks: dict[Endpoint, threading.Lock] = field(init=False, factory=dict)
    _guard: threading.Lock = field(init=False, factory=threading.Lock)
    _handshakes: threading.BoundedSemaphore = field(
        init=False, factory=lambda: threading.BoundedSemaphore(MAX_CONCURRENT_HANDSHAKES)
    )
    _generation: int = field(init=False, default=0)  # bumped by close(): connects in progress give up

    def __attrs_post_init__(self) -> None:
        self._known = KnownHosts(self.known_hosts, self.host_key_policy)
        self._resolver = Resolver(self.username, self.key_path, self.ssh_config, self.proxy_jump, self.proxy_command)

    @contextlib.contextmanager
    def connect_within(self, seconds: float) -> Iterator[None]:
        """For the block, connections that open are given at most ``seconds`` (never more than
        ``connect_timeout``); restored on exit, also on an error.  Probes use it: a host that does not
        answer soon is an answer."""
        saved = self.connect_timeout
        self.connect_timeout = min(saved, seconds)
        try:
            yield
        finally:
            self.connect_timeout = saved

    def route(self, instance: Instance) -> Route:
        """How ``instance`` is reached (resolved once); :class:`UsageError` for an unusable OpenSSH configuration."""
        return self._resolver.route(instance.endpoint)

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
        route = self.route(instance)
        target = route.target
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
                    f"no SSH login as {target.user!r} within {self.connect_timeout:g} s (last error: {last_error}). "
                    "Check that the host is up, reachable from here, and accepts the cluster's key.",
                )
            login = Login(self._known, min(remaining, 10.0), self.keepalive_interval,
                          self.keepalive_interval * (self.keepalive_count - 1))
            try:
                with self._handshakes:
                    client, jumps = open_route(route, instance.label, login, lambda: self.vouched_keys(instance))
                return Connection(instance, client, self.command_timeout, self.output_limit, jumps)
            except HostKeyError:
                raise
            except paramiko.BadHostKeyException as exc:
                name = target.known_hosts_name
                if self._known.replace_vouched(name, exc.key, self.vouched_keys(instance)):
                    logger.warning("%s: host key changed from %s to %s, which the provider vouches for (the instance "
                                   "was replaced at the same address); pinned the new key in %s", instance.label,
                                   fingerprint(exc.expected_key), fingerprint(exc.key), self.known_hosts)
                    continue
                raise changed_key_error(instance.label, self._known, name, exc) from exc
            except paramiko.PasswordRequiredException as exc:  # retrying cannot help: nothing may prompt
                keys = ", ".join(str(path) for hop in route.hops for path in hop.identities)
                raise HostUnreachableError(instance.label, f"a key is protected by a passphrase and no ssh-agent "
                                           f"holds it ({keys}); load it with ssh-add") from exc
            except paramiko.AuthenticationException as exc:
                keys = ", ".join(str(path) for path in target.identities) or "the keys of ssh-agent"
                last_error = f"authentication failed with {keys} ({exc})"
            except (OSError, paramiko.SSHException, EOFError) as exc:
                last_error = str(exc) or type(exc).__name__
            time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 2.0)

    def map(self, instances: Iterable[Instance], action: Callable[[Instance], T]) -> dict[Instance, T]:
        """Run ``action(instance)`` for all instances at once; return results in order.

        Every failure is collected: one failing host raises its own error;
        several raise :class:`HostsFailedError` (or one
        :class:`RemoteCommandError` when all are command failures).  A host
        whose connection is lost (:class:`ConnectionLostError`) ends the wait
        at once: its error is raised without waiting for the other hosts,
        whose actions the caller ends by closing the pool (the operation has
        failed; a lost host must not wait for the others' long commands).

        Each action runs in a daemon thread of its own: an interrupt
        (KeyboardInterrupt) of the calling thread leaves ``map`` at once
        without waiting for them, and they never keep the interpreter alive
        at exit.  :meth:`close` ends the commands they are running.
        """
        instances = list(instances)
        outcomes: dict[Instance, tuple[T | None, BaseException | None]] = {}
        finished = threading.Condition()

        def work(instance: Instance) -> None:
            try:
                outcome: tuple[T | None, BaseException | None] = (action(instance), None)
            except BaseException as exc:  # noqa: BLE001 - handed to the calling thread below
                outcome = (None, exc)
            with finished:
                outcomes[instance] = outcome
                finished.notify()

        def lost() -> ConnectionLostError | None:
            return next((e for _, e in outcomes.values() if isinstance(e, ConnectionLostError)), None)

        threads = [threading.Thread(target=work, args=(i,), name=f"flambe-ssh {i.name}", daemon=True)
                   for i in instances]
        for thread in threads:
            thread.start()
        with finished:
            while len(outcomes) < len(instances) and lost() is None:
                finished.wait(1.0)  # a timeout keeps the wait interruptible (Ctrl-C)
            error_lost = lost() if len(outcomes) < len(instances) else None
        if error_lost is not None:
            raise error_lost
        results: dict[Instance, T] = {}
        errors: list[FlambeClusterError] = []
        for instance in instances:
            value, error = outcomes[instance]
            if error is None:
                results[instance] = value  # type: ignore[assignment]
            elif isinstance(error, FlambeClusterError):
                errors.append(error)
            elif isinstance(error, (paramiko.SSHException, OSError, EOFError)):
                errors.append(ConnectionLostError(instance.label,
                                                  f"connection lost: the SSH connection broke ({error!r})"))
            else:
                raise error
        if errors:
            raise _combine(errors)
        return results

    def connect_all(self, instances: Iterable[Instance], progress: Callable[[str, str], None] | None = None) -> None:
        """Open connections to all instances at once, with one shared deadline; ``progress(name, state)``
        follows each."""
        deadline = time.monotonic() + self.connect_timeout
        report = progress or (lambda _name, _state: None)

        def connect(instance: Instance) -> None:
            report(instance.name, "connecting over SSH")
            self.connection(instance, deadline)
            report(instance.name, "connected")

        self.map(instances, connect)

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
        keep: int | None = None,
        until: threading.Event | None = None,
    ) -> CommandResult:
        """Run ``command`` on one host (see :meth:`Connection.run`); raises :class:`RemoteCommandError` on failure
        if ``check``."""
        result = self.connection(instance).run(
            command, timeout=timeout, stdin=stdin, on_stdout=on_stdout, on_stderr=on_stderr, keep=keep, until=until
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
    key_path: Path | str,
    known_hosts: Path | str,
    connect_timeout: float,
    keepalive_interval: float = KEEPALIVE_INTERVAL,
    keepalive_count: int = KEEPALIVE_COUNT,
) -> list[str]:
    """OpenSSH client options matching the pool, for a host reached directly with one key (host to host); no
    configuration file is read (``-F /dev/null``): a host's own ``~/.ssh/config`` does not change the route."""
    return ["-F", "/dev/null", *_identity_options((key_path,)),  # the host's /dev/null, not this machine's name
            *_checked_options(known_hosts, connect_timeout, keepalive_interval, keepalive_count)]


def openssh_route_options(
    route: Route,
    known_hosts: Path | str,
    connect_timeout: float,
    keepalive_interval: float = KEEPALIVE_INTERVAL,
    keepalive_count: int = KEEPALIVE_COUNT,
    config_file: Path | None = None,
) -> list[str]:
    """OpenSSH client options reaching ``route.target`` as the pool does (the caller adds ``-p``, user and host).

    The same keys (none: ssh-agent's), pinned host keys and keepalives, no
    prompts; ``-F`` the configuration the pool honoured (``None``:
    ``/dev/null``, none).  The proxy is spelled out as a ``ProxyCommand``
    (``none`` without one): through jump hosts, an ``ssh -W`` with these
    same options, nested for a chain (OpenSSH's own ``ProxyJump`` would not
    pass the pinned host keys on to the jump hosts).
    """
    checked = [
        "-F", str(config_file or os.devnull),
        *_checked_options(known_hosts, connect_timeout, keepalive_interval, keepalive_count),
    ]
    return _route_options(route, checked)


def _route_options(route: Route, checked: list[str]) -> list[str]:
    via, target = route.via, route.target
    if via is not None:
        jump = via.target
        host = f"[{target.host}]" if ":" in target.host else target.host
        proxy = shlex.join(["ssh", *_route_options(via, checked), "-p", str(jump.port), "-l", jump.user,
                            "-W", f"{host}:{target.port}", jump.host])
    else:
        proxy = route.proxy_command or "none"
    escaped = proxy if proxy == "none" else proxy.replace("%", "%%")  # OpenSSH expands %-tokens once more
    return [*_identity_options(target.identities), "-o", f"ProxyCommand={escaped}", *checked]


def _identity_options(identities: Sequence[Path | str]) -> list[str]:
    if not identities:
        return ["-o", "IdentitiesOnly=no"]  # ssh-agent's keys
    # `-i` takes its argument whole, but OpenSSH expands %-tokens in it
    return [*(word for path in identities for word in ("-i", str(path).replace("%", "%%"))),
            "-o", "IdentitiesOnly=yes"]


def _file_option(path: Path | str) -> str:
    """``path`` as the value of an OpenSSH ``-o`` file option: its %-tokens escaped (``%%``), in double quotes
    when it holds white space (a state folder such as ``~/My Clusters``: unquoted, OpenSSH reads two files).
    Raises :class:`UsageError` for a path with a double quote, which cannot be spelled there."""
    text = str(path)
    if '"' in text:
        raise UsageError(f"OpenSSH cannot be given a path with a double quote in it: {text!r}; "
                         "use a state folder (FLAMBE_CLUSTER_HOME) without one")
    text = text.replace("%", "%%")
    return f'"{text}"' if any(c.isspace() for c in text) else text


def _checked_options(known_hosts: Path | str, connect_timeout: float, keepalive_interval: float,
                     keepalive_count: int) -> list[str]:
    return [
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={_file_option(known_hosts)}",
        "-o", "ControlMaster=no",
        "-o", "ControlPath=none",  # never ride on a user's multiplexed connection, which our pins did not check
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", f"ConnectTimeout={max(1, int(connect_timeout))}",
        "-o", f"ServerAliveInterval={max(1, int(keepalive_interval))}",
        "-o", f"ServerAliveCountMax={keepalive_count}",
        "-o", "LogLevel=ERROR",
    ]
