"""What namespaced hosts need from this machine: the capability check, links,
network namespaces, free subnets, a machine-wide lock and the shared user.

Contract: :func:`require_root_namespaces` answers None or a sentence and never
raises; the other functions raise
:class:`~flambe_cluster.errors.LocalHostsError` (one line) when the machine
refuses, and only ever delete links and namespaces they are named.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import ipaddress
import os
import pwd
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator

from ..errors import LocalHostsError
from . import system
from .system import one_line, run

#: The Python the cluster library finds on the hosts (a Python under /root is
#: unreadable for the host user).
HOST_PYTHON = "/usr/bin/python3"

#: Default pool for automatically chosen subnets: 10.213.<100..199>.0/24.
AUTO_SUBNET_PREFIX = "10.213"
AUTO_SUBNET_THIRD_OCTETS = range(100, 200)

_LOCK_CANDIDATES = ("/run/lock/flambe-test-hosts.lock", "/tmp/flambe-test-hosts.lock")


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
    """None when this process can build namespaced hosts; else a sentence saying why not
    (not Linux, not root, ``ip``/``unshare``/``nsenter``/``sshd``/``ssh-keygen``/
    ``rsync``/``useradd``/``/usr/bin/python3`` missing, or namespaces, bridges or
    veth pairs cannot be created here). The first call probes the kernel in
    throw-away namespaces (a few milliseconds); the answer is cached."""
    if not sys.platform.startswith("linux"):
        return f"namespaced hosts need Linux namespaces; this is {sys.platform}."
    if os.geteuid() != 0:
        return "namespaced hosts need root (network, mount and PID namespaces, a bridge, a user)."
    missing = [tool for tool in ("ip", "unshare", "nsenter", "ssh-keygen", "rsync", "useradd", "usermod")
               if shutil.which(tool) is None]
    missing += [path for path in (system.SSHD, HOST_PYTHON) if not os.access(path, os.X_OK)]
    if missing:
        return f"namespaced hosts need these programs, which are missing: {', '.join(missing)}."
    return _probe_namespaces()


def link_names() -> set[str]:
    """Every network interface of the root namespace."""
    names = set()
    for line in run(["ip", "-o", "link", "show"], check=False).stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.add(parts[1].strip().split("@", 1)[0])
    return names


def netns_names() -> set[str]:
    """Every named network namespace (``ip netns``)."""
    out = run(["ip", "netns", "list"], check=False).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def delete_link(name: str) -> None:
    """``ip link del``; a link that is (or has just become) absent is fine."""
    proc = run(["ip", "link", "del", "dev", name], check=False)
    if proc.returncode != 0 and run(["ip", "link", "show", "dev", name], check=False).returncode == 0:
        raise LocalHostsError(f"ip link del {name}: {proc.stderr.strip()}")


def delete_netns(names: list[str]) -> None:
    """``ip netns del`` each of ``names`` that exists; all are tried, then the failures raised."""
    live = netns_names()
    failed = [one_line(proc.stderr) for proc in (run(["ip", "netns", "del", name], check=False)
                                                 for name in names if name in live) if proc.returncode != 0]
    if failed:
        raise LocalHostsError(f"ip netns del: {'; '.join(failed)}")


def _used_ipv4_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network that an interface address or a route of the root
    namespace covers (default routes excepted)."""
    nets: list[ipaddress.IPv4Network] = []
    for line in run(["ip", "-o", "-4", "addr", "show"], check=False).stdout.splitlines():
        tokens = line.split()
        if "inet" in tokens:
            with contextlib.suppress(ValueError, IndexError):
                nets.append(ipaddress.IPv4Interface(tokens[tokens.index("inet") + 1]).network)
    route_types = {"unicast", "local", "broadcast", "multicast", "anycast", "blackhole",
                   "unreachable", "prohibit", "throw", "nat"}
    routes = run(["ip", "-o", "-4", "route", "show", "table", "all"], check=False).stdout
    for line in routes.splitlines():
        tokens = line.split()
        if tokens and tokens[0] in route_types:
            tokens = tokens[1:]
        if not tokens or tokens[0] == "default":
            continue
        with contextlib.suppress(ValueError):
            nets.append(ipaddress.IPv4Network(tokens[0], strict=False))
    return nets


def subnet_problem(subnet: str) -> str | None:
    """None when ``subnet`` is a private IPv4 network with room for a bridge and hosts;
    else what is wrong with it.  Nothing of the machine is looked at."""
    try:
        net = ipaddress.IPv4Network(subnet, strict=False)
    except ValueError:
        return f"expected an IPv4 network such as '10.213.40.0/24', got {subnet!r}"
    if not net.is_private:
        return f"subnet {subnet} is not a private network"
    if net.num_addresses < 4:
        return f"subnet {subnet} is too small"
    return None


def choose_subnet(subnet: str | None) -> ipaddress.IPv4Network:
    """``subnet`` when no interface address or route of this machine overlaps it;
    without one, a free /24 of 10.213.100-199.0 (call under :func:`machine_lock`)."""
    used = _used_ipv4_networks()
    if subnet is not None:
        problem = subnet_problem(subnet)
        if problem:
            raise LocalHostsError(problem)
        net = ipaddress.IPv4Network(subnet, strict=False)
        clash = {u for u in used if u.overlaps(net)}
        if clash:
            widest = sorted(c for c in clash if not any(c != o and c.subnet_of(o) for o in clash))
            raise LocalHostsError(f"subnet {net} overlaps networks already on this machine: "
                                  f"{', '.join(map(str, widest))}")
        return net
    candidates = list(AUTO_SUBNET_THIRD_OCTETS)
    random.shuffle(candidates)
    for third in candidates:
        net = ipaddress.IPv4Network(f"{AUTO_SUBNET_PREFIX}.{third}.0/24")
        if not any(u.overlaps(net) for u in used):
            return net
    raise LocalHostsError(
        f"no free /24 left in {AUTO_SUBNET_PREFIX}.{AUTO_SUBNET_THIRD_OCTETS.start}"
        f"-{AUTO_SUBNET_THIRD_OCTETS.stop - 1}.0; choose a subnet"
    )


@contextlib.contextmanager
def machine_lock() -> Iterator[None]:
    """A machine-wide lock (flock) serialising subnet choice and user creation
    between concurrent processes."""
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


def ensure_user(username: str) -> pwd.struct_passwd:
    """The shared host user; created (``useradd -m``, then ``usermod -p '*'``:
    no password but not locked) when missing, left alone when present."""
    try:
        return pwd.getpwnam(username)
    except KeyError:
        pass
    proc = run(["useradd", "-m", "-s", "/bin/bash", username], check=False)
    try:
        entry = pwd.getpwnam(username)
    except KeyError:
        raise LocalHostsError(f"useradd {username} failed: {proc.stderr.strip()}") from None
    if proc.returncode == 0:  # we made it: unlock it (a locked user is refused by sshd)
        run(["usermod", "-p", "*", username])
    return entry
