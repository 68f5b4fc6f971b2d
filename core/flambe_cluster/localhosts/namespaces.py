"""Namespaced hosts: real OpenSSH servers on one Linux machine, each in its own namespaces.

A :class:`NamespaceNetwork` makes a private bridge in the root network
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
  (:attr:`NamespaceHost.home`);
* its own disk: the per-host folder is a tmpfs of its own (at most
  :data:`_DISK_SIZE`, in memory: a host with an environment installed holds
  about 400 MB), mounted in the root namespace while the host exists.
  Hosts do not share a filesystem with each other or with the machine, as
  real hosts do not: what one host writes or deletes costs the others
  nothing.  (On a machine whose root filesystem is
  ext4 without a journal, creating files right after thousands were deleted
  is quadratic, which made every host's install pay for the last test's
  deletions.)

All hosts share one Unix account (``flambe`` by default), created on first use.
Clients talk to the hosts from the root namespace over the bridge.

Contract: needs root and the programs :func:`~.machine.require_root_namespaces`
checks. Every failure raises :class:`~flambe_cluster.errors.LocalHostsError`
with a one-line message, after removing what the failed step made. Names are
unique per network (random suffix), so concurrent networks on one machine do
not collide. A network lives until :meth:`NamespaceNetwork.close`, or, once
:meth:`NamespaceNetwork.detach`-ed, until :func:`destroy_detached` is given
its record; only the processes, links, namespaces and folders it made are
ever removed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pwd
import secrets
import shutil
import signal
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from attrs import define, field

from ..errors import LocalHostsError
from .machine import (
    choose_subnet,
    delete_link,
    delete_netns,
    ensure_user,
    link_names,
    machine_lock,
    netns_names,
    require_root_namespaces,
)
from .nshost import NamespaceHost, write_sshd_config
from .system import generate_host_key, key_list, parent_pid, process_is, run

_DISK_SIZE = "4g"  # a host's disk: a full one says "No space left on device" instead of taking the machine's memory

__all__ = ["NamespaceHost", "NamespaceNetwork", "destroy_detached", "detached_alive"]

_BRIDGE_PREFIX = "fcb"  # fcb<6 hex>            -> 9 chars
_VETH_PREFIX = "fcv"  # fcv<4 hex><idx>         -> <= 15 chars
_NETNS_PREFIX = "fc-"  # fc-<6 hex>-h<idx>
_IFNAMSIZ = 15


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), uid, gid)


def _check_key_line(line: str) -> None:
    if not isinstance(line, str) or not line.strip() or "\n" in line.strip():
        raise LocalHostsError(f"not a single public-key line: {line!r}")


@define(eq=False)
class NamespaceNetwork:
    """A bridge plus N namespaced hosts on it (see the module docstring).

    Construction builds and starts everything; on any failure it removes what it
    made and re-raises. A context manager: leaving the ``with`` calls
    :meth:`close`, which removes every namespace, link, process and folder the
    network made — also after a half-failed start, and idempotently.

    Arguments: ``count`` hosts; ``subnet`` an IPv4 private network such as
    ``"10.213.40.0/24"`` (default: a free /24 in 10.213.100-199.0/24 that no
    interface address or route of this machine overlaps); ``username`` the shared
    login user (created if missing); ``authorized_keys`` public-key lines put in
    every host's ``~/.ssh/authorized_keys``; host ``i`` gets address
    ``<subnet> + first_host_octet + i``, the bridge ``<subnet> + 1``;
    ``routed`` False leaves the bridge without an address, so this machine
    (the root namespace) has no route to the hosts: only a host that
    :meth:`attach` also puts on another network reaches them (a bastion);
    ``workdir`` the folder for the per-host folders (default: a fresh
    ``mkdtemp`` under the temp dir, mode 0755, removed by close(); a given
    workdir is created if missing and removed by close() only if it was
    created; otherwise only the per-host folders in it are removed). A workdir
    under /tmp is fine; one under ``/run``, ``/proc``, ``/sys``, ``/dev`` or the
    user's home is refused (the hosts cover those paths).
    """

    #: The class of the hosts :meth:`add_host` makes.
    host_class: ClassVar[type[NamespaceHost]] = NamespaceHost

    count: int
    subnet: str | None = field(default=None, kw_only=True)
    username: str = field(default="flambe", kw_only=True)
    authorized_keys: list[str] = field(default=(), kw_only=True, converter=key_list)
    first_host_octet: int = field(default=10, kw_only=True)
    workdir: Path | None = field(default=None, kw_only=True)
    routed: bool = field(default=True, kw_only=True)

    hosts: list[NamespaceHost] = field(factory=list, init=False)
    """The running hosts, in order (``hosts[i].name == f"h{i}"``)."""
    bridge: str = field(default="", init=False)
    """The bridge's interface name in the root namespace."""
    gateway: str = field(default="", init=False)
    """The bridge's address, e.g. ``"10.213.7.1"`` — the root namespace's address on
    the hosts' network (reserved, but not set, when not ``routed``)."""

    _suffix: str = field(default="", init=False, repr=False)
    _network: ipaddress.IPv4Network | None = field(default=None, init=False, repr=False)
    _created_workdir: bool = field(default=False, init=False, repr=False)
    _host_dirs: list[Path] = field(factory=list, init=False, repr=False)
    _attached: list[str] = field(factory=list, init=False, repr=False)  # addresses of hosts of other networks
    _all_hosts: list[NamespaceHost] = field(factory=list, init=False, repr=False)
    _netns_made: list[str] = field(factory=list, init=False, repr=False)
    _links_made: list[str] = field(factory=list, init=False, repr=False)
    _closed: bool = field(default=False, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.count < 0:
            raise LocalHostsError(f"a network of {self.count} hosts: count must be >= 0")
        reason = require_root_namespaces()
        if reason is not None:
            raise LocalHostsError(reason)
        for key in self.authorized_keys:
            _check_key_line(key)
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
        existing_links, existing_ns = link_names(), netns_names()
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

        with machine_lock():
            user = ensure_user(self.username)
            self._check_workdir(Path(user.pw_dir))
            if not os.path.isdir(user.pw_dir):  # the bind-mount point on the hosts
                os.makedirs(user.pw_dir, mode=0o755, exist_ok=True)
                os.chown(user.pw_dir, user.pw_uid, user.pw_gid)
            self._network = choose_subnet(self.subnet)
            self.gateway = str(self._network.network_address + 1)
            self._links_made.append(self.bridge)
            run(["ip", "link", "add", "name", self.bridge, "type", "bridge", "stp_state", "0"])
            # A fixed MAC: otherwise the bridge takes its ports' lowest MAC, which changes.
            mac = "02:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(5))
            run(["ip", "link", "set", "dev", self.bridge, "address", mac])
            if self.routed:
                run(["ip", "addr", "add", f"{self.gateway}/{self._network.prefixlen}", "dev", self.bridge])
            run(["ip", "link", "set", "dev", self.bridge, "up"])

    def _check_workdir(self, user_home: Path) -> None:
        assert self.workdir is not None
        resolved = self.workdir.resolve()
        for hidden in (Path("/run"), Path("/proc"), Path("/sys"), Path("/dev"), user_home.resolve()):
            if resolved == hidden or hidden in resolved.parents:
                raise LocalHostsError(f"workdir {self.workdir} lies under {hidden}, which the namespaced hosts cover")

    def add_host(self) -> NamespaceHost:
        """Make, start and return one more host on the same bridge (named
        ``h<len(hosts)>``, with the next address); it authorizes every key given so
        far. On failure, what was made for it is removed by :meth:`close`."""
        if self._closed:
            raise LocalHostsError(f"network {self.bridge} is closed")
        assert self._network is not None and self.workdir is not None
        idx = len(self._all_hosts)
        name = f"h{idx}"
        address = self._next_address(name)
        netns = f"{_NETNS_PREFIX}{self._suffix}-{name}"
        veth = f"{_VETH_PREFIX}{self._suffix[:4]}{idx}"
        if len(veth) > _IFNAMSIZ:
            raise LocalHostsError(f"too many hosts: interface name {veth} is too long")
        user = pwd.getpwnam(self.username)

        # The host's folder: sshd_config, host key, sshd.log, home/.
        hdir = self.workdir / name
        self._host_dirs.append(hdir)
        hdir.mkdir(mode=0o755)
        run(["mount", "-t", "tmpfs", "-o", f"mode=0755,size={_DISK_SIZE}", f"flambe-host-{self._suffix}-{name}",
             str(hdir)])
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
        generate_host_key(key_path, f"{name}@{self.bridge}")
        write_sshd_config(hdir, name, str(address), 22, self.username)

        # Its network namespace, wired to the bridge.
        self._netns_made.append(netns)
        run(["ip", "netns", "add", netns])
        self._links_made.append(veth)
        run(["ip", "link", "add", "name", veth, "type", "veth", "peer", "name", "eth0", "netns", netns])
        run(["ip", "link", "set", "dev", veth, "master", self.bridge])
        run(["ip", "link", "set", "dev", veth, "up"])
        inside = ["ip", "-n", netns]
        run(inside + ["addr", "add", f"{address}/{self._network.prefixlen}", "dev", "eth0"])
        run(inside + ["link", "set", "dev", "eth0", "up"])
        run(inside + ["link", "set", "dev", "lo", "up"])

        host = self.host_class(
            name=name, address=str(address), port=22, username=self.username, home=home,
            netns=netns, veth=veth, host_key_path=key_path, reachable=self.routed,
        )
        self._all_hosts.append(host)
        host.start()
        self.hosts.append(host)
        return host

    def _next_address(self, name: str) -> ipaddress.IPv4Address:
        assert self._network is not None
        address = self._network.network_address + self.first_host_octet + len(self._all_hosts) + len(self._attached)
        if (address not in self._network or address == self._network.broadcast_address
                or str(address) == self.gateway or address == self._network.network_address):
            raise LocalHostsError(f"no address left in {self._network} for host {name}")
        return address

    def attach(self, host: NamespaceHost) -> str:
        """Put ``host`` (running, of another network) on this network too and return its address here.

        The host gets a second interface (named after this bridge) with the
        next free address; its sshd keeps listening on its first address
        only, but everything on the host reaches this network's hosts.
        :meth:`close` removes the interface.
        """
        if self._closed:
            raise LocalHostsError(f"network {self.bridge} is closed")
        assert self._network is not None
        address = self._next_address(f"{host.name} of {host.netns}")
        veth = f"{_VETH_PREFIX}{self._suffix[:4]}a{len(self._attached)}"
        self._attached.append(str(address))
        self._links_made.append(veth)
        run(["ip", "link", "add", "name", veth, "type", "veth", "peer", "name", self.bridge, "netns", host.netns])
        run(["ip", "link", "set", "dev", veth, "master", self.bridge])
        run(["ip", "link", "set", "dev", veth, "up"])
        inside = ["ip", "-n", host.netns]
        run(inside + ["addr", "add", f"{address}/{self._network.prefixlen}", "dev", self.bridge])
        run(inside + ["link", "set", "dev", self.bridge, "up"])
        return str(address)

    def authorize(self, public_key_line: str) -> None:
        """Append one public-key line (``'ssh-ed25519 AAAA... comment'``) to every
        host's ``~/.ssh/authorized_keys``, and to those of hosts added later."""
        _check_key_line(public_key_line)
        line = public_key_line.strip()
        self.authorized_keys.append(line)
        for host in self._all_hosts:
            with open(host.home / ".ssh" / "authorized_keys", "a") as f:
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

        def attempt(what: str, fn: Callable[..., object], *args: object) -> None:
            try:
                fn(*args)
            except Exception as exc:  # noqa: BLE001 - keep going; report at the end
                errors.append(f"{what}: {exc}")

        for host in self._all_hosts:
            attempt(f"stop {host.name}", host.stop)
        # Links first, veths before the bridge: deleting a veth is synchronous (and
        # takes its peer in the namespace along), whereas a deleted namespace's
        # devices go away asynchronously, some time after `ip netns del` returns.
        for link in reversed(self._links_made):
            attempt(f"ip link del {link}", delete_link, link)
        attempt("ip netns del", delete_netns, self._netns_made)
        for hdir in self._host_dirs:
            attempt(f"unmount {hdir}", _unmount, hdir)
        if self.workdir is not None:
            if self._created_workdir:
                attempt(f"remove {self.workdir}", shutil.rmtree, self.workdir)
            else:
                for hdir in self._host_dirs:
                    if hdir.exists():
                        attempt(f"remove {hdir}", shutil.rmtree, hdir)
        self.hosts.clear()
        if errors:
            warnings.warn(
                f"{type(self).__name__}.close() could not clean up everything:\n  " + "\n  ".join(errors),
                RuntimeWarning, stacklevel=2,
            )

    def detach(self) -> dict[str, Any]:
        """Let the hosts outlive this object and this process; return their record.

        The network is no longer removed by :meth:`close`; :func:`destroy_detached`
        removes it later from the record (JSON-serialisable), :func:`detached_alive`
        tells whether it still runs.
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
        return record

    def __enter__(self) -> NamespaceNetwork:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def detached_alive(record: dict[str, Any]) -> bool:
    """Whether every host of a :meth:`NamespaceNetwork.detach` record still runs."""
    return bool(record["hosts"]) and all(
        h["pid"] and process_is(h["pid"], "unshare") and h["sshd_pid"] and process_is(h["sshd_pid"], "sshd")
        for h in record["hosts"]
    )


def destroy_detached(record: dict[str, Any]) -> None:
    """Remove a detached network: kill each host (only the recorded, verified processes), delete its links,
    namespaces and folders.  Idempotent."""
    for host in record["hosts"]:
        pid, sshd = host["pid"], host["sshd_pid"]
        if sshd and process_is(sshd, "sshd") and parent_pid(sshd) == pid:
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
        with contextlib.suppress(LocalHostsError):
            delete_link(link)
    delete_netns(record["netns"])
    for hdir in record["host_dirs"]:
        with contextlib.suppress(LocalHostsError):
            _unmount(Path(hdir))
    for folder in [record["workdir"], *record["host_dirs"]]:
        if folder:
            shutil.rmtree(folder, ignore_errors=True)


def _unmount(hdir: Path) -> None:
    """Unmount a host's tmpfs (its disk) if it is mounted; lazily when a process still holds it."""
    if os.path.ismount(hdir) and run(["umount", str(hdir)], check=False).returncode != 0:
        run(["umount", "--lazy", str(hdir)])
