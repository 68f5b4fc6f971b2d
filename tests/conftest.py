"""Shared fixtures: real test hosts (flambe_cluster.testing) and cluster files."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path

import pytest
from helpers import RUN_TMP_ENV

pytest_plugins = ["flambe_cluster.testing.pytest_plugin", "pytester"]


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


@pytest.fixture(scope="module")
def three_hosts(flambe_test_hosts):
    """1 orchestrator + 2 factories, shared by a test module (do not break them)."""
    network = flambe_test_hosts(3)
    yield network
    network.close()
