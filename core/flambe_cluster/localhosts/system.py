"""Commands and processes of this machine, as the local hosts use them.

Contract: :func:`run` raises :class:`~flambe_cluster.errors.LocalHostsError`
with a one-line message (the command, its exit status, its last words) when a
command fails; the process helpers only read ``/proc`` and never signal
anything; :func:`wait_for_sshd` returns once an ``sshd`` that this process
started answers with an SSH banner, or raises LocalHostsError (one line)
saying why not.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

from ..errors import LocalHostsError

#: The OpenSSH server binary the hosts run (absolute: sshd re-executes itself);
#: read when a host starts.
SSHD = "/usr/sbin/sshd"
#: How long :func:`wait_for_sshd` waits for the SSH banner.
START_DEADLINE_S = 10.0


def one_line(text: str) -> str:
    """``text`` with its lines joined by `` | `` (empty lines dropped)."""
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())


def run(argv: list[str], *, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run a command, capturing text output; when ``check`` and it fails, raise
    LocalHostsError naming the command, its exit status and its stderr."""
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise LocalHostsError(f"cannot run {' '.join(argv)}: {exc}") from exc
    if check and proc.returncode != 0:
        raise LocalHostsError(
            f"{' '.join(argv)} failed (exit {proc.returncode}): {one_line(proc.stderr or proc.stdout) or 'no output'}"
        )
    return proc


def key_list(keys: Iterable[str]) -> list[str]:
    """``keys`` as a list: the converter of the hosts' ``authorized_keys`` (typed, unlike ``list`` itself)."""
    return list(keys)


def generate_host_key(path: Path, comment: str) -> None:
    """A fresh ed25519 host key without passphrase at ``path`` (``.pub`` beside it), mode 0600."""
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    os.chmod(path, 0o600)


def host_key_line(path: Path) -> str:
    """``'ssh-ed25519 AAAA...'``: key type and blob of the public key beside the private key ``path``."""
    return " ".join(path.with_name(path.name + ".pub").read_text().split()[:2])


def read_banner(address: str, port: int, timeout: float) -> bytes:
    """The first line an SSH server sends (b"" if it closes at once)."""
    with socket.create_connection((address, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        data = b""
        while b"\n" not in data and len(data) < 256:
            chunk = sock.recv(256)
            if not chunk:
                break
            data += chunk
        if data.startswith(b"SSH-"):
            with contextlib.suppress(OSError):
                sock.sendall(b"SSH-2.0-flambe-cluster-probe\r\n")
        return data


def read_banner_in(netns: str, address: str, port: int, timeout: float) -> bytes:
    """The first bytes an SSH server sends, read from inside the network namespace ``netns`` (bash's ``/dev/tcp``)."""
    script = 'exec 3<>"/dev/tcp/$0/$1" && head -c 4 <&3'
    argv = ["ip", "netns", "exec", netns, "timeout", f"{timeout:g}", "bash", "-c", script, address, str(port)]
    done = subprocess.run(argv, capture_output=True, timeout=timeout + 5, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise OSError(f"no banner from {address}:{port} in {netns}: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def process_is(pid: int, comm: str) -> bool:
    """Whether ``pid`` is a live (not zombie) process named ``comm``; reaps it if it is our dead child."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    name, state = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:][:1]
    return name == comm and state not in ("Z", "X")


def parent_pid(pid: int) -> int | None:
    """The parent of ``pid``; None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the comm field may contain spaces and parentheses: split after the last ')'
    return int(stat[stat.rindex(")") + 2:].split()[1])


def children(pid: int) -> list[int]:
    """The child processes of ``pid``."""
    try:
        return [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        pass
    return [int(entry.name) for entry in os.scandir("/proc")  # fallback: scan /proc for the parent pid
            if entry.name.isdigit() and parent_pid(int(entry.name)) == pid]


def last_line(path: Path) -> str:
    """The last non-empty line of a log file, or why there is none."""
    try:
        lines = [line.strip() for line in path.read_bytes()[-4000:].decode(errors="replace").splitlines()]
    except OSError as exc:
        return f"cannot read it: {exc.strerror}"
    return next((line for line in reversed(lines) if line), "empty")


def wait_for_sshd(process: subprocess.Popen[bytes], address: str, port: int, what: str, log_path: Path,
                  netns: str | None = None) -> None:
    """Return once ``address:port`` sends an SSH banner (read from inside the network
    namespace ``netns`` when given); raise LocalHostsError when ``process`` exits
    first or no banner comes within :data:`START_DEADLINE_S`."""
    deadline = time.monotonic() + START_DEADLINE_S
    last_error = "no attempt"
    while True:
        rc = process.poll()
        if rc is not None:
            raise LocalHostsError(f"{what}: sshd exited with status {rc} before accepting connections; "
                                  f"last line of {log_path}: {last_line(log_path)}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LocalHostsError(f"{what}: no SSH banner from {address}:{port} within {START_DEADLINE_S:g} s "
                                  f"(last: {last_error}); last line of {log_path}: {last_line(log_path)}")
        try:
            if netns is None:
                banner = read_banner(address, port, min(1.0, remaining))
            else:
                banner = read_banner_in(netns, address, port, min(1.0, remaining))
            if banner.startswith(b"SSH-"):
                return
            last_error = f"unexpected banner {banner[:60]!r}"
        except OSError as exc:
            last_error = repr(exc)
        time.sleep(0.05)
