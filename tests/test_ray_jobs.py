"""Ray, GPU detection, jobs, secrets and teardown, end to end on real test hosts.

One cluster (1 orchestrator + 2 factories) is brought up once for the module
through the real command line: hosts have no route out, so everything they
install comes from the wheelhouse the client ships.  Factory 1 carries a
stand-in `nvidia-smi` that lists two GPUs (no GPU can be had here).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import WHERE_JOB, fast_enough, install_nvidia_smi, run_cli, ssh_cluster_yaml, timed

SECRET_VALUE = "s3cr3t-AKIA-do-not-print"
NAME = "rayjobs"


class Env:
    def __init__(self, network, config: Path, state: Path):
        self.network, self.hosts, self.config, self.state = network, network.hosts, config, state

    def cli(self, *args, timeout=600, check=None):
        return run_cli(*args, state_home=self.state, timeout=timeout, check=check)

    def processes(self, host) -> list[str]:
        return host.run_in_namespace(["ps", "-e", "-o", "comm="], capture_output=True, text=True).stdout.split()


@pytest.fixture(scope="module")
def env(flambe_test_hosts, flambe_client_key, tmp_path_factory):
    network = flambe_test_hosts(3)
    hosts = network.hosts
    for host in hosts:
        assert "default" not in host.run_in_namespace(["ip", "route"], capture_output=True, text=True).stdout
    install_nvidia_smi(hosts[2], 2)
    folder = tmp_path_factory.mktemp("rayjobs")
    secrets = folder / "secrets.ini"
    secrets.write_text(f"[AWS]\naws_secret_access_key = {SECRET_VALUE}\n\n[GITHUB]\ntoken = gh-{SECRET_VALUE}\n")
    config = ssh_cluster_yaml(folder / "cluster.yaml", hosts, flambe_client_key.path, NAME, secrets=str(secrets))
    env = Env(network, config, folder / "state")
    env.first_up = env.cli("-vv", "up", str(config), timeout=900)
    yield env
    env.cli("down", str(config))
    network.close()


def test_first_up_ships_the_wheelhouse_once_and_starts_ray(env):
    up = env.first_up
    assert up.returncode == 0, up.stderr
    assert up.stderr.count("shipping the wheelhouse to the orchestrator") == 1
    assert "passing the wheelhouse on to 2 factories as a tree" in up.stderr
    assert "installing flambe-cluster and ray offline on 3 hosts" in up.stderr
    for host in env.hosts[1:]:
        assert list((host.home / ".flambe-cluster" / NAME / "wheelhouse").glob("ray-*.whl"))
    status = json.loads(env.cli("status", str(env.config), "--json", check=0).stdout)
    ray = status["ray"]
    assert ray["alive_workers"] == 2
    head = [n for n in ray["nodes"] if n["head"]]
    workers = {n["ip"]: n for n in ray["nodes"] if n["alive"] and not n["head"]}
    assert len(head) == 1 and head[0]["ip"] == env.hosts[0].address
    assert head[0]["resources"].get("CPU", 0) == 0, "the orchestrator must offer no CPU"
    assert set(workers) == {env.hosts[1].address, env.hosts[2].address}
    assert all(w["resources"]["CPU"] >= 1 for w in workers.values())


# Run on a host with the environment's interpreter: each .pyc under site-packages, checked-hash (flags 3: shipped
# from the client) or not (compiled on the host), and whether each checked-hash one matches its installed source.
BYTECODE_CENSUS = r"""
import glob, importlib.util, json, sys, sysconfig
census = {"shipped": 0, "compiled_here": 0, "stale": []}
for path in glob.glob(sysconfig.get_paths()["purelib"] + "/**/__pycache__/*.pyc", recursive=True):
    data = open(path, "rb").read()
    if int.from_bytes(data[4:8], "little") == 3:
        census["shipped"] += 1
        if importlib.util.source_hash(open(importlib.util.source_from_cache(path), "rb").read()) != data[8:16]:
            census["stale"].append(path)
    else:
        census["compiled_here"] += 1
census["scripts"] = importlib.util.cache_from_source(sysconfig.get_paths()["purelib"] + "/ray/scripts/scripts.py")
print(json.dumps(census))
"""


def test_hosts_run_a_ray_node_on_bytecode_compiled_once_on_the_client(env):
    python = env.hosts[0].run_in_namespace(["python3", "-c",
                                            "import sys; print('%d.%d' % sys.version_info[:2])"]).stdout
    same_python = python.strip() == "%d.%d" % sys.version_info[:2]
    for host in env.hosts:
        interpreter = f"/home/{host.username}/.flambe-cluster/{NAME}/env/bin/python"  # the path on the host
        done = host.run_in_namespace(["runuser", "-u", host.username, "--", interpreter, "-c", BYTECODE_CENSUS])
        assert done.returncode == 0, done.stderr
        census = json.loads(done.stdout)
        shipped = (host.home / ".flambe-cluster" / NAME / "wheelhouse" / "bytecode").is_dir()
        if same_python:  # the client compiled Ray's modules once; the Ray node (already running) compiled few itself
            assert shipped and census["shipped"] > 300, (host.name, census)
            assert census["stale"] == [], census["stale"]
            assert census["compiled_here"] < census["shipped"] / 3, (host.name, census)
            scripts = Path(census["scripts"])
            assert int.from_bytes((host.home / scripts.relative_to(f"/home/{host.username}")).read_bytes()[4:8],
                                  "little") == 3, "`ray start`'s own module runs on shipped bytecode"
        else:  # hosts of another Python: nothing shipped, each host compiles as it imports
            assert not shipped and census["shipped"] == 0 and census["compiled_here"] > 300, (host.name, census)


def test_gpu_factory_from_nvidia_smi(env, monkeypatch):
    status = json.loads(env.cli("status", str(env.config), "--json", check=0).stdout)
    workers = {n["ip"]: n for n in status["ray"]["nodes"] if n["alive"] and not n["head"]}
    assert workers[env.hosts[2].address]["resources"].get("GPU") == 2
    assert workers[env.hosts[1].address]["resources"].get("GPU", 0) == 0
    from flambe_cluster import Cluster

    monkeypatch.setenv("FLAMBE_CLUSTER_HOME", str(env.state))
    cluster = Cluster.from_yaml(env.config)
    with cluster:
        assert cluster.find_instances()
        assert cluster.contains_gpu_factories()
        assert cluster.get_max_resources() == {"cpu": workers[env.hosts[1].address]["resources"]["CPU"], "gpu": 0}
    assert cluster.error is None, cluster.error


def test_second_up_installs_nothing_and_restarts_nothing(env):
    def markers():
        return {h.address: json.loads((h.home / ".flambe-cluster/ray" / f"{h.address}.json").read_text())["pgid"]
                for h in env.hosts}

    before = markers()
    reference = timed(lambda: env.cli("status", str(env.config), "--json", check=0))
    started = time.monotonic()
    up = env.cli("up", str(env.config), check=0)
    elapsed = time.monotonic() - started
    assert "software already prepared on 3 hosts" in up.stderr
    assert "Ray already up: 2 workers alive" in up.stderr
    assert "shipping" not in up.stderr and "installing" not in up.stderr
    assert markers() == before, "no Ray node may be restarted"
    assert fast_enough(elapsed, 2.0, reference), f"second up took {elapsed:.2f} s (status: {reference:.2f} s)"


def test_submit_logs_pull(env, tmp_path):
    env.cli("submit", str(env.config), str(WHERE_JOB), "--", "--lr", "0.1; echo injected", check=0)
    logs = env.cli("logs", str(env.config), "--follow", check=0)
    assert f"tasks ran on {env.hosts[1].address} {env.hosts[2].address}" in logs.stdout
    assert "job finished with exit code 0" in logs.stderr
    assert "injected" not in logs.stdout
    status = json.loads(env.cli("status", str(env.config), "--json", check=0).stdout)
    assert status["job"] == {"state": "finished", "exit_code": 0}
    local = tmp_path / "pulled"
    env.cli("pull", str(env.config), "job-results", str(local), check=0)
    driver = json.loads((local / "driver.json").read_text())
    assert driver["args"] == ["--lr", "0.1; echo injected"]
    ips = {p.name.split("-", 2)[2][:-4] for p in local.glob("task-*.txt")}
    assert ips == {env.hosts[1].address, env.hosts[2].address}, "results of both factories are gathered"


LONG_JOB = """
import sys, time
for i in range(int(sys.argv[1])):
    print("tick", i, flush=True)
    time.sleep(0.2)
print("done")
"""


def test_one_job_at_a_time_and_force(env, tmp_path):
    job = tmp_path / "long.py"
    job.write_text(LONG_JOB)
    env.cli("submit", str(env.config), str(job), "--", "1000", check=0)
    refused = env.cli("submit", str(env.config), str(job), "--", "3", check=1)
    assert "a job is already running" in refused.stderr and "--force" in refused.stderr
    first = json.loads((env.hosts[0].home / ".flambe-cluster" / NAME / "job" / "process.json").read_text())["pgid"]
    env.cli("submit", str(env.config), "--force", str(job), "--", "3", check=0)
    logs = env.cli("logs", str(env.config), "--follow", check=0)
    assert logs.stdout.splitlines()[-1] == "done" and "tick 2" in logs.stdout and "tick 3" not in logs.stdout
    alive = env.hosts[0].run_in_namespace(["sh", "-c", f"kill -0 -- -{first} 2>/dev/null && echo alive || echo gone"],
                                          capture_output=True, text=True).stdout.strip()
    assert alive == "gone", "--force stops the running job's whole process group"


def test_job_survives_the_client_and_logs_pick_it_up(env, tmp_path):
    job = tmp_path / "long.py"
    job.write_text(LONG_JOB)
    env.cli("submit", str(env.config), "--force", str(job), "--", "25", check=0)
    follower = subprocess.Popen([sys.executable, "-m", "flambe_cluster", "logs", str(env.config), "--follow"],
                                env={**os.environ, "FLAMBE_CLUSTER_HOME": str(env.state)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    time.sleep(2.0)
    os.killpg(follower.pid, signal.SIGKILL)
    partial, _ = follower.communicate()
    assert b"tick 0" in partial and b"done" not in partial
    status = json.loads(env.cli("status", str(env.config), "--json", check=0).stdout)
    assert status["job"]["state"] == "running"
    logs = env.cli("logs", str(env.config), "--follow", check=0)
    assert "tick 24" in logs.stdout and logs.stdout.rstrip().endswith("done")


def test_secrets_land_0600_and_never_show(env, tmp_path):
    job = tmp_path / "secret.py"
    job.write_text("import os, stat\np = os.environ['FLAMBE_SECRETS']\n"
                   "print('mode', oct(stat.S_IMODE(os.stat(p).st_mode)))\n"
                   "print('sections', [l.strip() for l in open(p) if l.startswith('[')])\n")
    outputs = [env.cli("-vv", "submit", str(env.config), "--force", "--secret", "AWS", str(job), check=0)]
    outputs.append(env.cli("-vv", "logs", str(env.config), "--follow", check=0))
    outputs.append(env.cli("-vv", "status", str(env.config), "--json", check=0))
    outputs.append(env.first_up)
    remote = env.hosts[0].home / ".flambe-cluster" / NAME / "secrets.ini"
    assert oct(remote.stat().st_mode & 0o777) == "0o600"
    text = remote.read_text()
    assert "[AWS]" in text and "[GITHUB]" not in text and SECRET_VALUE in text
    assert "mode 0o600" in outputs[1].stdout and "sections ['[AWS]']" in outputs[1].stdout
    for done in outputs:
        assert SECRET_VALUE not in done.stdout + done.stderr
    job_dir = env.hosts[0].home / ".flambe-cluster" / NAME / "job"
    for path in job_dir.rglob("*"):
        if path.is_file():
            assert SECRET_VALUE.encode() not in path.read_bytes(), path


def test_another_cluster_on_the_same_hosts_is_refused(env, flambe_client_key, tmp_path):
    other = ssh_cluster_yaml(tmp_path / "other.yaml", env.hosts, flambe_client_key.path, "intruder")
    done = env.cli("up", str(other), check=1)
    assert f"runs a Ray node of cluster {NAME!r}" in done.stderr
    assert "installing" not in done.stderr, "refused before installing anything"


def test_down_leaves_no_ray_process(env):
    env.cli("down", str(env.config), check=0)
    for host in env.hosts:
        names = env.processes(host)
        assert not {"raylet", "gcs_server"} & set(names), (host.name, names)
        assert not list((host.home / ".flambe-cluster" / "ray").glob("*.json"))
    status = json.loads(env.cli("status", str(env.config), "--json", check=1).stdout)  # exit 1: Ray is down
    assert status["ray"] is None


FAKE_RAYLET = "#!/bin/sh\n# stand-in for tests: a process named raylet, not started by flambe-cluster\nsleep 600\n"


def test_a_head_that_cannot_start_ends_up_at_once_and_stops_the_workers_started_alongside(env, tmp_path):
    """Workers start alongside the head and wait for its GCS (up to ray_timeout): when the head is refused, `up`
    fails at once naming the orchestrator, and the workers' `ray start` commands, given up, stop their nodes."""
    orchestrator, user = env.hosts[0], env.hosts[0].username
    fake = orchestrator.home / "raylet"
    fake.write_text(FAKE_RAYLET)
    fake.chmod(0o755)
    started = orchestrator.run_in_namespace(  # the host's home is /home/<user> inside its namespaces
        ["runuser", "-u", user, "--", "sh", "-c",
         f"setsid /home/{user}/raylet --node_ip_address={orchestrator.address} </dev/null >/dev/null 2>&1 & echo $!"],
        check=True)
    pid = int(started.stdout.strip())
    config = tmp_path / "patient.yaml"
    config.write_text(env.config.read_text() + "ray_timeout: 300\n")
    try:
        began = time.monotonic()
        up = env.cli("up", str(config), check=1, timeout=280)
        elapsed = time.monotonic() - began
        print(f"up refused at the head after {elapsed:.1f} s; workers started alongside: "
              f"{up.stderr.count('starting the Ray worker on')}")
        assert "a Ray node not started by flambe-cluster runs on" in up.stderr, up.stderr
        assert f"{NAME}_orchestrator ({orchestrator.address}" in up.stderr, up.stderr
        assert elapsed < 60, f"up took {elapsed:.0f} s: it waited for the workers (ray_timeout 300 s)"
        deadline = time.monotonic() + 15
        while True:
            left = {h.name: {"ray", "raylet", "gcs_server"} & set(env.processes(h)) for h in env.hosts[1:]}
            if not any(left.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert not any(left.values()), left
        for host in env.hosts[1:]:
            assert not list((host.home / ".flambe-cluster" / "ray").glob("*.json")), host.name
    finally:
        orchestrator.run_in_namespace(["kill", "-s", "TERM", "--", f"-{pid}"], check=True)
        fake.unlink()
