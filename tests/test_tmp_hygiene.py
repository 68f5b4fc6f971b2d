"""A test run leaves nothing in /tmp (issue 11: item 15).

A pytest run of a test that builds real test hosts and uses ``tmp_path`` is
started inside a private mount namespace whose ``/tmp`` is an empty tmpfs
(so the machine's /tmp, which other runs share, is neither read nor
touched); once it ended, that ``/tmp`` must be empty again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import RUN_TMP_ENV

pytestmark = pytest.mark.hosts

ROOT = Path(__file__).resolve().parent.parent
PRIVATE_TMP = "mount -t tmpfs -o mode=1777,size=256m fc-hygiene-tmp /tmp && echo ready && exec sleep infinity"
INNER = "tests/test_ssh_faults.py::test_close_aborts_commands_in_flight"


def test_a_run_leaves_nothing_in_tmp():
    if os.geteuid() != 0 or not all(map(shutil.which, ("unshare", "nsenter"))):
        pytest.skip("needs root, unshare and nsenter (a private /tmp for the inner run)")
    holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--", "sh", "-ec", PRIVATE_TMP],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "ready", "could not make a private /tmp"
        inside = ["nsenter", f"--target={holder.pid}", "--mount", f"--wd={ROOT}", "--"]
        env = {k: v for k, v in os.environ.items() if k not in (RUN_TMP_ENV, "TMPDIR")}
        run = subprocess.run([*inside, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", INNER],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "1 passed" in run.stdout, run.stdout
        left = subprocess.run([*inside, "find", "/tmp", "-mindepth", "1"], capture_output=True, text=True, check=True)
        assert left.stdout.split() == [], f"the run left in /tmp:\n{left.stdout}"
    finally:
        os.killpg(holder.pid, 9)
        holder.wait()
        holder.stdout.close()
