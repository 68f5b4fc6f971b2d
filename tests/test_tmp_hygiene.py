"""A test run leaves nothing in /tmp (issue 11: item 15).

A pytest run of a test that builds real test hosts and uses ``tmp_path`` is
started inside a private mount namespace whose ``/tmp`` is an empty tmpfs
(so the machine's /tmp, which other runs share, is neither read nor
touched); once it ended, that ``/tmp`` must be empty again.  A checkout that
itself lies under /tmp (a clean clone made there) is carried into the
private ``/tmp`` at its own path, through ``/mnt`` of the private namespace,
and is not counted.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import RUN_TMP_ENV

pytestmark = pytest.mark.hosts

ROOT = Path(__file__).resolve().parent.parent
PRIVATE_TMP = """
keep=$1
if [ -n "$keep" ]; then mount --bind "$keep" /mnt; fi
mount -t tmpfs -o mode=1777,size=256m fc-hygiene-tmp /tmp
if [ -n "$keep" ]; then mkdir -p "$keep"; mount --bind /mnt "$keep"; umount /mnt; fi
echo ready
exec sleep infinity
"""
INNER = "tests/test_ssh_faults.py::test_close_aborts_commands_in_flight"


def test_a_run_leaves_nothing_in_tmp():
    if os.geteuid() != 0 or not all(map(shutil.which, ("unshare", "nsenter"))):
        pytest.skip("needs root, unshare and nsenter (a private /tmp for the inner run)")
    keep = ROOT if Path("/tmp") in ROOT.parents else None  # the checkout, when it lies under /tmp
    if keep is not None and not Path("/mnt").is_dir():
        pytest.skip("the checkout lies under /tmp and there is no /mnt to carry it into a private /tmp")
    holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--", "sh", "-ec", PRIVATE_TMP, "sh",
                               str(keep or "")], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "ready", "could not make a private /tmp"
        inside = ["nsenter", f"--target={holder.pid}", "--mount", f"--wd={ROOT}", "--"]
        env = {k: v for k, v in os.environ.items() if k not in (RUN_TMP_ENV, "TMPDIR")}
        run = subprocess.run([*inside, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", INNER],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "1 passed" in run.stdout, run.stdout
        left = subprocess.run([*inside, "find", "/tmp", "-mindepth", "1",
                               *(["-path", str(keep), "-prune", "-o", "-print"] if keep else [])],
                              capture_output=True, text=True, check=True)
        carried = {str(folder) for folder in keep.parents} if keep else set()  # made to carry the checkout in
        found = [path for path in left.stdout.split() if path not in carried]
        assert found == [], "the run left in /tmp:\n" + "\n".join(found)
    finally:
        os.killpg(holder.pid, 9)
        holder.wait()
        holder.stdout.close()
