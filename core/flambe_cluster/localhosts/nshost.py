"""One namespaced host: an ``sshd`` that is PID 1 of its own PID, mount and
network namespaces (see :mod:`flambe_cluster.localhosts.namespaces`).

Contract: :meth:`NamespaceHost.start` returns once the host answers with an SSH
banner, or stops what it started and raises
:class:`~flambe_cluster.errors.LocalHostsError` (one line);
:meth:`NamespaceHost.stop` signals only the processes this object started.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
from pathlib import Path

from attrs import define, field

from . import system
from .system import children, parent_pid, wait_for_sshd

_HOST_CONFIG_MOUNT = "/run/flambe-host"  # where a host sees its own folder

# Runs as root inside `ip netns exec <ns> unshare -m -p -f --mount-proc`, so
# as PID 1 of a fresh PID namespace with a private mount namespace.
# Order matters: the host folder usually lives under /tmp, so it is bound
# into the host's private /run (and the home bind is made) *before* /tmp is
# covered by the host's own tmpfs.
_HOST_SCRIPT = r"""
set -eu
dir=$1 userhome=$2 sshd=$3
mount --make-rprivate /
# Drop copies of other namespaces' /run/netns bind mounts: held here, they
# would keep those network namespaces alive after `ip netns del`.
umount -R /run/netns 2>/dev/null || umount -l /run/netns 2>/dev/null || true
mount --bind "$dir/home" "$userhome"
mount -t tmpfs -o mode=0755,nosuid,nodev,size=64m flambe-run /run
mkdir -m 0755 /run/sshd /run/user /run/flambe-host
mkdir -m 1777 /run/lock
ln -s /dev/shm /run/shm
mount --bind "$dir" /run/flambe-host
mount -t tmpfs -o mode=1777,nosuid,nodev flambe-tmp /tmp
exec "$sshd" -D -e -f /run/flambe-host/sshd_config
"""

_SSHD_CONFIG = """\
# Written by flambe_cluster.localhosts.namespaces for host {name}.
ListenAddress {address}
Port {port}
HostKey {config_mount}/ssh_host_ed25519_key
PidFile none
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
StrictModes yes
PermitRootLogin no
AllowUsers {username}
MaxSessions 64
MaxStartups 200
Subsystem sftp internal-sftp
LogLevel ERROR
UseDNS no
PrintMotd no
PrintLastLog no
X11Forwarding no
"""


@define(eq=False)
class NamespaceHost:
    """One host: an ``sshd`` on ``address:port`` in its own network, PID and mount
    namespaces (see the module docstring). Made by :class:`NamespaceNetwork`."""

    name: str
    """Short name inside its network, e.g. ``"h0"``."""
    address: str
    """The host's IPv4 address on the bridge, e.g. ``"10.213.7.10"``."""
    port: int
    """The SSH port (22)."""
    username: str
    """The shared Unix user that may log in (``AllowUsers``)."""
    home: Path
    """The per-host folder bind-mounted over ``/home/<user>`` on the host; readable
    (and writable) from the root namespace."""
    netns: str
    """The network namespace's name (``ip netns``)."""
    veth: str
    """The root-namespace end of the host's veth pair, a port of the bridge."""
    host_key_path: Path
    """The host's ed25519 private host key (``.pub`` next to it)."""
    reachable: bool = field(default=True, kw_only=True)
    """Whether the root namespace reaches the host (False: :meth:`start` checks sshd from inside the host)."""
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _sshd_pid: int | None = field(default=None, init=False, repr=False)

    @property
    def directory(self) -> Path:
        """The host's folder in the root namespace: sshd_config, host key,
        ``sshd.log`` and ``home/``. Seen as ``/run/flambe-host`` on the host."""
        return self.host_key_path.parent

    @property
    def log_path(self) -> Path:
        """sshd's stderr (``sshd -e``), appended to across restarts."""
        return self.directory / "sshd.log"

    @property
    def pid(self) -> int | None:
        """PID (in the root PID namespace) of the process started for the host,
        which is also its process-group id; None when it is not running."""
        return self._process.pid if self._process is not None and self.is_running() else None

    @property
    def sshd_pid(self) -> int | None:
        """PID, in the root PID namespace, of the host's PID 1 (``sshd``);
        None when the host is not running."""
        return self._sshd_pid if self.is_running() else None

    def host_key_line(self) -> str:
        """``'ssh-ed25519 AAAA...'``: the public host key of this host (key type and
        base64 blob, no host prefix, no comment)."""
        return system.host_key_line(self.host_key_path)

    def is_running(self) -> bool:
        """True while the process started by :meth:`start` has not exited."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start sshd (same key, same home); a no-op when it is running. Returns once
        a TCP connection from the root namespace to ``address:port`` reads an SSH
        banner (read inside the host when it is not :attr:`reachable`); otherwise stops what it started and
        raises LocalHostsError with the last line of ``sshd.log``."""
        if self.is_running():
            return
        user_home = pwd.getpwnam(self.username).pw_dir
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                ["ip", "netns", "exec", self.netns,
                 "unshare", "--mount", "--pid", "--fork", "--mount-proc",
                 "/bin/sh", "-c", _HOST_SCRIPT, "flambe-host",
                 str(self.directory), user_home, system.SSHD],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True, close_fds=True,
            )
        self._sshd_pid = None
        try:
            wait_for_sshd(self._process, self.address, self.port, f"local host {self.name} ({self.netns})",
                          self.log_path, netns=None if self.reachable else self.netns)
        except BaseException:
            self.stop()
            raise
        # PID 1 of the host is the child of `unshare --fork` (ip netns exec execs).
        kids = children(self._process.pid)
        self._sshd_pid = kids[0] if kids else None

    def stop(self) -> None:
        """Kill the host: SIGKILL to its PID 1 (sshd) — which makes the kernel kill
        every process of the host's PID namespace — then SIGKILL to the process
        group started by :meth:`start`, and wait for it. Only PIDs and process
        groups this object started are signalled. Idempotent."""
        proc = self._process
        if proc is None:
            return
        if proc.poll() is None:
            # Kill PID 1 first so that `unshare` (its parent) reaps it, leaving no zombie.
            if self._sshd_pid is not None and parent_pid(self._sshd_pid) == proc.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._sshd_pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        self._sshd_pid = None


def write_sshd_config(directory: Path, name: str, address: str, port: int, username: str) -> None:
    """The ``sshd_config`` of host ``name`` in its folder (host key ``ssh_host_ed25519_key`` beside it)."""
    (directory / "sshd_config").write_text(_SSHD_CONFIG.format(
        name=name, address=address, port=port, config_mount=_HOST_CONFIG_MOUNT, username=username))
