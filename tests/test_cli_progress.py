"""What `up` shows inside its long steps, through the real command line on real test hosts.

Through a pipe (CI, logs): plain lines, each prefixed with the time, one per host and state (connecting,
shipping with bytes, installing, Ray start), no terminal codes; `-q` shows nothing.  Through a
pseudo-terminal: rich's live rows (host name, state, a bar and bytes for the shipping), no timestamps.
"""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time

import pytest
from helpers import fast_enough, run_cli, ssh_cluster_yaml, timed

STAMP = r"\d\d:\d\d:\d\d"
ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|\][^\x07]*\x07)")


def test_plain_lines_are_timestamped_one_per_change_and_a_transfer_is_throttled(monkeypatch):
    import io

    from flambe_cluster import progress
    from rich.console import Console

    console = Console(file=io.StringIO(), width=200)
    display = progress.Display(console)
    assert not display.rich, "a file is no terminal"
    display("installing on 2 hosts")
    display.event("c_factory0", "installing")
    display.event("c_factory0", "installing")  # no change: no line
    display.event("c_factory0", "installed")
    display.event("c_orchestrator", "receiving", done=0, total=2 * 2**20)
    display.event("c_orchestrator", "receiving", done=2**20, total=2 * 2**20)  # within PLAIN_INTERVAL: no line
    monkeypatch.setattr(progress, "PLAIN_INTERVAL", 0.0)
    display.event("c_orchestrator", "receiving", done=3 * 2**19, total=2 * 2**20)
    display.event("c_orchestrator", "receiving", done=2 * 2**20, total=2 * 2**20)
    display.event("c_orchestrator", "receiving", done=2 * 2**20, total=2 * 2**20)  # its end, once
    display.event("c_factory0", "installed")  # a state without counts is never repeated, however late
    display.close()
    lines = console.file.getvalue().splitlines()
    assert all(re.match(rf"{STAMP} ", line) for line in lines), lines
    assert [line[9:] for line in lines] == [
        "installing on 2 hosts", "c_factory0: installing", "c_factory0: installed",
        "c_orchestrator: receiving (0 B of 2.0 MB)", "c_orchestrator: receiving (1.5 MB of 2.0 MB)",
        "c_orchestrator: receiving (2.0 MB of 2.0 MB)",
    ]
    console.quiet = True  # -q
    display("a step")
    display.event("c_factory0", "anything")
    assert len(console.file.getvalue().splitlines()) == len(lines)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("flambe-state")


def host_lines(stderr: str, host: str) -> list[str]:
    """The states shown for ``host``, in order (each line: ``HH:MM:SS host: state``)."""
    return [m.group(1) for m in re.finditer(rf"^{STAMP} {re.escape(host)}: (.*)$", stderr, re.M)]


def test_up_through_a_pipe_prints_timestamped_lines_per_host(three_hosts, flambe_client_key, home, tmp_path,
                                                               private_wheel_cache):
    config = ssh_cluster_yaml(tmp_path / "piped.yaml", three_hosts.hosts, flambe_client_key.path, "piped")
    cold = not list((private_wheel_cache / "flambe-cluster" / "wheelhouse").glob("*/*/.complete"))
    done = run_cli("up", str(config), state_home=home, check=0)
    try:
        if cold:  # pip gathers the wheels on this machine (else an earlier test of this run did)
            assert re.search(rf"^{STAMP} this machine: (collecting|downloading|processing) \S*ray", done.stderr,
                             re.M | re.I), done.stderr
        assert "\x1b" not in done.stderr + done.stdout, "no terminal codes through a pipe"
        notes = done.stderr.splitlines()  # the steps, each host's states, then the summary
        assert notes[-1].startswith("cluster 'piped' is up"), done.stderr
        assert all(re.match(rf"{STAMP} \S", line) for line in notes[:-1]), done.stderr
        assert re.search(rf"^{STAMP} installing flambe-cluster and ray offline on 3 hosts, each as the wheelhouse "
                         rf"reaches it$", done.stderr, re.M)
        orchestrator, factories = "piped_orchestrator", ["piped_factory0", "piped_factory1"]
        for host in [orchestrator, *factories]:
            states = host_lines(done.stderr, host)
            assert states[:3] == [
                f"given at {three_hosts.hosts[0 if host == orchestrator else int(host[-1]) + 1].address}",
                "connecting over SSH", "connected"], states
            assert states.index("installing flambe-cluster and ray") < states.index("installed"), states
        shipped = host_lines(done.stderr, orchestrator)
        receiving = [s for s in shipped if s.startswith("receiving the wheelhouse (")]
        assert receiving and receiving[0].startswith("receiving the wheelhouse (0 B of "), shipped
        received = [s for s in shipped if s.startswith("received (")]
        assert len(received) == 1 and re.fullmatch(r"received \(([\d.]+ MB) of \1\)", received[0]), shipped
        assert shipped.index("starting the Ray head") < shipped.index("Ray head running"), shipped
        for factory, giver in zip(factories, [orchestrator, factories[0]]):  # a tree: the orchestrator sends one copy
            states = host_lines(done.stderr, factory)
            assert states.index(f"receiving from {giver}") < states.index("received"), states
            assert states.index("starting a Ray worker") < states.index("Ray worker alive"), states

        reference = timed(lambda: run_cli("status", str(config), state_home=home, check=0))
        started = time.monotonic()
        again = run_cli("up", str(config), state_home=home, check=0)
        elapsed = time.monotonic() - started
        assert fast_enough(elapsed, 2.0, reference), f"second up took {elapsed:.2f} s (status: {reference:.2f} s)"
        assert "installing" not in again.stderr and "starting" not in again.stderr, again.stderr
        assert re.search(rf"^{STAMP} Ray already up: 2 workers alive$", again.stderr, re.M), again.stderr
        quiet = run_cli("-q", "up", str(config), state_home=home, check=0)
        assert quiet.stderr == "" and quiet.stdout == "", quiet.stderr
    finally:
        run_cli("down", str(config), state_home=home, check=0)


def read_all(fd: int, process: subprocess.Popen, timeout: float) -> bytes:
    """Everything the pseudo-terminal ``fd`` shows until ``process`` ends and its side closes (or ``timeout``)."""
    seen, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([fd], [], [], 0.5)[0]:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the other side is closed
                break
            if not chunk:
                break
            seen += chunk
        elif process.poll() is not None:
            break
    return seen


def test_up_on_a_terminal_shows_rich_rows_per_host(three_hosts, flambe_client_key, home, tmp_path):
    config = ssh_cluster_yaml(tmp_path / "tty.yaml", three_hosts.hosts, flambe_client_key.path, "tty")
    master, slave = os.openpty()
    env = {**os.environ, "FLAMBE_CLUSTER_HOME": str(home), "COLUMNS": "160", "LINES": "40", "TERM": "xterm-256color"}
    for variable in ("FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE"):
        env.pop(variable, None)
    process = subprocess.Popen([sys.executable, "-m", "flambe_cluster", "up", str(config)],
                               stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    try:
        shown = read_all(master, process, timeout=600)
        assert process.wait(timeout=60) == 0, shown.decode(errors="replace")[-4000:]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
        run_cli("down", str(config), state_home=home, check=0)
    text = shown.decode(errors="replace")
    assert "\x1b[" in text, "rich draws on a terminal"
    plain = ANSI.sub("", text)
    assert not re.search(rf"{STAMP} tty_", plain), "no timestamped lines on a terminal"
    assert re.search(r"\d+\.\ds installing flambe-cluster and ray offline on 3 hosts", plain), plain[-4000:]
    for host in ("tty_orchestrator", "tty_factory0", "tty_factory1"):
        assert re.search(rf"{host} +installing flambe-cluster and ray", plain), plain[-4000:]
        assert re.search(rf"{host} +connect(ing over SSH|ed)", plain), plain[-4000:]
    assert re.search(r"tty_orchestrator +receiving the wheelhouse .*[\d.]+/[\d.]+ MiB", plain), plain[-4000:]
    assert re.search(r"tty_orchestrator +(starting the Ray head|Ray head running)", plain), plain[-4000:]
    for factory in ("tty_factory0", "tty_factory1"):
        assert re.search(rf"{factory} +(starting a Ray worker|Ray worker started|Ray worker alive)", plain), \
            plain[-4000:]
    assert "cluster 'tty' is up" in plain
