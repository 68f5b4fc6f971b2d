"""Bulk data over rsync and OpenSSH, with the cluster's key and pinned host keys.

paramiko's SFTP is several times slower than rsync over OpenSSH, so files go
through ``rsync``.  The ``ssh`` it runs uses the same key and the same
known_hosts file as the connection pool, with ``StrictHostKeyChecking=yes``:
a host rsync talks to must already be pinned (the pool connects first).
``--protect-args`` keeps remote paths from being interpreted by the remote
shell, so any file name is passed as data.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import re
import shlex
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from .errors import FlambeClusterError, HostError, UsageError
from .records import Endpoint

RSYNC_FLAGS = ("--archive", "--protect-args", "--partial")
IO_TIMEOUT = 120  # seconds without any data before rsync gives up
#: Sending more than this many MB logs a warning.
UPLOAD_WARN_LIMIT_MB = 10

logger = logging.getLogger(__name__)


def remote_spec(username: str, endpoint: Endpoint, path: str) -> str:
    """``user@host:path`` in rsync's syntax (brackets for IPv6)."""
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    return f"{username}@{host}:{path}"


def rsync_command(
    sources: Sequence[str],
    destination: str,
    *,
    ssh_options: Sequence[str],
    port: int,
    delete: bool = False,
    io_timeout: float = IO_TIMEOUT,
    extra: Sequence[str] = (),
) -> list[str]:
    """The argv of an rsync over OpenSSH (``ssh_options`` from :func:`flambe_cluster.ssh.openssh_options`).

    ``extra`` are further rsync options, each one argument.
    """
    ssh = shlex.join(["ssh", "-p", str(port), *ssh_options])
    argv = ["rsync", *RSYNC_FLAGS, f"--timeout={max(1, int(io_timeout))}", "-e", ssh, *extra]
    if delete:
        argv.append("--delete")
    return [*argv, "--", *sources, destination]


def remote_shell_option(ssh_args: Sequence[str]) -> str:
    """rsync's ``-e`` value, as a shell word, for an rsync that a host's shell starts: ``"ssh 'ARG' ..."``.

    The host's shell expands ``$HOME`` inside the double quotes; rsync then
    splits the line at spaces, keeping each single-quoted argument whole.
    Raises ``ValueError`` for an argument holding a quote, a backslash or a
    backtick, which this quoting cannot carry.
    """
    for arg in ssh_args:
        if any(c in arg for c in "'\"\\`"):
            raise ValueError(f"cannot pass {arg!r} to a remote rsync's ssh")
    return '"ssh ' + " ".join(f"'{arg}'" for arg in ssh_args) + '"'


def rsync_to(
    host_label: str,
    sources: Sequence[Path | str],
    destination: str,
    *,
    ssh_options: Sequence[str],
    port: int,
    timeout: float,
    delete: bool = False,
    extra: Sequence[str] = (),
    on_bytes: Callable[[int], None] | None = None,
) -> None:
    """Copy local ``sources`` to ``destination`` (``user@host:path``) with rsync (``extra``: more options).

    A source given as a string ending in ``/`` sends the folder's contents
    (rsync's convention); any other source is sent as itself.  ``on_bytes``
    is called with the bytes sent so far as rsync reports them
    (``--info=progress2``), from this thread.

    Raises :class:`HostError` naming the host, rsync's exit code and the tail
    of its stderr.
    """
    check_client_rsync()
    if on_bytes is not None:
        extra = [*extra, "--info=progress2", "--no-human-readable"]
    argv = rsync_command(_source_args(sources), destination, ssh_options=ssh_options, port=port, delete=delete,
                         extra=extra)
    _run_rsync(host_label, argv, timeout, on_bytes)


#: The oldest rsync the client can use (``--info=progress2`` and ``--protect-args`` came with 3.1).
RSYNC_MIN = (3, 1)


def rsync_problem(version_text: str) -> str | None:
    """What is wrong with the rsync whose ``rsync --version`` printed ``version_text`` (None when it will do)."""
    first = version_text.strip().splitlines()[0] if version_text.strip() else ""
    found = re.search(r"rsync\s+version\s+v?((\d+)\.(\d+)\S*)", first)
    if "openrsync" in version_text or found is None:
        return f"this machine's rsync is not Samba's rsync ({first or 'no version'})"
    if (int(found.group(2)), int(found.group(3))) < RSYNC_MIN:
        return f"this machine's rsync is {found.group(1)}"
    return None


@functools.lru_cache(maxsize=1)
def check_client_rsync() -> None:
    """Raise :class:`UsageError` when this machine's rsync is older than :data:`RSYNC_MIN` (macOS ships 2.6.9 or
    openrsync), saying what to install; asked once per process."""
    try:
        text = subprocess.run(["rsync", "--version"], capture_output=True, text=True, timeout=30).stdout
    except OSError:
        text = ""
    problem = rsync_problem(text)
    if problem:
        wanted = ".".join(map(str, RSYNC_MIN))
        raise UsageError(f"{problem}; flambe-cluster needs rsync {wanted} or later on this machine: install it "
                         "(Debian/Ubuntu: apt-get install rsync; macOS: brew install rsync), then run the command "
                         "again")


def _source_args(sources: Sequence[Path | str]) -> list[str]:
    """Absolute source paths, keeping a trailing ``/`` (rsync's "the folder's contents")."""
    return [str(Path(s).absolute()) + ("/" if str(s).endswith("/") else "") for s in sources]


def shipped_bytes(sources: Sequence[Path | str], extra: Sequence[str] = ()) -> int:
    """The bytes of the regular files that :func:`rsync_to` with the same ``sources`` and ``extra`` sends.

    Asks rsync itself (``--list-only``), so filters and excludes in
    ``extra`` count exactly as in the transfer.
    """
    argv = ["rsync", "--archive", "--list-only", "--no-human-readable", *extra, "--", *_source_args(sources)]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    except FileNotFoundError as exc:
        raise FlambeClusterError("rsync is not installed on this machine; install it (apt-get install rsync)") from exc
    if done.returncode != 0:
        raise FlambeClusterError(f"rsync could not list {', '.join(map(str, sources))}: {done.stderr.strip()}")
    return sum(int(line.split()[1].replace(",", "")) for line in done.stdout.splitlines() if line.startswith("-"))


def warn_if_large(sources: Sequence[Path | str], extra: Sequence[str] = ()) -> None:
    """Log a warning when what :func:`rsync_to` would send exceeds :data:`UPLOAD_WARN_LIMIT_MB`."""
    size_mb = shipped_bytes(sources, extra) / 2**20
    if size_mb > UPLOAD_WARN_LIMIT_MB:
        logger.warning("Uploading %.1f MB to the cluster (more than %d MB); this may take a while.",
                       size_mb, UPLOAD_WARN_LIMIT_MB)


def rsync_from(
    host_label: str, source: str, destination: Path, *, ssh_options: Sequence[str], port: int, timeout: float
) -> None:
    """Copy ``source`` (``user@host:path``) to the local ``destination``; errors as :func:`rsync_to`."""
    argv = rsync_command([source], str(Path(destination).absolute()), ssh_options=ssh_options, port=port)
    _run_rsync(host_label, argv, timeout)


#: A progress line of ``--info=progress2``: the bytes sent so far come first (``  1,234,567  12%  ...``).
_PROGRESS = re.compile(rb"^\s*([\d,]+)\s+\d+%")


def _run_rsync(host_label: str, argv: list[str], timeout: float, on_bytes: Callable[[int], None] | None = None) -> None:
    """Run rsync; with ``on_bytes``, read its progress lines as they come and pass their byte counts on.

    rsync runs in a process group of its own with the ``ssh`` it starts: on a
    timeout, or when this thread is interrupted (a signal ends ``up``), the
    whole group is killed, so no ``ssh`` is left behind.  Raises
    :class:`HostError` naming the host, rsync's exit code and the tail of its
    stderr.
    """
    with tempfile.TemporaryFile() as errors:
        try:
            process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        except FileNotFoundError as exc:
            raise FlambeClusterError(
                "rsync is not installed on this machine; install it (apt-get install rsync)") from exc
        expired = threading.Event()

        def kill() -> None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)

        def expire() -> None:
            expired.set()
            kill()

        timer = threading.Timer(timeout, expire)
        timer.daemon = True
        timer.start()
        try:
            pending = b""
            assert isinstance(process.stdout, io.BufferedReader)  # a pipe, buffered (bufsize left at -1)
            while chunk := process.stdout.read1(65536):
                *lines, pending = re.split(rb"[\r\n]", pending + chunk)
                for line in lines:
                    match = _PROGRESS.match(line)
                    if match and on_bytes is not None:
                        on_bytes(int(match.group(1).replace(b",", b"")))
            code = process.wait()
        finally:
            timer.cancel()
            if process.poll() is None:  # an interrupt: rsync and its ssh stop with this command
                kill()
                process.wait()
        if expired.is_set():
            raise HostError(host_label, f"rsync did not finish within {timeout:g} s")
        if code != 0:
            errors.seek(0)
            tail = "\n".join(errors.read().decode(errors="replace").strip().splitlines()[-10:])
            raise HostError(host_label, f"rsync failed with exit code {code}: {tail}")
