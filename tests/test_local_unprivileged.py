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
from xml.etree import ElementTree

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
    done = subprocess.run([*namespace, "--", "find", folder, "-mindepth", "1"], capture_output=True, text=True,
                          check=True)
    return sorted(done.stdout.split())


def as_user(namespace, argv, *, env, cwd, timeout=900):
    return subprocess.run([*namespace, f"--wd={cwd}", "--", "setpriv", f"--reuid={USER}", f"--regid={USER}",
                           "--init-groups", "--", *argv],
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
        # stop what a failed run left (local clusters, the suite's hosts), by the process groups they recorded
        for record in [*work.glob("**/local-hosts.json"), *work.glob("tmp/flambe-loopback-hosts-*/network.json")]:
            loopback.destroy(json.loads(record.read_text()))
        shutil.rmtree(work, ignore_errors=True)


def build_wheel(source: Path, dist: Path) -> Path:
    """The wheel of the project at ``source`` (built here, without network), in ``dist``."""
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(source)],
                   check=True, capture_output=True)
    (wheel,) = dist.glob("*.whl")
    return wheel


def install_for_user(work: Path, namespace: list[str], env: dict, *requirements: str,
                     find_links: tuple[Path, ...] = ()):
    """Make ``work/venv`` with Debian's python3 as the user and install ``requirements`` into it offline.

    flambe-cluster's dependencies come from the wheelhouse cache this machine
    gathered for its hosts (copied into the user's cache); ``find_links``
    adds folders of further wheels.
    """
    platform = wheelhouse.client_platform()
    deps = wheelhouse.gather(platform, wheelhouse.runtime_requirements())
    cache = work / "cache" / "flambe-cluster" / "wheelhouse" / platform.tag / deps.name
    shutil.copytree(deps, cache)
    subprocess.run(["chown", "-R", f"{USER}:", str(work)], check=True)
    links = [arg for folder in (cache, *find_links) for arg in ("--find-links", str(folder))]
    for argv in (["/usr/bin/python3", "-m", "venv", str(work / "venv")],
                 [str(work / "venv/bin/pip"), "install", "-q", "--no-index", *links, *requirements]):
        done = as_user(namespace, argv, env=env, cwd=work)
        assert done.returncode == 0, done.stderr


def user_env(work: Path, user) -> dict:
    """The environment of the user's commands: its home, a state folder and a cache in ``work``,
    no pip configuration."""
    return {"HOME": user.pw_dir, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "COLUMNS": "200",
            "FLAMBE_CLUSTER_HOME": str(work / "state"), "XDG_CACHE_HOME": str(work / "cache"),
            "PIP_CONFIG_FILE": "/dev/null"}


def test_local_cluster_for_an_unprivileged_user(user_work):
    work, user, namespace = user_work
    planted = listing(namespace)  # /tmp/ray, owned by root: fcuser cannot write there
    wheel = build_wheel(ROOT, work / "dist")
    (work / "job.py").write_text(JOB)
    (work / "cluster.yaml").write_text("provider: local\nname: unpriv\nfactories_num: 1\n")
    env = user_env(work, user)
    install_for_user(work, namespace, env, str(wheel))
    fc = [str(work / "venv/bin/flambe-cluster")]
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


def test_conformance_suite_as_an_unprivileged_user(user_work):
    """A plugin author without root runs the suite: the local provider (loopback mode) and the example provider."""
    work, user, namespace = user_work
    planted = listing(namespace)
    testing_wheels = work / "testing-wheels"  # pytest and its dependencies (pure Python), for the [testing] extra
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "--dest", str(testing_wheels),
                    "pytest>=8"], check=True, capture_output=True)
    wheel = build_wheel(ROOT, work / "dist")
    example = build_wheel(ROOT / "examples" / "inventory-provider", work / "dist-example")
    suite = work / "suite"  # what a plugin author has: a conftest naming the plugin, and test modules
    suite.mkdir()
    shutil.copy(ROOT / "examples/inventory-provider/tests/conftest.py", suite)
    shutil.copy(ROOT / "examples/inventory-provider/tests/test_inventory_conformance.py", suite)
    shutil.copy(ROOT / "tests/test_conformance_local.py", suite)
    (suite / "pytest.ini").write_text("[pytest]\naddopts = -p no:cacheprovider\n")
    env = user_env(work, user)
    install_for_user(work, namespace, env, f"{wheel}[testing]", str(example),
                     find_links=(testing_wheels, example.parent))
    (work / "tmp").mkdir()  # the hosts' folders: the private /tmp is a small tmpfs
    subprocess.run(["chown", f"{USER}:", str(work / "tmp")], check=True)
    env["TMPDIR"] = str(work / "tmp")
    run = as_user(namespace, [str(work / "venv/bin/python"), "-m", "pytest", "-rs", f"--junitxml={work}/report.xml",
                              "--basetemp", str(work / "pytest-tmp"), str(suite)], env=env, cwd=work, timeout=1500)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-3000:]
    report = ElementTree.parse(work / "report.xml").getroot().find("testsuite")
    passed, skipped = set(), []
    for case in report.iter("testcase"):
        skip = case.find("skipped")
        if skip is None:
            passed.add((case.get("classname").rsplit(".", 1)[-1], case.get("name")))
        else:
            skipped.append(skip.get("message", ""))
    for suite_class in ("TestInventoryConformance", "TestLocalProviderConformance"):
        for test in ("test_load_gives_one_orchestrator_and_the_factories",
                     "test_up_reaches_every_host_with_the_cluster_key",
                     "test_down_leaves_nothing_the_provider_made", "test_load_reports_progress_for_every_host"):
            assert (suite_class, test) in passed, (suite_class, test, sorted(passed), skipped)
    assert ("TestLocalProviderConformance", "test_two_loads_at_once_make_one_cluster") in passed
    # only the checks a provider opts out of are skipped, never for want of hosts or privilege
    assert all("does not implement" in reason or "creates nothing" in reason for reason in skipped), skipped
    assert listing(namespace) == planted, "the suite left files in /tmp"
