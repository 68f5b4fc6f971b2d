"""Errors raised by flambe-cluster.

Every error says what went wrong, where (which host, field or provider) and
what to do next.  The command line maps them to exit codes:
:class:`UsageError` subclasses exit 2 (bad configuration or usage), every
other :class:`FlambeClusterError` exits 1 (something failed on a host or in a
cloud).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence


class FlambeClusterError(Exception):
    """Base class of every error flambe-cluster raises on purpose."""


class UsageError(FlambeClusterError):
    """The user asked for something that cannot work as written (exit code 2)."""


class ClusterConfigurationError(UsageError):
    """The cluster description has one or more problems.

    ``problems`` holds every problem found, each naming the field, what was
    expected and what was given, so a user fixes them all in one edit.
    Built as Flambé builds it, from one message string, it is that message.
    """

    def __init__(self, problems: str | Sequence[str], source: str | None = None) -> None:
        if isinstance(problems, str):  # Flambé's form: one message, shown as given
            self.problems, self.source = [problems], source
            super().__init__(problems)
            return
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} with the cluster configuration{where}:"
        super().__init__("\n".join([head, *(f"  - {p}" for p in self.problems)]))


class ProviderError(UsageError):
    """A provider cannot be selected or does not honour the provider contract."""


class ClusterBusyError(UsageError):
    """Another flambe-cluster process holds this cluster's lock."""


class ClusterError(FlambeClusterError):
    """The cluster is not in a state where the operation can run."""


class RayHeadSlowError(ClusterError):
    """The Ray head listens but does not answer in time: busy or paused, not gone.  Never a reason to restart it."""


class HostError(FlambeClusterError):
    """Something went wrong with one host; ``host`` names it."""

    def __init__(self, host: str, message: str) -> None:
        self.host = host
        super().__init__(f"{host}: {message}")


class LocalHostsError(FlambeClusterError, RuntimeError):
    """Machine-local hosts (:mod:`flambe_cluster.localhosts`) could not be made,
    started or removed: a command such as ``ip`` failed, a subnet is taken, an
    ``sshd`` did not come up.  Also a RuntimeError, as these failures were
    before the hosts became part of the production package."""


class SSHConnectingError(FlambeClusterError):
    """Opening an SSH connection failed (the seed's ``flambe.cluster.instance.errors.SSHConnectingError``)."""


class MissingAuthError(UsageError):
    """Authentication information is missing (the seed's ``MissingAuthError``): no key, no agent."""


class RemoteFileTransferError(FlambeClusterError):
    """Sending files to or from a host failed (the seed's ``RemoteFileTransferError``)."""


class HostUnreachableError(HostError, SSHConnectingError):
    """The host did not accept an SSH login before the deadline (an :class:`SSHConnectingError`)."""


class ConnectionLostError(HostError):
    """The connection to a host broke while a command ran on it (the host went down, stopped answering
    keepalives, or the cluster's connections were closed); the message says "connection lost"."""


class HostKeyError(HostError):
    """The host's key could not be verified (changed, or unknown under ``strict``)."""


class RemoteCommandError(FlambeClusterError):
    """A command failed (non-zero exit or timeout) on one or more hosts.

    ``failures`` holds one :class:`~flambe_cluster.commands.CommandResult` per
    failing host, each with host, command, exit code and output.  Built as
    Flambé builds it, from a message string, it holds that message and no
    failures.
    """

    def __init__(self, failures: str | Iterable[object]) -> None:
        if isinstance(failures, str):  # Flambé's form: one message, shown as given
            self.failures = []
            super().__init__(failures)
            return
        self.failures = list(failures)
        lines = []
        for result in self.failures:
            lines.append(result.describe_failure())  # type: ignore[attr-defined]
        head = (
            "a remote command failed"
            if len(lines) == 1
            else f"a remote command failed on {len(lines)} hosts"
        )
        super().__init__("\n".join([head + ":", *lines]))


class HostsFailedError(FlambeClusterError):
    """Several hosts failed for different reasons; ``errors`` holds each."""

    def __init__(self, errors: Sequence[FlambeClusterError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))
