"""End to end on moto + real test hosts: `up` -> `submit` -> `logs` -> `pull` -> `down`, through the command line.

boto3 talks HTTP to moto; each instance moto launches becomes a real OpenSSH
test host at the private address moto gave it (``use_public: false``), so
the cluster is prepared (offline wheelhouse), runs Ray and a job for real.
The cluster is brought up once for the module — by two `up`s started at
once — and shared by the tests, which run in order.  The factories are
g4dn.xlarge: EC2 says one NVIDIA GPU each, and their hosts have a stand-in
``nvidia-smi`` that sees one, which is what Ray is told; the last test gives
a factory one that sees none, and `up` fails naming it.
"""

from __future__ import annotations

import json

import pytest
from aws_support import aws_cloud, dump  # noqa: F401 - aws_cloud is a fixture
from helpers import WHERE_JOB

pytestmark = pytest.mark.hosts

NAME = "aws-e2e"
LIVE = ("pending", "running", "stopping", "stopped")



class Env:
    def __init__(self, cloud, config, home):
        self.cloud, self.config, self.home = cloud, config, home

    def cli(self, *args, check=None, timeout=600):
        return self.cloud.cli(*args, home=self.home, check=check, timeout=timeout)

    def status(self) -> dict:
        return json.loads(self.cli("status", str(self.config), "--json", check=0).stdout)

    def ids(self) -> list[str]:
        return sorted(i["InstanceId"] for i in self.cloud.instances(NAME, LIVE))


@pytest.fixture(scope="module")
def env(aws_cloud, tmp_path_factory):
    folder = tmp_path_factory.mktemp("aws-e2e")
    config = aws_cloud.write_config(folder / "cluster.yaml", NAME, factories_type="g4dn.xlarge", connect_timeout=120,
                                    prices={"g4dn.xlarge": 0.526},
                                    setup_cmds=['echo "setup on $(hostname -I)" >> "$HOME"/aws-setup'])
    env = Env(aws_cloud, config, folder / "state")
    aws_cloud.factory_gpus = 1
    ups = [aws_cloud.popen("-v", "up", str(config), "--wait", "900", home=env.home) for _ in range(2)]
    env.ups = []
    for process in ups:
        try:
            stdout, stderr = process.communicate(timeout=900)
        finally:
            if process.poll() is None:
                process.kill()
                stdout, stderr = process.communicate()
        env.ups.append((process.returncode, stdout, stderr))
    yield env
    if env.ids():
        env.cli("down", str(config), timeout=300)


def test_two_ups_at_once_make_one_cluster_with_its_tags_and_ray(env):
    for code, _stdout, stderr in env.ups:
        assert code == 0, f"exit {code}\n{stderr}"
    # the default idle policy keeps the orchestrator (its results), and says that it costs until `down`
    assert any("its orchestrator (t3.micro) never shuts itself down when idle" in stderr for _, _, stderr in env.ups)
    cloud = env.cloud
    instances = cloud.instances(NAME, LIVE)
    assert len(instances) == 3, "one set of instances"
    roles = sorted({t["Key"]: t["Value"] for t in i["Tags"]}["flambe-cluster:role"] for i in instances)
    assert roles == ["factory", "factory", "orchestrator"]
    for instance in instances:
        tags = {t["Key"]: t["Value"] for t in instance["Tags"]}
        assert tags["flambe-cluster:cluster"] == NAME and tags["flambe-cluster:creator"]
        assert instance["SubnetId"] == cloud.subnet_id
    launches = cloud.server.count("RunInstances", when=lambda c: c.tags.get("flambe-cluster:cluster") == NAME)
    assert launches == 2, "one RunInstances per role, none by the second `up`"
    for instance in instances:
        assert ("setup on " + instance["PrivateIpAddress"]
                in (cloud.host_of(instance["InstanceId"]).home / "aws-setup").read_text())
    status = env.status()
    assert sorted(h["instance_id"] for h in status["hosts"]) == env.ids()
    ray = status["ray"]
    assert ray["alive_workers"] == 2
    workers = [n for n in ray["nodes"] if n["alive"] and not n["head"]]
    assert [w["resources"].get("GPU") for w in workers] == [1, 1], "the GPU nvidia-smi sees on each g4dn.xlarge"
    [head] = [n for n in ray["nodes"] if n["head"]]
    assert head["resources"].get("CPU", 0) == 0
    # what each machine is and costs, from the journal (moto has no Price List API: t3.micro's price is unknown)
    bought = {h["role"]: h["bought"] for h in status["hosts"]}
    assert bought["factory"]["instance_type"] == "g4dn.xlarge" and bought["factory"]["usd_per_hour"] == 0.526
    assert bought["factory"]["market"] == "on-demand" and bought["orchestrator"]["usd_per_hour"] is None
    table = env.cli("status", str(env.config), check=0).stdout
    assert [line.split("│")[-2].strip() for line in table.splitlines() if "g4dn.xlarge" in line] == ["0.526"] * 2, table


def test_second_up_reuses_the_instances_and_changes_nothing(env):
    before = env.ids()
    runs, alarms = env.cloud.server.count("RunInstances", provider_only=False), env.cloud.server.count("PutMetricAlarm")
    done = env.cli("up", str(env.config), check=0)
    assert "Ray already up: 2 workers alive" in done.stderr, dump(done)
    assert env.ids() == before
    assert env.cloud.server.count("RunInstances", provider_only=False) == runs
    assert env.cloud.server.count("PutMetricAlarm") == alarms


def test_idle_factories_have_a_terminate_alarm_and_the_orchestrator_none(env):
    status = env.status()
    factories = sorted(h["instance_id"] for h in status["hosts"] if h["role"] == "factory")
    alarms = env.cloud.alarms(f"flambe-cluster/{NAME}/")
    assert sorted(a["Dimensions"][0]["Value"] for a in alarms) == factories
    assert {a["AlarmActions"][0] for a in alarms} == {"arn:aws:automate:us-east-1:ec2:terminate"}
    assert {(a["Period"], a["EvaluationPeriods"]) for a in alarms} == {(3600, 1)}, "factories_timeout: 1 hour"


def test_submit_logs_pull(env, tmp_path):
    env.cli("submit", str(env.config), str(WHERE_JOB), check=0)
    logs = env.cli("logs", str(env.config), "--follow", check=0)
    factories = sorted(h["private"] for h in env.status()["hosts"] if h["role"] == "factory")
    assert f"tasks ran on {' '.join(factories)}" in logs.stdout, dump(logs)
    assert "gpus 2" in logs.stdout
    local = tmp_path / "pulled"
    env.cli("pull", str(env.config), "job-results", str(local), check=0)
    assert {p.read_text() for p in local.glob("task-*.txt")} == set(factories), "results of both factories"


def test_a_stopped_factory_is_started_again_not_duplicated(env):
    before = env.ids()
    factory = [h for h in env.status()["hosts"] if h["role"] == "factory"][1]["instance_id"]
    env.cloud.ec2.stop_instances(InstanceIds=[factory])
    assert not env.cloud.host_of(factory).is_running()
    done = env.cli("up", str(env.config), check=0)
    assert f"starting 1 stopped instance(s): {factory}" in done.stderr, dump(done)
    assert env.ids() == before
    assert env.cloud.state_of(factory) == "running"
    assert env.status()["ray"]["alive_workers"] == 2


def test_down_leaves_no_instance_and_no_alarm(env):
    ids = env.ids()
    done = env.cli("down", str(env.config), check=0)
    assert f"cluster '{NAME}' is down" in done.stderr, dump(done)
    assert env.cloud.instances(NAME, LIVE) == [], "nothing pending, running or stopped"
    assert {env.cloud.state_of(i) for i in ids} == {"terminated"}
    assert env.cloud.alarms(f"flambe-cluster/{NAME}/") == []
    assert not any(env.cloud.host_of(i).is_running() for i in ids)
    assert "does not exist" in env.cli("down", str(env.config), check=0).stderr


def test_a_gpu_factory_whose_nvidia_smi_sees_none_fails_up_naming_it(env, tmp_path):
    name = "aws-nogpu"
    env.cloud.factory_gpus = 0
    config = env.cloud.write_config(tmp_path / "nogpu.yaml", name, factories_type="g4dn.xlarge", factories_num=1,
                                    connect_timeout=120)
    try:
        done = env.cloud.cli("up", str(config), home=env.home, timeout=900)
        assert done.returncode == 1, dump(done)
        assert f"{name}_factory0" in done.stderr and "promises 1 GPU but nvidia-smi sees none" in done.stderr, \
            dump(done)
        assert "Use an image that carries the driver" in done.stderr
    finally:
        env.cloud.factory_gpus = None
        env.cloud.cli("down", str(config), home=env.home, timeout=300)
    assert env.cloud.instances(name, LIVE) == []
