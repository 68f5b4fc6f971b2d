"""Real SSH test hosts on one Linux machine, built from Linux namespaces.

A :class:`TestHostNetwork` makes a private bridge in the root network
namespace and N *hosts* on it. Each host is one OpenSSH server with

* its own network namespace, with one interface ``eth0`` that has its own
  address on the bridge (no default route, no NAT, no forwarding: a host can
  reach the other hosts and the bridge address, nothing else);
* its own PID namespace, in which ``sshd`` is PID 1, so ``ps`` or
  ``ray stop`` on a host see only that host's processes, and killing PID 1
  kills everything that ran on the host;
* its own mount namespace, with a private tmpfs on ``/tmp``, a private tmpfs
  on ``/run`` and, over the shared user's home directory (``/home/<user>``),
  a bind mount of a per-host folder that the root namespace can read
  (:attr:`TestHost.home`).

All hosts share one Unix account (``flambe`` by default), created on first use.
Tests talk to the hosts from the root namespace over the bridge, with any SSH
client (the real ``ssh``, paramiko, ...).

Everything needs root, ``ip`` (iproute2), ``unshare``/``nsenter``
(util-linux), OpenSSH's ``sshd`` and ``ssh-keygen``, and ``rsync``;
:func:`require_root_namespaces` says whether this process has them.

Names are unique per network (random suffix), so concurrent test runs on one
machine do not collide; every network registers itself for an ``atexit``
clean-up, so an interpreter that exits without ``close()`` leaves nothing
behind either.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import ipaddress
import os
import pwd
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from attrs import define, field

from ..loopback import process_is, read_banner

__all__ = ["require_root_namespaces", "TestHost", "TestHostNetwork", "destroy_detached", "detached_alive"]

#: The OpenSSH server binary the hosts run (absolute: sshd re-executes itself).
SSHD = "/usr/sbin/sshd"
#: The Python the cluster library finds on the hosts (a Python under /root is
#: unreadable for the host user).
HOST_PYTHON = "/usr/bin/python3"

#: Default pool for automatically chosen subnets: 10.213.<100..199>.0/24.
AUTO_SUBNET_PREFIX = "10.213"
AUTO_SUBNET_THIRD_OCTETS = range(100, 200)

#: How long ``start()`` waits for the SSH banner.
START_DEADLINE_S = 10.0

_BRIDGE_PREFIX = "fcb"  # fcb<6 hex>            -> 9 chars
_VETH_PREFIX = "fcv"  # fcv<4 hex><idx>         -> <= 15 chars
_NETNS_PREFIX = "fc-"  # fc-<6 hex>-h<idx>
_IFNAMSIZ = 15
_HOST_CONFIG_MOUNT = "/run/flambe-host"  # where a host sees its own folder
_LOCK_CANDIDATES = ("/run/lock/flambe-test-hosts.lock", "/tmp/flambe-test-hosts.lock")

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
# Written by flambe_cluster.testing.hosts for test host {name}.
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


# --------------------------------------------------------------------------
# small helpers


def _run(argv: list[str], *, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a command, capturing text output; on failure (when ``check``) raise
    RuntimeError with the command and its stderr."""
    proc = subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise RuntimeError(
            f"command failed (exit {proc.returncode}): {' '.join(argv)}\n"
            f"{(proc.stderr or proc.stdout).strip()}"
        )
    return proc


def _link_exists(name: str) -> bool:
    return _run(["ip", "link", "show", "dev", name], check=False).returncode == 0


def _delete_link(name: str) -> None:
    """``ip link del``; a link that is (or has just become) absent is fine."""
    proc = _run(["ip", "link", "del", "dev", name], check=False)
    if proc.returncode != 0 and _link_exists(name):
        raise RuntimeError(f"ip link del {name}: {proc.stderr.strip()}")


def _netns_names() -> set[str]:
    out = _run(["ip", "netns", "list"], check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _link_names() -> set[str]:
    out = _run(["ip", "-o", "link", "show"], check=False).stdout
    names = set()
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.add(parts[1].strip().split("@", 1)[0])
    return names


def _used_ipv4_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network that an interface address or a route of the root
    namespace covers (default routes excepted)."""
    nets: list[ipaddress.IPv4Network] = []
    for line in _run(["ip", "-o", "-4", "addr", "show"], check=False).stdout.splitlines():
        tokens = line.split()
        if "inet" in tokens:
            with contextlib.suppress(ValueError, IndexError):
                nets.append(ipaddress.IPv4Interface(tokens[tokens.index("inet") + 1]).network)
    route_types = {"unicast", "local", "broadcast", "multicast", "anycast", "blackhole",
                   "unreachable", "prohibit", "throw", "nat"}
    routes = _run(["ip", "-o", "-4", "route", "show", "table", "all"], check=False).stdout
    for line in routes.splitlines():
        tokens = line.split()
        if tokens and tokens[0] in route_types:
            tokens = tokens[1:]
        if not tokens or tokens[0] == "default":
            continue
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.IPv4Network(tokens[0], strict=False))
    return nets


@contextlib.contextmanager
def _machine_lock():
    """A machine-wide lock (flock) serialising subnet choice and user creation
    between concurrent test runs."""
    for path in _LOCK_CANDIDATES:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            break
        except OSError:
            continue
    else:  # no lock file possible; go on without
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _ensure_user(username: str) -> pwd.struct_passwd:
    """The shared host user; created (``useradd -m``, then ``usermod -p '*'``:
    no password but not locked) when missing, left alone when present."""
    try:
        return pwd.getpwnam(username)
    except KeyError:
        pass
    proc = _run(["useradd", "-m", "-s", "/bin/bash", username], check=False)
    try:
        entry = pwd.getpwnam(username)
    except KeyError:
        raise RuntimeError(f"useradd {username} failed: {proc.stderr.strip()}") from None
    if proc.returncode == 0:  # we made it: unlock it (a locked user is refused by sshd)
        _run(["usermod", "-p", "*", username])
    return entry


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return [int(x) for x in text.split()]
    except OSError:
        pass
    kids = []  # fallback: scan /proc for the parent pid
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            ppid = _ppid(int(entry.name))
            if ppid == pid:
                kids.append(int(entry.name))
    return kids


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the comm field may contain spaces and parentheses: split after the last ')'
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        data = path.read_bytes()[-limit:]
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return data.decode(errors="replace").strip() or "<empty>"


@functools.lru_cache(maxsize=1)
def _probe_namespaces() -> str | None:
    """Create throw-away namespaces, a bridge and a veth pair inside them."""
    script = (
        "ip link add fcprobe0 type bridge && "
        "ip link add fcprobe1 type veth peer name fcprobe2 && "
        "ip link set fcprobe1 master fcprobe0"
    )
    try:
        proc = subprocess.run(
            ["unshare", "--net", "--mount", "--pid", "--fork", "sh", "-c", script],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot create Linux namespaces: {exc}"
    if proc.returncode != 0:
        return (
            "cannot create network/mount/PID namespaces with a bridge and veth pair "
            f"(needs CAP_SYS_ADMIN and CAP_NET_ADMIN): {proc.stderr.strip()}"
        )
    return None


def require_root_namespaces() -> str | None:
    """None when this process can build test hosts; else a sentence saying why not
    (not Linux, not root, ``ip``/``unshare``/``nsenter``/``sshd``/``ssh-keygen``/
    ``rsync``/``useradd``/``/usr/bin/python3`` missing, or namespaces, bridges or
    veth pairs cannot be created here). The first call probes the kernel in
    throw-away namespaces (a few milliseconds); the answer is cached."""
    if not sys.platform.startswith("linux"):
        return f"test hosts need Linux namespaces; this is {sys.platform}."
    if os.geteuid() != 0:
        return "test hosts need root (network, mount and PID namespaces, a bridge, a user)."
    missing = [tool for tool in ("ip", "unshare", "nsenter", "ssh-keygen", "rsync", "useradd", "usermod")
               if shutil.which(tool) is None]
    missing += [path for path in (SSHD, HOST_PYTHON) if not os.access(path, os.X_OK)]
    if missing:
        return f"test hosts need these programs, which are missing: {', '.join(missing)}."
    return _probe_namespaces()


# --------------------------------------------------------------------------
# one host


@define(eq=False)
class TestHost:
    """One SSH test host: an ``sshd`` on ``address:port`` in its own network, PID
    and mount namespaces (see the module docstring). Made by
    :class:`TestHostNetwork`; not meant to be constructed directly."""

    __test__ = False  # not a pytest test class

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
    (and writable) from the root namespace, for assertions."""
    netns: str
    """The network namespace's name (``ip netns``)."""
    veth: str
    """The root-namespace end of the host's veth pair, a port of the bridge."""
    host_key_path: Path
    """The host's ed25519 private host key (``.pub`` next to it)."""
    _process: subprocess.Popen | None = field(default=None, init=False, repr=False)
    _sshd_pid: int | None = field(default=None, init=False, repr=False)

    # -- read-only facts -------------------------------------------------

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
        return self._process.pid if self.is_running() else None

    @property
    def sshd_pid(self) -> int | None:
        """PID, in the root PID namespace, of the host's PID 1 (``sshd``);
        None when the host is not running."""
        return self._sshd_pid if self.is_running() else None

    def host_key_line(self) -> str:
        """``'ssh-ed25519 AAAA...'``: the public host key of this host (key type and
        base64 blob, no host prefix, no comment); prefix it with the address for a
        known_hosts line."""
        fields = self.host_key_path.with_name(self.host_key_path.name + ".pub").read_text().split()
        return " ".join(fields[:2])

    def is_running(self) -> bool:
        """True while the process started by :meth:`start` has not exited."""
        return self._process is not None and self._process.poll() is None

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        """Start sshd (same key, same home); a no-op when it is running. Returns once
        a TCP connection from the root namespace to ``address:port`` reads a line
        starting with ``SSH-`` (deadline 10 s); otherwise stops what it started and
        raises RuntimeError with the tail of ``sshd.log``."""
        if self.is_running():
            return
        user_home = pwd.getpwnam(self.username).pw_dir
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                ["ip", "netns", "exec", self.netns,
                 "unshare", "--mount", "--pid", "--fork", "--mount-proc",
                 "/bin/sh", "-c", _HOST_SCRIPT, "flambe-host",
                 str(self.directory), user_home, SSHD],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True, close_fds=True,
            )
        self._sshd_pid = None
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + START_DEADLINE_S
        last_error: str = "no attempt"
        while True:
            rc = self._process.poll()
            if rc is not None:
                raise RuntimeError(
                    f"test host {self.name} ({self.netns}): sshd exited with status {rc} "
                    f"before accepting connections; {self.log_path}:\n{_tail(self.log_path)}"
                )
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError(
                    f"test host {self.name} ({self.netns}): no SSH banner from "
                    f"{self.address}:{self.port} within {START_DEADLINE_S:g} s "
                    f"(last: {last_error}); {self.log_path}:\n{_tail(self.log_path)}"
                )
            try:
                banner = read_banner(self.address, self.port, min(1.0, remaining))
                if banner.startswith(b"SSH-"):
                    break
                last_error = f"unexpected banner {banner[:60]!r}"
            except OSError as exc:
                last_error = repr(exc)
            time.sleep(0.05)
        # PID 1 of the host is the child of `unshare --fork` (ip netns exec execs).
        kids = _children(self._process.pid)
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
            if self._sshd_pid is not None and _ppid(self._sshd_pid) == proc.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self._sshd_pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        self._sshd_pid = None

    def partition(self) -> None:
        """Cut the host off the bridge (``ip link set <veth> down``): its packets and
        packets to it are silently dropped; processes keep running."""
        _run(["ip", "link", "set", self.veth, "down"])

    def heal(self) -> None:
        """Undo :meth:`partition` (``ip link set <veth> up``)."""
        _run(["ip", "link", "set", self.veth, "up"])

    def replace_host_key(self) -> None:
        """Generate a new ed25519 host key (``ssh-keygen``), replacing the old one,
        and restart sshd; clients with the old key in known_hosts must then refuse
        the host."""
        self.stop()
        for path in (self.host_key_path, self.host_key_path.with_name(self.host_key_path.name + ".pub")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        _generate_host_key(self.host_key_path, self.name)
        self.start()

    def run_in_namespace(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess:
        """Run ``argv`` as root inside the host's network, mount and PID namespaces
        (``nsenter --target <PID 1> -n -m -p``), e.g. ``ps -e`` to see the host's
        processes. Keyword arguments go to :func:`subprocess.run`; by default output
        is captured as text, the timeout is 60 s and the exit status is not
        checked. Raises RuntimeError when the host is not running."""
        pid1 = self.sshd_pid
        if pid1 is None:
            raise RuntimeError(f"test host {self.name} is not running")
        if "stdout" not in kw and "stderr" not in kw:
            kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 60)
        kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(
            ["nsenter", "--target", str(pid1), "--net", "--mount", "--pid", "--", *argv], **kw
        )


def _generate_host_key(path: Path, comment: str) -> None:
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)])
    os.chmod(path, 0o600)


# --------------------------------------------------------------------------
# the network


_LIVE: list["TestHostNetwork"] = []


def _close_live_networks() -> None:
    for net in list(_LIVE):
        if net._owner_pid == os.getpid():  # never from a forked child
            with contextlib.suppress(Exception):
                net.close()


atexit.register(_close_live_networks)


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)


@define(eq=False)
class TestHostNetwork:
    """A bridge plus N SSH test hosts on it (see the module docstring).

    Construction builds and starts everything; on any failure it removes what it
    made and re-raises. A context manager: leaving the ``with`` calls
    :meth:`close`, which removes every namespace, link, process and folder the
    network made — also after a half-failed start, and idempotently. Networks
    not closed are closed at interpreter exit (``atexit``, in the creating process
    only).

    Arguments: ``count`` hosts; ``subnet`` an IPv4 private network such as
    ``"10.213.40.0/24"`` (default: a free /24 in 10.213.100-199.0/24 that no
    interface address or route of this machine overlaps); ``username`` the shared
    login user (created if missing); ``authorized_keys`` public-key lines put in
    every host's ``~/.ssh/authorized_keys``; host ``i`` gets address
    ``<subnet> + first_host_octet + i``, the bridge ``<subnet> + 1``;
    ``workdir`` the folder for the per-host folders (default: a fresh
    ``mkdtemp`` under the temp dir, mode 0755, removed by close(); a given
    workdir is created if missing and removed by close() only if it was
    created; otherwise only the per-host folders in it are removed). A workdir
    under /tmp is fine; one under ``/run``, ``/proc``, ``/sys``, ``/dev`` or the
    user's home is refused (the hosts cover those paths).
    """

    __test__ = False  # not a pytest test class

    count: int
    subnet: str | None = field(default=None, kw_only=True)
    username: str = field(default="flambe", kw_only=True)
    authorized_keys: list[str] = field(default=(), kw_only=True, converter=list)
    first_host_octet: int = field(default=10, kw_only=True)
    workdir: Path | None = field(default=None, kw_only=True)

    hosts: list[TestHost] = field(factory=list, init=False)
    """The running hosts, in order (``hosts[i].name == f"h{i}"``)."""
    bridge: str = field(default="", init=False)
    """The bridge's interface name in the root namespace."""
    gateway: str = field(default="", init=False)
    """The bridge's address, e.g. ``"10.213.7.1"`` — the root namespace's address on
    the hosts' network."""

    _suffix: str = field(default="", init=False, repr=False)
    _network: ipaddress.IPv4Network | None = field(default=None, init=False, repr=False)
    _created_workdir: bool = field(default=False, init=False, repr=False)
    _host_dirs: list[Path] = field(factory=list, init=False, repr=False)
    _all_hosts: list[TestHost] = field(factory=list, init=False, repr=False)
    _netns_made: list[str] = field(factory=list, init=False, repr=False)
    _links_made: list[str] = field(factory=list, init=False, repr=False)
    _closed: bool = field(default=False, init=False, repr=False)
    _owner_pid: int = field(factory=os.getpid, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.count < 0:
            raise ValueError("count must be >= 0")
        reason = require_root_namespaces()
        if reason is not None:
            raise RuntimeError(reason)
        for key in self.authorized_keys:
            _check_key_line(key)
        _LIVE.append(self)
        try:
            self._build()
            for _ in range(self.count):
                self.add_host()
        except BaseException:
            self.close()
            raise

    # -- building --------------------------------------------------------

    def _build(self) -> None:
        # Unique names: no netns / link of ours may exist with this suffix.
        existing_links, existing_ns = _link_names(), _netns_names()
        while True:
            suffix = secrets.token_hex(3)
            if (f"{_BRIDGE_PREFIX}{suffix}" not in existing_links
                    and not any(n.startswith(f"{_VETH_PREFIX}{suffix[:4]}") for n in existing_links)
                    and not any(n.startswith(f"{_NETNS_PREFIX}{suffix}-") for n in existing_ns)):
                break
        self._suffix = suffix
        self.bridge = f"{_BRIDGE_PREFIX}{suffix}"

        if self.workdir is None:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"flambe-hosts-{suffix}-"))
            self._created_workdir = True
            os.chmod(self.workdir, 0o755)
        else:
            self.workdir = Path(self.workdir).absolute()
            if not self.workdir.exists():
                self.workdir.mkdir(parents=True, mode=0o755)
                self._created_workdir = True

        with _machine_lock():
            user = _ensure_user(self.username)
            self._check_workdir(Path(user.pw_dir))
            if not os.path.isdir(user.pw_dir):  # the bind-mount point on the hosts
                os.makedirs(user.pw_dir, mode=0o755, exist_ok=True)
                os.chown(user.pw_dir, user.pw_uid, user.pw_gid)
            self._network = self._choose_subnet()
            self.gateway = str(self._network.network_address + 1)
            self._links_made.append(self.bridge)
            _run(["ip", "link", "add", "name", self.bridge, "type", "bridge", "stp_state", "0"])
            # A fixed MAC: otherwise the bridge takes its ports' lowest MAC, which changes.
            mac = "02:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))
            _run(["ip", "link", "set", "dev", self.bridge, "address", mac])
            _run(["ip", "addr", "add", f"{self.gateway}/{self._network.prefixlen}", "dev", self.bridge])
            _run(["ip", "link", "set", "dev", self.bridge, "up"])

    def _check_workdir(self, user_home: Path) -> None:
        assert self.workdir is not None
        resolved = self.workdir.resolve()
        for hidden in (Path("/run"), Path("/proc"), Path("/sys"), Path("/dev"), user_home.resolve()):
            if resolved == hidden or hidden in resolved.parents:
                raise ValueError(
                    f"workdir {self.workdir} lies under {hidden}, which the test hosts cover"
                )

    def _choose_subnet(self) -> ipaddress.IPv4Network:
        used = _used_ipv4_networks()
        if self.subnet is not None:
            net = ipaddress.IPv4Network(self.subnet, strict=False)
            if not net.is_private:
                raise ValueError(f"subnet {self.subnet} is not a private network")
            if net.num_addresses < 4:
                raise ValueError(f"subnet {self.subnet} is too small")
            clash = [str(u) for u in used if u.overlaps(net)]
            if clash:
                raise RuntimeError(
                    f"subnet {net} overlaps networks already on this machine: {', '.join(clash)}"
                )
            return net
        candidates = list(AUTO_SUBNET_THIRD_OCTETS)
        random.shuffle(candidates)
        for third in candidates:
            net = ipaddress.IPv4Network(f"{AUTO_SUBNET_PREFIX}.{third}.0/24")
            if not any(u.overlaps(net) for u in used):
                return net
        raise RuntimeError(
            f"no free /24 left in {AUTO_SUBNET_PREFIX}.{AUTO_SUBNET_THIRD_OCTETS.start}"
            f"-{AUTO_SUBNET_THIRD_OCTETS.stop - 1}.0; pass subnet="
        )

    def add_host(self) -> TestHost:
        """Make, start and return one more host on the same bridge (named
        ``h<len(hosts)>``, with the next address); it authorizes every key given so
        far. On failure, what was made for it is removed by :meth:`close`."""
        if self._closed:
            raise RuntimeError("the network is closed")
        assert self._network is not None and self.workdir is not None
        idx = len(self._all_hosts)
        name = f"h{idx}"
        address = self._network.network_address + self.first_host_octet + idx
        if (address not in self._network or address == self._network.broadcast_address
                or str(address) == self.gateway or address == self._network.network_address):
            raise RuntimeError(f"no address left in {self._network} for host {name}")
        netns = f"{_NETNS_PREFIX}{self._suffix}-{name}"
        veth = f"{_VETH_PREFIX}{self._suffix[:4]}{idx}"
        if len(veth) > _IFNAMSIZ:
            raise RuntimeError(f"too many hosts: interface name {veth} is too long")
        user = pwd.getpwnam(self.username)

        # The host's folder: sshd_config, host key, sshd.log, home/.
        hdir = self.workdir / name
        self._host_dirs.append(hdir)
        hdir.mkdir(mode=0o755)
        os.chmod(hdir, 0o755)
        home = hdir / "home"
        if os.path.isdir("/etc/skel"):
            shutil.copytree("/etc/skel", home, symlinks=True)
        else:
            home.mkdir()
        ssh_dir = home / ".ssh"
        ssh_dir.mkdir(exist_ok=True)
        keys = "".join(k.strip() + "\n" for k in self.authorized_keys)
        (ssh_dir / "authorized_keys").write_text(keys)
        _chown_tree(home, user.pw_uid, user.pw_gid)
        os.chmod(home, 0o755)
        os.chmod(ssh_dir, 0o700)
        os.chmod(ssh_dir / "authorized_keys", 0o600)
        key_path = hdir / "ssh_host_ed25519_key"
        _generate_host_key(key_path, f"{name}@{self.bridge}")
        (hdir / "sshd_config").write_text(_SSHD_CONFIG.format(
            name=name, address=address, port=22, config_mount=_HOST_CONFIG_MOUNT,
            username=self.username,
        ))

        # Its network namespace, wired to the bridge.
        self._netns_made.append(netns)
        _run(["ip", "netns", "add", netns])
        self._links_made.append(veth)
        _run(["ip", "link", "add", "name", veth, "type", "veth", "peer", "name", "eth0", "netns", netns])
        _run(["ip", "link", "set", "dev", veth, "master", self.bridge])
        _run(["ip", "link", "set", "dev", veth, "up"])
        inside = ["ip", "-n", netns]
        _run(inside + ["addr", "add", f"{address}/{self._network.prefixlen}", "dev", "eth0"])
        _run(inside + ["link", "set", "dev", "eth0", "up"])
        _run(inside + ["link", "set", "dev", "lo", "up"])

        host = TestHost(
            name=name, address=str(address), port=22, username=self.username, home=home,
            netns=netns, veth=veth, host_key_path=key_path,
        )
        self._all_hosts.append(host)
        host.start()
        self.hosts.append(host)
        return host

    def authorize(self, public_key_line: str) -> None:
        """Append one public-key line (``'ssh-ed25519 AAAA... comment'``) to every
        host's ``~/.ssh/authorized_keys``, and to those of hosts added later."""
        _check_key_line(public_key_line)
        line = public_key_line.strip()
        self.authorized_keys.append(line)
        for host in self._all_hosts:
            path = host.home / ".ssh" / "authorized_keys"
            with open(path, "a") as f:
                f.write(line + "\n")

    # -- tearing down ----------------------------------------------------

    def close(self) -> None:
        """Stop every host, delete every network namespace, veth and the bridge this
        network made, and remove its folders. Each step is tried on its own, so one
        failure does not leave the rest behind (failures are reported as
        RuntimeWarning). Idempotent."""
        if self._closed:
            return
        self._closed = True
        errors: list[str] = []

        def attempt(what: str, fn, *args) -> None:
            try:
                fn(*args)
            except Exception as exc:  # keep going; report at the end
                errors.append(f"{what}: {exc}")

        for host in self._all_hosts:
            attempt(f"stop {host.name}", host.stop)
        # Links first, veths before the bridge: deleting a veth is synchronous (and
        # takes its peer in the namespace along), whereas a deleted namespace's
        # devices go away asynchronously, some time after `ip netns del` returns.
        for link in reversed(self._links_made):
            attempt(f"ip link del {link}", _delete_link, link)
        live_ns = _netns_names()
        for ns in self._netns_made:
            if ns in live_ns:
                attempt(f"ip netns del {ns}", _run, ["ip", "netns", "del", ns])
        if self.workdir is not None:
            if self._created_workdir:
                attempt(f"remove {self.workdir}", shutil.rmtree, self.workdir)
            else:
                for hdir in self._host_dirs:
                    if hdir.exists():
                        attempt(f"remove {hdir}", shutil.rmtree, hdir)
        self.hosts.clear()
        with contextlib.suppress(ValueError):
            _LIVE.remove(self)
        if errors:
            warnings.warn(
                "TestHostNetwork.close() could not clean up everything:\n  " + "\n  ".join(errors),
                RuntimeWarning, stacklevel=2,
            )

    def detach(self) -> dict:
        """Let the hosts outlive this object and this process; return their record.

        The network is no longer closed at interpreter exit nor by
        :meth:`close`; :func:`destroy_detached` removes it later from the
        record (JSON-serialisable), :func:`detached_alive` tells whether it
        still runs.  Used by the ``local`` provider.
        """
        record = {
            "mode": "namespaces",
            "links": list(self._links_made),
            "netns": list(self._netns_made),
            "workdir": str(self.workdir) if self._created_workdir else None,
            "host_dirs": [str(d) for d in self._host_dirs],
            "hosts": [
                {"name": h.name, "address": h.address, "port": h.port, "home": str(h.home),
                 "host_key": h.host_key_line(), "pid": h._process.pid if h._process else None,
                 "sshd_pid": h._sshd_pid}
                for h in self._all_hosts
            ],
        }
        self._closed = True
        with contextlib.suppress(ValueError):
            _LIVE.remove(self)
        return record

    def __enter__(self) -> "TestHostNetwork":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def detached_alive(record: dict) -> bool:
    """Whether every host of a :meth:`TestHostNetwork.detach` record still runs."""
    return bool(record["hosts"]) and all(
        h["pid"] and process_is(h["pid"], "unshare") and h["sshd_pid"] and process_is(h["sshd_pid"], "sshd")
        for h in record["hosts"]
    )


def destroy_detached(record: dict) -> None:
    """Remove a detached network: kill each host (only the recorded, verified processes), delete its links,
    namespaces and folders.  Idempotent."""
    for host in record["hosts"]:
        pid, sshd = host["pid"], host["sshd_pid"]
        if sshd and process_is(sshd, "sshd") and _ppid(sshd) == pid:
            with contextlib.suppress(ProcessLookupError):
                os.kill(sshd, signal.SIGKILL)
        if pid and process_is(pid, "unshare"):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        for _ in range(50):
            if not (pid and process_is(pid, "unshare")):
                break
            time.sleep(0.1)
    for link in reversed(record["links"]):
        with contextlib.suppress(Exception):
            _delete_link(link)
    live = _netns_names()
    for ns in record["netns"]:
        if ns in live:
            _run(["ip", "netns", "del", ns], check=False)
    for folder in [record["workdir"], *record["host_dirs"]]:
        if folder:
            shutil.rmtree(folder, ignore_errors=True)


def _check_key_line(line: str) -> None:
    if not isinstance(line, str) or not line.strip() or "\n" in line.strip():
        raise ValueError(f"not a single public-key line: {line!r}")
