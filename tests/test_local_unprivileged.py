"""The local provider for an unprivileged user: loopback sshd hosts, Ray across them, a job, down.

The test (root) makes an ordinary user, installs flambe-cluster for it from
the wheel into a venv of Debian's python3, and runs the real command line as
that user.  Wheels come from the wheelhouse cache this machine already
gathered for its hosts (copied into the user's cache), so the user's run
needs no network either.

The run sees a ``/tmp`` of its own (a tmpfs in a private mount namespace,
so the machine's ``/tmp`` is neither read nor touched) holding a
``/tmp/ray`` that another user owns, as on a shared machine where someone
once ran Ray; afterwards that ``/tmp`` must hold nothing the run created.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from flambe_cluster import wheelhouse
from flambe_cluster.localhosts import loopback

pytestmark = pytest.mark.hosts

ROOT = Path(__file__).resolve().parents[1]
USER = "fcuser"

JOB = """
import ray
ray.init(log_to_driver=False)

@ray.remote(num_cpus=1)
def where():
    return ray.util.get_node_ip_address()

print("task ran on", ray.get(where.remote()))
"""


#: A private /tmp with another user's (root's) /tmp/ray, kept while the holder process lives.
PRIVATE_TMP = """
mount -t tmpfs -o mode=1777,size=64m fc-unpriv-tmp /tmp
mkdir -m 755 /tmp/ray && echo 10.0.0.1:6379 > /tmp/ray/ray_current_cluster
echo ready && exec sleep infinity
"""


def listing(namespace, folder="/tmp"):
    done = subprocess.run([*namespace, "--", "find", folder, "-mindepth", "1"], capture_output=True, text=True, check=True)
    return sorted(done.stdout.split())


def as_user(namespace, argv, *, env, cwd, timeout=900):
    return subprocess.run([*namespace, f"--wd={cwd}", "--", "setpriv", f"--reuid={USER}", f"--regid={USER}", "--init-groups", "--", *argv],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def user_work():
    if os.geteuid() != 0 or not all(map(shutil.which, ("setpriv", "unshare", "nsenter"))):
        pytest.skip("needs root (to create the unprivileged user and act as it), setpriv, unshare and nsenter")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/bash", USER], check=True)
    user = pwd.getpwnam(USER)
    work = Path(tempfile.mkdtemp(prefix="fc-unprivileged-", dir="/var/tmp"))  # outside the run's own /tmp
    os.chmod(work, 0o755)
    os.chown(work, user.pw_uid, user.pw_gid)
    holder = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--", "sh", "-ec", PRIVATE_TMP],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "ready", "could not make a private /tmp"
        yield work, user, ["nsenter", f"--target={holder.pid}", "--mount"]
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
        record = work / "state" / "clusters" / "unpriv" / "local-hosts.json"
        if record.exists():  # stop what a failed run left, by its recorded process groups
            loopback.destroy(json.loads(record.read_text()))
        shutil.rmtree(work, ignore_errors=True)


def test_local_cluster_for_an_unprivileged_user(user_work):
    work, user, namespace = user_work
    planted = listing(namespace)  # /tmp/ray, owned by root: fcuser cannot write there
    # the wheels the hosts need, gathered (or found in the cache) by root for this platform
    platform = wheelhouse.client_platform()
    deps = wheelhouse.gather(platform, wheelhouse.runtime_requirements())
    cache = work / "cache" / "flambe-cluster" / "wheelhouse" / platform.tag / deps.name
    shutil.copytree(deps, cache)
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(work / "dist"), str(ROOT)],
                   check=True, capture_output=True)
    (wheel,) = (work / "dist").glob("flambe_cluster-*.whl")
    (work / "job.py").write_text(JOB)
    (work / "cluster.yaml").write_text("provider: local\nname: unpriv\nfactories_num: 1\n")
    subprocess.run(["chown", "-R", f"{USER}:", str(work)], check=True)

    env = {"HOME": user.pw_dir, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "COLUMNS": "200",
           "FLAMBE_CLUSTER_HOME": str(work / "state"), "XDG_CACHE_HOME": str(work / "cache"),
           "PIP_CONFIG_FILE": "/dev/null"}
    steps = [
        ["/usr/bin/python3", "-m", "venv", str(work / "venv")],
        [str(work / "venv/bin/pip"), "install", "-q", "--no-index", "--find-links", str(cache), str(wheel)],
    ]
    fc = [str(work / "venv/bin/flambe-cluster")]
    for argv in steps:
        done = as_user(namespace, argv, env=env, cwd=work)
        assert done.returncode == 0, done.stderr
    up = as_user(namespace, [*fc, "up", "cluster.yaml"], env=env, cwd=work)
    assert up.returncode == 0, up.stdout + up.stderr
    assert "Ray cluster up" in up.stderr and "127.77." in up.stdout
    status = json.loads(as_user(namespace, [*fc, "status", "cluster.yaml", "--json"], env=env, cwd=work).stdout)
    assert [h["ssh"] for h in status["hosts"]] == ["ok", "ok"]
    assert status["ray"]["alive_workers"] == 1
    factory_ip = status["hosts"][1]["address"].split(":")[0]
    assert as_user(namespace, [*fc, "submit", "cluster.yaml", "job.py"], env=env, cwd=work).returncode == 0
    logs = as_user(namespace, [*fc, "logs", "cluster.yaml", "--follow"], env=env, cwd=work)
    assert f"task ran on {factory_ip}" in logs.stdout, logs.stdout + logs.stderr
    record = json.loads((work / "state" / "clusters" / "unpriv" / "local-hosts.json").read_text())
    down = as_user(namespace, [*fc, "down", "cluster.yaml"], env=env, cwd=work)
    assert down.returncode == 0, down.stderr
    assert not any(loopback.process_is(h["pid"], "sshd") for h in record["hosts"])
    assert not (work / "state" / "clusters" / "unpriv" / "local-hosts.json").exists()
    assert listing(namespace) == planted, "the run left files in /tmp"
