"""Talking to hosts: one persistent, verified SSH connection per host.

:class:`SSHPool` opens one paramiko connection per host (TCP_NODELAY set,
handshakes bounded because they are CPU-bound, retried until a deadline for
hosts still booting) and runs every command on it in a fresh channel, with a
timeout, stdout and stderr read together (large outputs never deadlock) and
the exit status checked.  Host keys are verified against the cluster's own
known_hosts file: ``accept-new`` pins a host's key on first contact and
refuses a changed one, ``strict`` refuses unknown hosts too.  Callers quote
every value they put into a command with :func:`shlex.quote`
(:func:`shell_join` for argv lists).
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import os
import select
import shlex
import socket
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

import paramiko
from attrs import define, field, frozen

from .errors import FlambeClusterError, HostError, HostKeyError, HostsFailedError, HostUnreachableError, RemoteCommandError
from .records import Endpoint, Instance

STDERR_TAIL_LINES = 20
COMMAND_SHOWN = 300  # characters of a failed command shown in its error (long scripts are cut)
MAX_CONCURRENT_HANDSHAKES = 8
MAX_CHANNELS_PER_CONNECTION = 8  # sshd's default MaxSessions is 10
T = TypeVar("T")


def shell_join(argv: Sequence[str]) -> str:
    """A shell command line running ``argv`` exactly, every item quoted."""
    return " ".join(shlex.quote(str(item)) for item in argv)


def fingerprint(key: paramiko.PKey) -> str:
    """The OpenSSH-style SHA256 fingerprint of a public key."""
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def key_line(key: paramiko.PKey) -> str:
    """``"<type> <base64>"``: the key as OpenSSH writes it in known_hosts and authorized_keys."""
    return f"{key.get_name()} {key.get_base64()}"


@frozen
class CommandResult:
    """The outcome of one command on one host.

    ``exit_code`` is ``None`` when the command timed out (it was then
    abandoned and its channel closed).
    """

    host: str
    command: str
    exit_code: int | None
    stdout_bytes: bytes = field(repr=False)
    stderr_bytes: bytes = field(repr=False)
    timeout: float | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", errors="replace")

    def stderr_tail(self, lines: int = STDERR_TAIL_LINES) -> str:
        return "\n".join(self.stderr.rstrip().splitlines()[-lines:])

    def describe_failure(self) -> str:
        """One block naming host, command, exit code (or timeout) and the tail of stderr."""
        status = f"timed out after {self.timeout:g} s" if self.exit_code is None else f"exited with code {self.exit_code}"
        command = self.command if len(self.command) <= COMMAND_SHOWN else self.command[:COMMAND_SHOWN] + "…"
        text = f"{self.host}: command {command!r} {status}"
        tail = self.stderr_tail()
        if tail:
            text += "; stderr ends with:\n" + "\n".join(f"      | {line}" for line in tail.splitlines())
        else:
            text += " (no stderr output)"
        return text

    def check(self) -> "CommandResult":
        """Return self if the command succeeded, else raise :class:`RemoteCommandError`."""
        if not self.ok:
            raise RemoteCommandError([self])
        return self


class _KnownHosts:
    """The cluster's known_hosts file, shared by every connection of a pool."""

    def __init__(self, path: Path, policy: str) -> None:
        self.path = path
        self.policy = policy
        self._lock = threading.Lock()

    def load_into(self, client: paramiko.SSHClient) -> None:
        with self._lock:
            if self.path.exists():
                client.load_host_keys(str(self.path))

    def pin(self, name: str, key: paramiko.PKey) -> None:
        """Append ``name key`` to the file (mode 0600)."""
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", opener=lambda p, f: os.open(p, f, 0o600)) as handle:
                handle.write(f"{name} {key_line(key)}\n")

    def removal_hint(self, name: str) -> str:
        return f"ssh-keygen -R {shlex.quote(name)} -f {shlex.quote(str(self.path))}"


class _VerifyNewHostKey(paramiko.MissingHostKeyPolicy):
    """Decides about a host whose name is not in known_hosts yet.

    ``strict`` refuses it; ``accept-new`` pins its key — unless the provider
    vouched for other keys, which wins over the policy.
    """

    def __init__(self, known: _KnownHosts, label: str, vouched: Callable[[], Sequence[str] | None]) -> None:
        self.known = known
        self.label = label
        self.vouched = vouched  # asked only here, for hosts not pinned yet

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        vouched = self.vouched()
        if vouched is not None:
            if key_line(key) not in {" ".join(v.split()[:2]) for v in vouched}:
                raise HostKeyError(
                    self.label,
                    f"the host presented key {fingerprint(key)}, which is not one of the host keys the provider "
                    "reports for this instance. Nothing was run on it. The instance may have been replaced, or "
                    "the connection intercepted; check the instance before retrying.",
                )
        elif self.known.policy == "strict":
            raise HostKeyError(
                self.label,
                f"unknown host key {fingerprint(key)} and host_key_policy is 'strict'. Nothing was run on it. "
                f"Verify the fingerprint, then add the host's key to {self.known.path} "
                "(or set host_key_policy: accept-new to pin it on first contact).",
            )
        self.known.pin(hostname, key)
        client.get_host_keys().add(hostname, key.get_name(), key)


@define
class Connection:
    """One open SSH connection to one host; commands run in fresh channels on it."""

    instance: Instance
    client: paramiko.SSHClient
    command_timeout: float
    _channels: threading.BoundedSemaphore = field(
        init=False, factory=lambda: threading.BoundedSemaphore(MAX_CHANNELS_PER_CONNECTION)
    )

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
    ) -> CommandResult:
        """Run a shell command line, read stdout and stderr to the end, return the result.

        With ``on_stdout``, stdout is handed to it chunk by chunk as it
        arrives (for following logs) instead of being kept in the result.

        Never raises for a non-zero exit (see :meth:`CommandResult.check`);
        on timeout the channel is closed and ``exit_code`` is ``None``.
        Raises :class:`HostError` if the connection itself is broken.  At most
        ``MAX_CHANNELS_PER_CONNECTION`` commands run at once per host; more wait.
        """
        timeout = self.command_timeout if timeout is None else timeout
        with self._channels:
            return self._run(command, timeout, stdin, on_stdout)

    def _run(
        self, command: str, timeout: float, stdin: bytes | None, on_stdout: Callable[[bytes], None] | None
    ) -> CommandResult:
        deadline = time.monotonic() + timeout
        try:
            channel = self.client.get_transport().open_session(timeout=min(timeout, 30))
        except (paramiko.SSHException, OSError, AttributeError) as exc:
            raise HostError(self.instance.label, f"the SSH connection is broken ({exc}); retry the command") from exc
        out, err = bytearray(), bytearray()
        with channel:
            try:
                channel.exec_command(command)
                if stdin:
                    channel.sendall(stdin)
                channel.shutdown_write()
            except (paramiko.SSHException, OSError) as exc:
                raise HostError(self.instance.label, f"the SSH connection broke ({exc}); retry the command") from exc
            wakeup = channel.fileno()
            while True:
                while channel.recv_ready():
                    chunk = channel.recv(1 << 20)
                    if on_stdout is None:
                        out += chunk
                    else:
                        on_stdout(chunk)
                while channel.recv_stderr_ready():
                    err += channel.recv_stderr(1 << 20)
                if channel.eof_received and not channel.recv_ready() and not channel.recv_stderr_ready():
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return CommandResult(self.instance.label, command, None, bytes(out), bytes(err), timeout)
                select.select([wakeup], [], [], min(remaining, 5.0))
            if not channel.status_event.wait(max(0.0, deadline - time.monotonic())):
                return CommandResult(self.instance.label, command, None, bytes(out), bytes(err), timeout)
            return CommandResult(self.instance.label, command, channel.recv_exit_status(), bytes(out), bytes(err), timeout)

    def close(self) -> None:
        self.client.close()


def _open_socket(endpoint: Endpoint, timeout: float) -> socket.socket:
    sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


@define
class SSHPool:
    """Persistent, verified SSH connections to a cluster's hosts.

    Connections open lazily (or all at once with :meth:`connect_all`) and
    stay open until :meth:`close`.  Thread-safe.
    """

    username: str
    key_path: Path
    known_hosts: Path
    host_key_policy: str = "accept-new"
    connect_timeout: float = 60.0
    command_timeout: float = 1800.0
    vouched_keys: Callable[[Instance], Sequence[str] | None] = lambda instance: None
    _known: _KnownHosts = field(init=False)
    _connections: dict[Endpoint, Connection] = field(init=False, factory=dict)
    _locks: dict[Endpoint, threading.Lock] = field(init=False, factory=dict)
    _guard: threading.Lock = field(init=False, factory=threading.Lock)
    _handshakes: threading.BoundedSemaphore = field(
        init=False, factory=lambda: threading.BoundedSemaphore(MAX_CONCURRENT_HANDSHAKES)
    )
    _executor: concurrent.futures.ThreadPoolExecutor | None = field(init=False, default=None)
    _generation: int = field(init=False, default=0)  # bumped by close(): connects in progress give up

    def __attrs_post_init__(self) -> None:
        self._known = _KnownHosts(self.known_hosts, self.host_key_policy)

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
            self._known.load_into(client)
            client.set_missing_host_key_policy(
                _VerifyNewHostKey(self._known, instance.label, lambda: self.vouched_keys(instance))
            )
            try:
                with self._handshakes:
                    sock = _open_socket(endpoint, timeout=min(remaining, 10.0))
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
                return Connection(instance, client, self.command_timeout)
            except HostKeyError:
                client.close()
                raise
            except paramiko.BadHostKeyException as exc:
                client.close()
                name = endpoint.known_hosts_name
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
        """
        instances = list(instances)
        with self._guard:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="flambe-ssh")
            executor = self._executor
        futures = {instance: executor.submit(action, instance) for instance in instances}
        results: dict[Instance, T] = {}
        errors: list[FlambeClusterError] = []
        for instance, future in futures.items():
            try:
                results[instance] = future.result()
            except FlambeClusterError as exc:
                errors.append(exc)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                errors.append(HostError(instance.label, f"the SSH connection broke ({exc!r})"))
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
    ) -> CommandResult:
        """Run ``command`` on one host; raises :class:`RemoteCommandError` on failure if ``check``."""
        result = self.connection(instance).run(command, timeout=timeout, stdin=stdin, on_stdout=on_stdout)
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
        """Close every connection and the worker threads (idempotent; the pool reopens on next use)."""
        with self._guard:
            connections = list(self._connections.values())
            self._connections.clear()
            executor, self._executor = self._executor, None
            self._generation += 1
        if executor is not None:
            executor.shutdown(wait=False)
        for connection in connections:
            connection.close()


def _combine(errors: list[FlambeClusterError]) -> FlambeClusterError:
    if len(errors) == 1:
        return errors[0]
    if all(isinstance(e, RemoteCommandError) for e in errors):
        return RemoteCommandError([f for e in errors for f in e.failures])  # type: ignore[attr-defined]
    return HostsFailedError(errors)


def openssh_options(key_path: Path, known_hosts: Path, connect_timeout: float) -> list[str]:
    """OpenSSH client options matching the pool: same key, same pinned host keys, no prompts."""
    return [
        "-i", str(key_path),
        "-o", "IdentitiesOnly=yes",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={known_hosts}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", f"ConnectTimeout={max(1, int(connect_timeout))}",
        "-o", "LogLevel=ERROR",
    ]
