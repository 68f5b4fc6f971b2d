"""Faults of the SSH layer on real test hosts (issue 11: items 1, 2, 3, 4, 9).

Every test talks to real OpenSSH servers in Linux namespaces
(flambe_cluster.testing.hosts) through :class:`flambe_cluster.ssh.SSHPool`:
hosts are killed, partitioned, and their pinned keys damaged mid-run.  Client
CPU is measured with ``time.process_time()`` around each wait.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from flambe_cluster.errors import HostError, HostKeyError
from flambe_cluster.records import Endpoint, Instance, Role
from flambe_cluster.ssh import SSHPool, openssh_options

pytestmark = pytest.mark.hosts

SLOW = "echo started; sleep 60"


@pytest.fixture(scope="module")
def network(flambe_test_hosts):
    """Two hosts for the module; a test that stops or partitions one restores it."""
    network = flambe_test_hosts(2)
    yield network
    network.close()


def instance_of(host) -> Instance:
    endpoint = Endpoint(host.address, host.port)
    return Instance(f"faulty-{host.name}", Role.FACTORY, endpoint, endpoint)


def make_pool(host, key, tmp_path, **kwargs) -> SSHPool:
    return SSHPool(username=host.username, key_path=key.path, known_hosts=tmp_path / "known_hosts", **kwargs)


def start_slow_command(pool: SSHPool, instance: Instance) -> tuple[threading.Thread, dict]:
    """Run SLOW on ``instance`` in a thread; returns once it printed ``started``."""
    outcome: dict = {}
    started = threading.Event()

    def work() -> None:
        try:
            outcome["result"] = pool.run(instance, SLOW, on_stdout=lambda chunk: started.set(), check=False)
        except BaseException as exc:  # noqa: BLE001 - the test looks at whatever the command raised
            outcome["error"] = exc
        finally:
            outcome["ended"] = time.monotonic()
            started.set()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    assert started.wait(30), "the command never started"
    assert "error" not in outcome, outcome
    return thread, outcome


def wait_for_loss(fault, thread: threading.Thread, limit: float) -> tuple[float, float]:
    """Cause ``fault()``, wait for the command's thread to end; returns (seconds, client CPU seconds) from the
    fault on."""
    began, cpu = time.monotonic(), time.process_time()
    fault()
    thread.join(limit)
    waited, used = time.monotonic() - began, time.process_time() - cpu
    assert not thread.is_alive(), f"the command was still running {limit:g} s after the connection was lost"
    return waited, used


def test_a_host_killed_mid_command_is_a_host_error_at_once(network, flambe_client_key, tmp_path):
    host = network.hosts[0]
    instance = instance_of(host)
    pool = make_pool(host, flambe_client_key, tmp_path, command_timeout=20)
    try:
        thread, outcome = start_slow_command(pool, instance)
        waited, cpu = wait_for_loss(host.stop, thread, 25)
    finally:
        pool.close()
        host.start()
    error = outcome.get("error")
    assert isinstance(error, HostError), f"not an error but {outcome.get('result')!r} after {waited:.1f} s"
    assert "connection lost" in str(error) and instance.label in str(error)
    assert waited < 5, f"noticed after {waited:.1f} s"
    assert cpu < 1, f"{cpu:.2f} s of client CPU while waiting"
    print(f"host killed: HostError after {waited:.2f} s, {cpu:.3f} s CPU")


def test_a_silent_partition_is_noticed_within_the_keepalive_bound(network, flambe_client_key, tmp_path):
    host = network.hosts[1]
    instance = instance_of(host)
    interval, count = 2, 3
    pool = make_pool(host, flambe_client_key, tmp_path, command_timeout=120,
                     keepalive_interval=interval, keepalive_count=count)
    try:
        thread, outcome = start_slow_command(pool, instance)
        waited, cpu = wait_for_loss(host.partition, thread, interval * count + 30)
    finally:
        pool.close()
        host.heal()
    error = outcome.get("error")
    assert isinstance(error, HostError), f"not an error but {outcome.get('result')!r} after {waited:.1f} s"
    assert "connection lost" in str(error) and instance.label in str(error)
    assert waited < interval * count + 2, f"noticed after {waited:.1f} s (bound {interval * count} s)"
    assert cpu < 1, f"{cpu:.2f} s of client CPU while waiting"
    print(f"partition: HostError after {waited:.2f} s (bound {interval * count} s), {cpu:.3f} s CPU")


# A ProxyCommand that relays between its stdin/stdout and HOST:PORT, writing its PID to PIDFILE first.
RELAY = r"""
import os, socket, sys, threading
open(sys.argv[3], "w").write(str(os.getpid()))
peer = socket.create_connection((sys.argv[1], int(sys.argv[2])))
def upstream():
    while True:
        data = os.read(0, 65536)
        if not data:
            break
        peer.sendall(data)
threading.Thread(target=upstream, daemon=True).start()
while True:
    data = peer.recv(65536)
    if not data:
        break
    os.write(1, data)
"""


def test_a_silent_proxy_route_is_noticed_within_the_keepalive_bound(network, flambe_client_key, tmp_path):
    """Through a ProxyCommand (a pipe) the kernel's TCP timeout cannot see the host: keepalives that ask for a
    reply must.  The relay is stopped (SIGSTOP): the route falls silent, the host itself is fine."""
    host = network.hosts[0]
    instance = instance_of(host)
    relay, pidfile = tmp_path / "relay.py", tmp_path / "relay.pid"
    relay.write_text(RELAY)
    interval, count = 1, 3
    pool = make_pool(host, flambe_client_key, tmp_path, command_timeout=120, keepalive_interval=interval,
                     keepalive_count=count, proxy_command=f"{sys.executable} {relay} %h %p {pidfile}")
    pid = None
    try:
        thread, outcome = start_slow_command(pool, instance)
        pid = int(pidfile.read_text())
        waited, cpu = wait_for_loss(lambda: os.kill(pid, signal.SIGSTOP), thread, interval * count + 30)
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        pool.close()
    error = outcome.get("error")
    assert isinstance(error, HostError), f"not an error but {outcome.get('result')!r} after {waited:.1f} s"
    assert "connection lost" in str(error) and instance.label in str(error)
    assert waited < interval * count + 2, f"noticed after {waited:.1f} s (bound {interval * count} s)"
    print(f"silent proxy: HostError after {waited:.2f} s (bound {interval * count} s), {cpu:.3f} s CPU")


def test_openssh_subprocesses_get_the_same_keepalives(network, flambe_client_key, tmp_path):
    host = network.hosts[0]
    pool = make_pool(host, flambe_client_key, tmp_path)
    try:
        pool.run(instance_of(host), "true")  # pins the host key for OpenSSH
    finally:
        pool.close()
    options = openssh_options(flambe_client_key.path, tmp_path / "known_hosts", 5, keepalive_interval=7,
                              keepalive_count=4)
    assert "ServerAliveInterval=7" in options and "ServerAliveCountMax=4" in options
    defaults = openssh_options(flambe_client_key.path, tmp_path / "known_hosts", 5)
    assert "ServerAliveInterval=15" in defaults and "ServerAliveCountMax=3" in defaults
    done = subprocess.run(["ssh", "-F", "/dev/null", *options, "-p", str(host.port), f"{host.username}@{host.address}",
                           "echo ok"], capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert (done.returncode, done.stdout) == (0, "ok\n"), done.stderr


def test_close_aborts_commands_in_flight(network, flambe_client_key, tmp_path):
    host = network.hosts[0]
    pool = make_pool(host, flambe_client_key, tmp_path, command_timeout=20)
    thread, outcome = start_slow_command(pool, instance_of(host))
    waited, cpu = wait_for_loss(pool.close, thread, 25)
    error = outcome.get("error")
    assert isinstance(error, HostError), f"not an error but {outcome.get('result')!r} after {waited:.1f} s"
    assert "connection lost" in str(error) and "closed" in str(error)
    assert waited < 2, f"ended {waited:.1f} s after close()"
    assert cpu < 1, f"{cpu:.2f} s of client CPU while waiting"


def run_ignoring_loss(pool: SSHPool, instance: Instance, command: str) -> None:
    with contextlib.suppress(HostError):
        pool.run(instance, command, check=False)


def remote_commands(host, word: str) -> list[str]:
    """The host's processes whose command line holds ``word``."""
    listing = host.run_in_namespace(["ps", "-eo", "args"]).stdout.splitlines()
    return [line for line in listing if word in line]


@pytest.mark.parametrize("how", ["close", "timeout"])
def test_a_command_left_behind_ends_on_the_host_too(network, flambe_client_key, tmp_path, how):
    """A command whose channel is given up (the pool closed on an interrupt, or its timeout) ends on the host,
    its children too: sshd gives a session without a terminal no SIGHUP, so it would run on."""
    host = network.hosts[0]
    pool = make_pool(host, flambe_client_key, tmp_path, command_timeout=20)
    word = f"fc-left-{how}-{os.getpid()}"
    command = f"bash -c 'sleep 297 & sleep 298; wait' {word}"  # $0 is the word: it shows in ps
    try:
        if how == "close":
            _slow, _ = start_slow_command(pool, instance_of(host))  # a channel of its own, also ended
            worker = threading.Thread(target=run_ignoring_loss, args=(pool, instance_of(host), command), daemon=True)
            worker.start()
            deadline = time.monotonic() + 20
            while not remote_commands(host, word) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert remote_commands(host, word), "the command never started"
            pool.close()
        else:
            result = pool.run(instance_of(host), command, timeout=2, check=False)
            assert result.exit_code is None
        deadline = time.monotonic() + 5
        while (remote_commands(host, word) or remote_commands(host, "sleep 29")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not remote_commands(host, word) and not remote_commands(host, "sleep 29"), \
            host.run_in_namespace(["ps", "-eo", "pid,pgid,args"]).stdout
    finally:
        pool.close()


INTERRUPTED_MAP = textwrap.dedent("""
    import sys
    from pathlib import Path
    from flambe_cluster.records import Endpoint, Instance, Role
    from flambe_cluster.ssh import SSHPool

    address, port, user, key, known = sys.argv[1:]
    endpoint = Endpoint(address, int(port))
    pool = SSHPool(username=user, key_path=Path(key), known_hosts=Path(known), command_timeout=30)
    report = lambda chunk: (sys.stdout.buffer.write(chunk), sys.stdout.flush())
    pool.map([Instance("h", Role.FACTORY, endpoint, endpoint)],
             lambda i: pool.run(i, "echo started; sleep 60", on_stdout=report))
""")


def test_ctrl_c_during_map_ends_the_process_promptly(network, flambe_client_key, tmp_path):
    """SIGINT to a process waiting in ``SSHPool.map``: it exits at once, not when the remote command ends."""
    host = network.hosts[0]
    process = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED_MAP, host.address, str(host.port), host.username,
         str(flambe_client_key.path), str(tmp_path / "known_hosts")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        assert process.stdout.readline() == b"started\n", process.stderr.read().decode()
        os.kill(process.pid, signal.SIGINT)
        began = time.monotonic()
        try:
            _, stderr = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail("the process was still running 10 s after SIGINT")
        waited = time.monotonic() - began
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert b"KeyboardInterrupt" in stderr
    assert waited < 3, f"exited {waited:.1f} s after SIGINT"
    print(f"SIGINT during map: exited after {waited:.2f} s")


def test_output_is_streamed_and_only_its_tail_kept(network, flambe_client_key, tmp_path):
    host = network.hosts[0]
    limit = 2**20
    pool = make_pool(host, flambe_client_key, tmp_path, output_limit=limit)
    streamed = {"out": bytearray(), "err": bytearray()}
    command = "seq 1 1000000; seq 1 500000 >&2; exit 3"
    try:
        result = pool.run(instance_of(host), command, check=False,
                          on_stdout=streamed["out"].extend, on_stderr=streamed["err"].extend)
        endless = pool.run(instance_of(host), "yes", timeout=3, check=False)
    finally:
        pool.close()
    full_out = "".join(f"{i}\n" for i in range(1, 1000001)).encode()
    full_err = "".join(f"{i}\n" for i in range(1, 500001)).encode()
    assert bytes(streamed["out"]) == full_out and bytes(streamed["err"]) == full_err, "every byte reaches the callbacks"
    assert result.exit_code == 3
    assert result.stdout_bytes == full_out[-limit:] and result.stdout_dropped == len(full_out) - limit
    assert result.stderr_bytes == full_err[-limit:] and result.stderr_dropped == len(full_err) - limit
    assert result.stderr.endswith("499999\n500000\n")
    assert "      | 500000" in result.describe_failure()
    assert endless.exit_code is None and len(endless.stdout_bytes) == limit and endless.stdout_dropped > 10 * limit


def test_a_huge_stderr_line_makes_a_short_error(network, flambe_client_key, tmp_path):
    host = network.hosts[0]
    pool = make_pool(host, flambe_client_key, tmp_path)
    try:
        result = pool.run(instance_of(host), "head -c 20000000 /dev/zero | tr '\\0' x >&2; exit 1", check=False)
    finally:
        pool.close()
    assert len(result.stderr_bytes) == 20_000_000
    message = result.describe_failure()
    assert len(message) < 5000 and message.rstrip().endswith("xxxx") and "…x" in message


@pytest.mark.parametrize("damage", ["cut", "empty", "garbled"])
def test_a_damaged_known_hosts_is_refused_and_never_repinned(network, flambe_client_key, tmp_path, damage):
    host = network.hosts[0]
    known = tmp_path / "known_hosts"
    pinned = f"{host.address} {host.host_key_line()}\n"
    text = {"cut": pinned[: len(pinned) // 2], "empty": "", "garbled": f"{pinned}\x00\x01 not a key\n"}[damage]
    known.write_text(text)
    pool = make_pool(host, flambe_client_key, tmp_path, connect_timeout=5)
    try:
        with pytest.raises(HostKeyError) as caught:
            pool.run(instance_of(host), "true")
    finally:
        pool.close()
    assert "damaged" in str(caught.value) and str(known) in str(caught.value)
    assert known.read_text() == text, "the file was changed (re-pinned)"
