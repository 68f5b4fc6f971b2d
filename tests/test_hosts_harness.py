"""Checks of the namespace-based SSH test hosts (flambe_cluster.testing.hosts).

Every check talks to the hosts the way the cluster library will: with the real
OpenSSH client, over the bridge, from the root namespace (or from one host to
another). Needs root; skipped otherwise.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from flambe_cluster.localhosts import system as localhosts_system
from flambe_cluster.testing import hosts as hosts_mod
from flambe_cluster.testing.hosts import TestHostNetwork, require_root_namespaces

pytestmark = pytest.mark.hosts

_REASON = require_root_namespaces()
if _REASON is not None:
    pytest.skip(_REASON, allow_module_level=True)
if shutil.which("ssh") is None:
    pytest.skip("the OpenSSH client (ssh) is missing", allow_module_level=True)

IP = "/usr/sbin/ip"  # /usr/sbin is not on the host user's PATH


# --------------------------------------------------------------------------
# helpers


def make_key(directory: Path, name: str = "id") -> tuple[Path, str]:
    path = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL)
    return path, path.with_name(name + ".pub").read_text().strip()


def write_known_hosts(path: Path, hosts) -> Path:
    path.write_text("".join(f"{h.address} {h.host_key_line()}\n" for h in hosts))
    return path


def ssh(host, key: Path, known_hosts: Path, command: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ssh", "-F", "/dev/null", "-i", str(key),
         "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
         "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={known_hosts}",
         "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=5",
         "-p", str(host.port), f"{host.username}@{host.address}", command],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
    )


def ssh_ok(host, key, known_hosts, command: str) -> str:
    proc = ssh(host, key, known_hosts, command)
    assert proc.returncode == 0, f"ssh {host.name} {command!r} failed ({proc.returncode}): {proc.stderr}"
    return proc.stdout


def tcp_banner(address: str, port: int = 22, timeout: float = 1.0) -> bytes:
    with socket.create_connection((address, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        return sock.recv(64)


def wait_for_banner(address: str, deadline_s: float = 5.0) -> bytes:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return tcp_banner(address)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def pids_in_pid_namespace(member_pid: int) -> set[int]:
    """Root-namespace PIDs of every process sharing member_pid's PID namespace."""
    target = os.readlink(f"/proc/{member_pid}/ns/pid")
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/ns/pid") == target:
                    found.add(int(entry))
            except OSError:
                pass
    return found


def our_names() -> tuple[set[str], set[str]]:
    """(netns names, link names) of this module's naming scheme currently present."""
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    ns_names = {line.split()[0] for line in netns.splitlines() if line.startswith("fc-")}
    link_names = set()
    for line in links.splitlines():
        name = line.split(":", 2)[1].strip().split("@")[0]
        if name.startswith(("fcb", "fcv")):
            link_names.add(name)
    return ns_names, link_names


def free_subnet(low: int = 200, high: int = 249) -> str:
    out = subprocess.run(["ip", "-o", "-4", "addr"], capture_output=True, text=True).stdout
    used = [ipaddress.IPv4Interface(t[t.index("inet") + 1]).network
            for t in (line.split() for line in out.splitlines()) if "inet" in t]
    candidates = list(range(low, high + 1))
    random.shuffle(candidates)
    for third in candidates:
        net = ipaddress.IPv4Network(f"10.213.{third}.0/24")
        if not any(u.overlaps(net) for u in used):
            return str(net)
    pytest.fail("no free test subnet")


# --------------------------------------------------------------------------
# a shared 2-host network


class Cluster:
    def __init__(self, net: TestHostNetwork, key: Path, pub: str, directory: Path):
        self.net, self.key, self.pub, self.dir = net, key, pub, directory

    def known_hosts(self) -> Path:
        return write_known_hosts(self.dir / "known_hosts", self.net.hosts)

    def run(self, host, command: str) -> str:
        return ssh_ok(host, self.key, self.known_hosts(), command)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    directory = tmp_path_factory.mktemp("hosts-harness")
    key, pub = make_key(directory)
    net = TestHostNetwork(2)
    try:
        net.authorize(pub)
        yield Cluster(net, key, pub, directory)
    finally:
        net.close()


# --------------------------------------------------------------------------
# checks


def test_network_shape(cluster):
    net = cluster.net
    h0, h1 = net.hosts
    subnet = ipaddress.IPv4Network(f"{net.gateway}/24", strict=False)
    assert net.gateway.endswith(".1")
    assert ipaddress.IPv4Address(h0.address) == subnet.network_address + 10
    assert ipaddress.IPv4Address(h1.address) == subnet.network_address + 11
    assert subnet.subnet_of(ipaddress.IPv4Network("10.213.0.0/16"))
    names = [net.bridge, h0.veth, h1.veth]
    assert all(len(n) <= 15 for n in names) and len(set(names)) == 3
    assert h0.netns != h1.netns
    assert h0.host_key_line().startswith("ssh-ed25519 AAAA")
    assert h0.host_key_line() != h1.host_key_line()
    assert h0.is_running() and h1.is_running()


def inet_addresses(ip_o_addr_output: str) -> set[str]:
    found = set()
    for line in ip_o_addr_output.splitlines():
        tokens = line.split()
        if "inet" in tokens:
            found.add(tokens[tokens.index("inet") + 1].split("/")[0])
    return found


def test_each_host_has_its_own_address(cluster):
    h0, h1 = cluster.net.hosts
    for host in (h0, h1):
        out = cluster.run(host, f"{IP} -4 -o addr")
        assert inet_addresses(out) == {"127.0.0.1", host.address}, out


def test_pid_namespace(cluster):
    h0 = cluster.net.hosts[0]
    lines = cluster.run(h0, "ps -e -o pid=,comm=").split()
    procs = list(zip(lines[::2], lines[1::2]))
    assert procs[0] == ("1", "sshd"), procs
    assert len(procs) < 10, procs  # sshd, the session's sshd pair, a shell, ps
    # the root-namespace view agrees: nsenter into the host sees the same PID 1
    out = h0.run_in_namespace(["ps", "-e", "-o", "pid=,comm="]).stdout.split()
    assert out[:2] == ["1", "sshd"]
    assert len(out) // 2 < 10
    # and the harness' PID is PID 1 of its own namespace, not the root one
    assert h0.sshd_pid not in (None, 1)
    assert os.readlink(f"/proc/{h0.sshd_pid}/ns/pid") != os.readlink("/proc/self/ns/pid")


def test_tmp_is_per_host(cluster):
    h0, h1 = cluster.net.hosts
    marker = f"/tmp/flambe-marker-{uuid.uuid4().hex}"
    cluster.run(h0, f"echo here > {marker} && test -f {marker}")
    assert cluster.run(h0, f"cat {marker}").strip() == "here"
    assert cluster.run(h1, f"test -e {marker} && echo present || echo absent").strip() == "absent"
    assert not os.path.exists(marker)  # nor in the root namespace


def test_home_is_per_host_and_visible_from_root(cluster):
    h0, h1 = cluster.net.hosts
    word = uuid.uuid4().hex
    cluster.run(h0, f"echo {word} > ~/x && pwd")
    try:
        assert (h0.home / "x").read_text().strip() == word
        assert not (h1.home / "x").exists()
        assert cluster.run(h1, "test -e ~/x && echo present || echo absent").strip() == "absent"
        assert cluster.run(h0, "pwd").strip() == f"/home/{h0.username}"
    finally:
        (h0.home / "x").unlink(missing_ok=True)


def test_each_host_has_a_disk_of_its_own(cluster):
    h0, h1 = cluster.net.hosts
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    tmpfs = {line.split()[1] for line in mounts if line.split()[2] == "tmpfs"}
    assert str(h0.home.parent) in tmpfs and str(h1.home.parent) in tmpfs, mounts
    devices = {os.stat(h0.home).st_dev, os.stat(h1.home).st_dev, os.stat(cluster.net.workdir).st_dev}
    assert len(devices) == 3, "one filesystem per host, neither the machine's"
    assert cluster.run(h0, "stat -f -c %T ~").strip() == "tmpfs"


def test_host_to_host_ssh(cluster):
    h0, h1 = cluster.net.hosts
    ssh_dir = h0.home / ".ssh"
    target = ssh_dir / "id_ed25519"
    shutil.copyfile(cluster.key, target)
    os.chmod(target, 0o600)
    write_known_hosts(ssh_dir / "known_hosts", [h1])
    uid, gid = os.stat(h0.home).st_uid, os.stat(h0.home).st_gid
    for path in (target, ssh_dir / "known_hosts"):
        os.chown(path, uid, gid)
    out = cluster.run(
        h0,
        "ssh -F /dev/null -i ~/.ssh/id_ed25519 -o IdentitiesOnly=yes -o BatchMode=yes "
        f"-o StrictHostKeyChecking=yes -o ConnectTimeout=5 {h1.username}@{h1.address} "
        f"'{IP} -4 -o addr'",
    )
    assert inet_addresses(out) == {"127.0.0.1", h1.address}, out


def test_no_route_out(cluster):
    h0 = cluster.net.hosts[0]
    routes = cluster.run(h0, f"{IP} route; {IP} -6 route")
    assert "default" not in routes
    assert "default" not in h0.run_in_namespace(["ip", "route"]).stdout
    # an address outside the bridge is unreachable, the gateway is reachable
    outside = h0.run_in_namespace(["ip", "route", "get", "192.0.2.1"])
    assert outside.returncode != 0 and "unreachable" in outside.stderr.lower()
    inside = h0.run_in_namespace(["ip", "route", "get", cluster.net.gateway])
    assert inside.returncode == 0 and "dev eth0" in inside.stdout
    forwarding = h0.run_in_namespace(["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip()
    assert forwarding == "0"


def test_authorize_adds_a_key(cluster):
    key2, pub2 = make_key(cluster.dir, "second")
    h1 = cluster.net.hosts[1]
    refused = ssh(h1, key2, cluster.known_hosts(), "true")
    assert refused.returncode != 0 and "Permission denied" in refused.stderr
    cluster.net.authorize(pub2)
    assert ssh_ok(h1, key2, cluster.known_hosts(), "echo ok").strip() == "ok"
    assert pub2 in (h1.home / ".ssh" / "authorized_keys").read_text()


def test_partition_and_heal(cluster):
    h1 = cluster.net.hosts[1]
    h1.partition()
    try:
        with pytest.raises(OSError):
            tcp_banner(h1.address, timeout=1.0)
    finally:
        h1.heal()
    assert wait_for_banner(h1.address).startswith(b"SSH-")
    assert cluster.run(h1, "echo back").strip() == "back"


def test_stop_kills_every_process_and_start_restores(cluster):
    h0 = cluster.net.hosts[0]
    cluster.run(h0, "setsid nohup sleep 1000 </dev/null >/dev/null 2>&1 &")
    assert "sleep" in h0.run_in_namespace(["ps", "-e", "-o", "comm="]).stdout
    pids = pids_in_pid_namespace(h0.sshd_pid)
    group = h0.pid
    assert len(pids) >= 2 and group is not None  # sshd and the sleep
    h0.stop()
    assert not h0.is_running()
    with pytest.raises(OSError):
        tcp_banner(h0.address)
    assert not [p for p in pids | {group} if os.path.exists(f"/proc/{p}")]
    h0.stop()  # idempotent
    h0.start()
    assert h0.is_running()
    assert cluster.run(h0, "ps -e -o comm=").split().count("sleep") == 0
    assert cluster.run(h0, "echo again").strip() == "again"


def test_replace_host_key(cluster):
    h1 = cluster.net.hosts[1]
    old_known = write_known_hosts(cluster.dir / "old_known_hosts", [h1])
    old_line = h1.host_key_line()
    h1.replace_host_key()
    assert h1.host_key_line() != old_line
    assert h1.host_key_line().startswith("ssh-ed25519 ")
    refused = ssh(h1, cluster.key, old_known, "true")
    assert refused.returncode != 0
    assert ("REMOTE HOST IDENTIFICATION HAS CHANGED" in refused.stderr
            or "Host key verification failed" in refused.stderr), refused.stderr
    assert cluster.run(h1, "echo fresh").strip() == "fresh"


def test_hosts_reach_each_other_after_restarts(cluster):
    # after stop/start and a key change, the bridge still carries host-to-host traffic
    h0, h1 = cluster.net.hosts
    write_known_hosts(h0.home / ".ssh" / "known_hosts", [h1])
    out = cluster.run(
        h0,
        "ssh -F /dev/null -i ~/.ssh/id_ed25519 -o IdentitiesOnly=yes -o BatchMode=yes "
        f"-o StrictHostKeyChecking=yes -o ConnectTimeout=5 {h1.username}@{h1.address} hostname -I",
    )
    assert out.split() == [h1.address], out


def test_add_host_subnet_and_close_leave_nothing(tmp_path):
    key, pub = make_key(tmp_path)
    subnet = free_subnet()
    net = TestHostNetwork(1, subnet=subnet, first_host_octet=20, authorized_keys=[pub])
    try:
        first = net.hosts[0]
        base = ipaddress.IPv4Network(subnet).network_address
        assert net.gateway == str(base + 1)
        assert first.address == str(base + 20)
        second = net.add_host()
        assert second.name == "h1" and second.address == str(base + 21)
        known = write_known_hosts(tmp_path / "known_hosts", net.hosts)
        out = ssh_ok(second, key, known, f"{IP} -4 -o addr")
        assert inet_addresses(out) == {"127.0.0.1", second.address}, out
        assert pub in (second.home / ".ssh" / "authorized_keys").read_text()
        names = {net.bridge, *(h.veth for h in net.hosts)}
        netns = {h.netns for h in net.hosts}
        pids = set()
        for h in net.hosts:
            pids |= pids_in_pid_namespace(h.sshd_pid) | {h.pid}
        workdir = net.workdir
        assert workdir.is_dir()
        disks = [str(h.home.parent) for h in net.hosts]
        assert all(os.path.ismount(d) for d in disks)
    finally:
        net.close()
    mounted = {line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()}
    assert not mounted & set(disks)
    ns_now, links_now = our_names()
    assert not (netns & ns_now)
    assert not (names & links_now)
    bridges = subprocess.run(["ip", "-o", "link", "show", "type", "bridge"],
                             capture_output=True, text=True).stdout
    assert net.bridge not in bridges
    assert not [p for p in pids if os.path.exists(f"/proc/{p}")]
    assert not workdir.exists()
    assert net.hosts == []
    net.close()  # idempotent
    with pytest.raises(OSError):
        tcp_banner(first.address, timeout=0.5)


def test_an_unrouted_network_is_reached_only_through_an_attached_host(tmp_path):
    key, pub = make_key(tmp_path)
    outside = TestHostNetwork(1, authorized_keys=[pub])
    inside = None
    try:
        inside = TestHostNetwork(1, routed=False, authorized_keys=[pub])
        bastion, private = outside.hosts[0], inside.hosts[0]
        assert inside.bridge not in subprocess.run(["ip", "-o", "route", "get", private.address],
                                                   capture_output=True, text=True).stdout
        address = inside.attach(bastion)
        assert address == str(ipaddress.IPv4Address(private.address) + 1)
        known = write_known_hosts(tmp_path / "known_hosts", [bastion])
        out = ssh_ok(bastion, key, known, f"{IP} -4 -o addr")
        assert inet_addresses(out) == {"127.0.0.1", bastion.address, address}, out
        reached = bastion.run_in_namespace(["bash", "-c", f"exec 3<>/dev/tcp/{private.address}/22 && head -c 4 <&3"])
        assert reached.stdout == "SSH-"
        attached = {link for link in our_names()[1] if link.startswith(f"fcv{inside.bridge[3:7]}a")}
        assert attached
    finally:
        if inside is not None:
            inside.close()
        outside.close()
    assert not attached & our_names()[1], "close() removes the attached interface"


def test_failed_start_cleans_up(tmp_path, monkeypatch):
    before_ns, before_links = our_names()
    monkeypatch.setattr(localhosts_system, "SSHD", "/bin/false")
    workdir = tmp_path / "w"
    with pytest.raises(RuntimeError, match="sshd exited"):
        TestHostNetwork(2, workdir=workdir)
    after_ns, after_links = our_names()
    assert after_ns <= before_ns
    assert after_links <= before_links
    assert not workdir.exists()
    assert not [n for n in hosts_mod._LIVE if n.workdir == workdir]


def test_given_workdir_is_kept(tmp_path):
    workdir = tmp_path / "keep"
    workdir.mkdir()
    (workdir / "mine").write_text("x")
    with TestHostNetwork(0, workdir=workdir) as net:
        host = net.add_host()
        assert host.home.parent.parent == workdir
        assert wait_for_banner(host.address).startswith(b"SSH-")
    assert sorted(p.name for p in workdir.iterdir()) == ["mine"]
