"""Shared fixtures: real test hosts (flambe_cluster.testing) and cluster files."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest_plugins = ["flambe_cluster.testing.pytest_plugin", "pytester"]

#: A Ray job spreading tasks over the factories (see its docstring).
WHERE_JOB = Path(__file__).parent / "jobs" / "where.py"


def run_cli(*args, state_home, timeout=600, check=None, env=None) -> subprocess.CompletedProcess:
    """Run the real command line (``python -m flambe_cluster ARGS``) with its own state folder.

    ``check`` is the exit code the run must end with (its output is shown if not).
    """
    environment = {**(env if env is not None else os.environ), "FLAMBE_CLUSTER_HOME": str(state_home), "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "flambe_cluster", *args], capture_output=True, text=True,
                          timeout=timeout, env=environment)
    if check is not None:
        assert done.returncode == check, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done


def fast_enough(elapsed: float, limit: float, reference: float) -> bool:
    """A speed check that holds on a busy machine too: within ``limit`` seconds (a quiet machine's target), or
    within 3x a ``reference`` the test measured just before on the same machine (``status``: interpreter start,
    connections, one Ray query), so that load, which slows both alike, does not fail it."""
    return elapsed < max(limit, 3 * reference)


def timed(action) -> float:
    """Seconds ``action()`` took."""
    started = time.monotonic()
    action()
    return time.monotonic() - started


#: The environment variable naming this run's temporary folder (see :func:`pytest_configure`).
RUN_TMP_ENV = "FLAMBE_CLUSTER_TEST_TMP"


@pytest.hookimpl(tryfirst=True)  # before pytest's tmp_path plugin reads --basetemp
def pytest_configure(config):
    # A SIGTERM (CI timeout, kill) unwinds like Ctrl-C, so fixtures still remove hosts and bridges.
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    # Everything the run writes to a temporary folder goes to one folder of its own, removed when the run
    # ends: pytest's tmp_path folders (unless --basetemp is given), the test hosts' folders, and whatever
    # this process and the command lines it starts put in TMPDIR. /tmp keeps nothing of the run.
    if os.environ.get(RUN_TMP_ENV):
        return  # a pytest run inside a test: its parent's folder holds it
    run_tmp = Path(tempfile.mkdtemp(prefix="fc-tests-"))
    os.chmod(run_tmp, 0o755)  # test hosts' sshd (root) and their user only pass through it
    config.stash[_RUN_TMP] = (run_tmp, os.environ.get("TMPDIR"))
    os.environ[RUN_TMP_ENV] = os.environ["TMPDIR"] = str(run_tmp)
    tempfile.tempdir = None  # recomputed from TMPDIR
    if config.option.basetemp is None:
        config.option.basetemp = str(run_tmp / "pytest")


@pytest.hookimpl(trylast=True)  # after every fixture's teardown and the test hosts' atexit-free closing
def pytest_unconfigure(config):
    made = config.stash.get(_RUN_TMP, None)
    if made is None:
        return
    run_tmp, saved = made
    shutil.rmtree(run_tmp, ignore_errors=True)
    os.environ.pop(RUN_TMP_ENV, None)
    if saved is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = saved
    tempfile.tempdir = None


_RUN_TMP = pytest.StashKey[tuple]()


@pytest.fixture(scope="session", autouse=True)
def private_wheel_cache(tmp_path_factory):
    """The wheels hosts install from are gathered into a cache of this run, never the user's
    ``~/.cache/flambe-cluster``: no test passes because an earlier run (or the user) warmed it,
    and nothing is left behind in the home folder."""
    saved = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield Path(os.environ["XDG_CACHE_HOME"])
    if saved is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = saved


def install_nvidia_smi(host, gpus: int) -> None:
    """Give a test host a stand-in ``nvidia-smi`` in ``~/bin`` (on a login shell's PATH) listing ``gpus`` GPU indexes.

    No GPU can be had here; the core counts the index lines it prints.
    """
    smi = host.home / "bin" / "nvidia-smi"
    smi.parent.mkdir(exist_ok=True)
    smi.write_text("#!/bin/sh\n# stand-in for tests\n" + "".join(f"echo {i}\n" for i in range(gpus)))
    smi.chmod(0o755)
    subprocess.run(["chown", "-R", f"{host.username}:", str(smi.parent)], check=True)


def ssh_cluster_yaml(path: Path, hosts, key: Path, name: str, **extra) -> Path:
    """Write an `ssh` cluster file: hosts[0] is the orchestrator, the others factories."""
    import yaml

    body = {
        "provider": "ssh",
        "name": name,
        "username": hosts[0].username,
        "key": str(key),
        "orchestrator_ip": hosts[0].address,
        "factories_ips": [h.address for h in hosts[1:]],
        **extra,
    }
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def three_hosts(flambe_test_hosts):
    """1 orchestrator + 2 factories, shared by a test module (do not break them)."""
    network = flambe_test_hosts(3)
    yield network
    network.close()
