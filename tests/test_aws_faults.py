"""A fault at each step of `up` in turn, through the real command line, on moto + real test hosts.

Each run exits non-zero with a message naming the step; afterwards every
instance that run created is terminated (its host is gone too) and the
instances that existed before — one untagged, one of another cluster, and in
one case the cluster's own orchestrator — are untouched.  Every fault strikes
before software is prepared, so each test takes seconds.  (A fault during
validation is in test_aws_provider.py: no host is needed for it.)
"""

from __future__ import annotations

import signal
import threading
import time

import pytest
from aws_support import aws_cloud, dump  # noqa: F401 - aws_cloud is a fixture

pytestmark = pytest.mark.hosts


@pytest.fixture(scope="module")
def bystanders(aws_cloud):
    """Instances that exist before any run: untagged, and another cluster's orchestrator."""
    untagged = aws_cloud.make_instance()
    other = aws_cloud.make_instance({"flambe-cluster:cluster": "other", "flambe-cluster:creator": "root",
                                     "flambe-cluster:role": "orchestrator",
                                     "flambe-cluster:launch": "old-orchestrator"})
    return untagged + other


@pytest.fixture
def cloud(aws_cloud, bystanders):
    yield aws_cloud
    aws_cloud.clear_faults()
    assert {aws_cloud.state_of(i) for i in bystanders} == {"running"}, "instances that existed before are untouched"


def created_by(cloud, name: str) -> list[dict]:
    return cloud.instances(name, states=("pending", "running", "stopping", "stopped", "shutting-down", "terminated"))


def assert_rolled_back(cloud, name: str, expected: int) -> None:
    made = created_by(cloud, name)
    assert len(made) == expected, [i["InstanceId"] for i in made]
    assert {i["State"]["Name"] for i in made} <= {"terminated"}, "no instance created by the run is left"
    for instance in made:
        assert not cloud.host_of(instance["InstanceId"]).is_running()


def ours(name):
    return lambda call: call.tags.get("flambe-cluster:cluster") == name


def test_creating_the_orchestrator_fails(cloud, tmp_path):
    cloud.fault("RunInstances", "InstanceLimitExceeded",
                message="You have requested more instances than your current limit.",
                when=lambda call: call.role == "orchestrator")
    done = cloud.cli("up", str(cloud.write_config(tmp_path / "c.yaml", "fault-orchestrator")), home=tmp_path, check=1)
    assert "AWS, creating the orchestrator (t3.micro): InstanceLimitExceeded" in done.stderr, dump(done)
    assert "ask AWS for a higher quota" in done.stderr
    assert_rolled_back(cloud, "fault-orchestrator", 0)


def test_capacity_error_for_the_factories_after_the_orchestrator_was_created(cloud, tmp_path):
    cloud.fault("RunInstances", "InsufficientInstanceCapacity", status=500,
                message="We currently do not have sufficient t3.micro capacity in the Availability Zone you requested.",
                when=lambda call: call.role == "factory")
    done = cloud.cli("up", str(cloud.write_config(tmp_path / "c.yaml", "fault-capacity")), home=tmp_path, check=1)
    assert "AWS, creating factories (2 x t3.micro): InsufficientInstanceCapacity" in done.stderr, dump(done)
    assert "rolling back" in done.stderr
    assert cloud.server.count("RunInstances", when=lambda c: ours("fault-capacity")(c) and c.role == "factory") == 2, \
        "boto3 retried the 500 once (AWS_MAX_ATTEMPTS=2)"
    assert_rolled_back(cloud, "fault-capacity", 1)


def test_capacity_error_leaves_the_orchestrator_that_existed_before(cloud, tmp_path):
    [orchestrator] = cloud.make_instance({"flambe-cluster:cluster": "fault-kept", "flambe-cluster:creator": "root",
                                          "flambe-cluster:role": "orchestrator",
                                          "flambe-cluster:launch": "earlier-orchestrator"})
    cloud.fault("RunInstances", "InsufficientInstanceCapacity", status=500, when=lambda call: call.role == "factory")
    done = cloud.cli("up", str(cloud.write_config(tmp_path / "c.yaml", "fault-kept", creator="root")),
                     home=tmp_path, check=1)
    assert "creating factories (2 x t3.micro): InsufficientInstanceCapacity" in done.stderr, dump(done)
    assert cloud.state_of(orchestrator) == "running", "reused, not created by this run: not rolled back"
    assert cloud.host_of(orchestrator).is_running()
    cloud.ec2.terminate_instances(InstanceIds=[orchestrator])


def test_throttling_beyond_the_retries_while_waiting_for_instances_to_run(cloud, tmp_path):
    name = "fault-throttled"
    launched = lambda call: cloud.server.count("RunInstances", when=ours(name)) >= 2  # noqa: E731
    cloud.fault("DescribeInstances", "RequestLimitExceeded", status=503, message="Request limit exceeded.",
                times=2, when=launched)
    done = cloud.cli("up", str(cloud.write_config(tmp_path / "c.yaml", name)), home=tmp_path, check=1)
    assert "AWS, waiting for instances to run: RequestLimitExceeded" in done.stderr, dump(done)
    assert "raise AWS_MAX_ATTEMPTS" in done.stderr
    assert_rolled_back(cloud, name, 3)


def test_an_instance_that_never_answers_ssh(cloud, tmp_path):
    name = "fault-silent"
    cloud.unanswering["factory"] = 1  # the first factory launched is cut off the network
    done = cloud.cli("up", str(cloud.write_config(tmp_path / "c.yaml", name, connect_timeout=4)),
                     home=tmp_path, check=1)
    [silent] = [i for i in created_by(cloud, name)
                if {"Key": "flambe-cluster:role", "Value": "factory"} in i["Tags"] and i["AmiLaunchIndex"] == 0]
    assert "connecting to 3 hosts" in done.stderr, dump(done)
    assert f"{name}_factory0 ({silent['PrivateIpAddress']}): no SSH login as 'flambe' within 4 s" in done.stderr
    assert "rolling back 2 resources created by this run" in done.stderr
    assert_rolled_back(cloud, name, 3)


def test_a_setup_command_fails(cloud, tmp_path):
    name = "fault-setup"
    path = cloud.write_config(tmp_path / "c.yaml", name, tag=True, setup_cmds=["echo broken >&2; exit 3"])
    assert path.read_text().startswith("!AWSCluster\n"), "the seed's tag"
    done = cloud.cli("up", str(path), home=tmp_path, check=1)
    assert "setup command 1/1 on 3 hosts: echo broken >&2; exit 3" in done.stderr, dump(done)
    assert "a remote command failed on 3 hosts" in done.stderr and "exited with code 3" in done.stderr
    assert_rolled_back(cloud, name, 3)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_while_waiting_for_ssh_rolls_back_once_and_exits(cloud, tmp_path, signum):
    name = f"fault-{signum.name.lower()}"
    cloud.unanswering["orchestrator"] = 1
    process = cloud.popen("up", str(cloud.write_config(tmp_path / "c.yaml", name, connect_timeout=15)), home=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while len(cloud.instances(name)) < 3 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)
        process.send_signal(signum)
        sent = time.monotonic()
        _stdout, stderr = process.communicate(timeout=60)
        waited = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    print(f"{signum.name} while connecting on moto: exit {process.returncode} after {waited:.2f} s")
    assert process.returncode == 128 + signum, stderr
    assert waited < 5, f"exited {waited:.1f} s after {signum.name}"
    assert f"interrupted ({signum.name})" in stderr and stderr.count("rolling back") == 1, stderr
    assert "ERROR" not in stderr, "the interrupt is reported once, by the command line"
    assert_rolled_back(cloud, name, 3)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name)
def test_a_signal_while_launching_rolls_back_what_the_launch_made(cloud, tmp_path, signum):
    """The signal comes while the factories' RunInstances call is in flight (EC2 launched them, its answer has
    not come back): the run exits within 5 s and its rollback finds and terminates those instances too."""
    name = f"launch-{signum.name.lower()}"
    factories = lambda call: ours(name)(call) and call.role == "factory"  # noqa: E731
    barrier = threading.Barrier(2)
    with cloud.server._lock:
        cloud.server.holds.append((factories, barrier))
    process = cloud.popen("up", str(cloud.write_config(tmp_path / "c.yaml", name)), home=tmp_path)
    try:
        deadline = time.monotonic() + 60
        while barrier.n_waiting < 1:  # the answer to the factories' launch is held
            assert process.poll() is None and time.monotonic() < deadline, "the factories' launch never came"
            time.sleep(0.1)
        assert len(cloud.instances(name)) == 3, "EC2 launched them; the answer is on its way"
        process.send_signal(signum)
        sent = time.monotonic()
        _stdout, stderr = process.communicate(timeout=60)
        waited = time.monotonic() - sent
    finally:
        barrier.abort()
        with cloud.server._lock:
            cloud.server.holds.clear()
        if process.poll() is None:
            process.kill()
            process.communicate()
    print(f"{signum.name} while launching on moto: exit {process.returncode} after {waited:.2f} s")
    assert process.returncode == 128 + signum, stderr
    assert waited < 5, f"exited {waited:.1f} s after {signum.name}"
    assert f"interrupted ({signum.name})" in stderr and stderr.count("rolling back") == 1, stderr
    assert "Traceback" not in stderr, stderr
    assert_rolled_back(cloud, name, 3)
    if signum == signal.SIGINT:  # the next up completes (once: a whole up installs Ray on three hosts)
        config = str(cloud.write_config(tmp_path / "c.yaml", name))
        try:
            done = cloud.cli("up", config, home=tmp_path, timeout=900)
            assert done.returncode == 0 and "Ray cluster up" in done.stderr, dump(done)
        finally:
            down = cloud.cli("down", config, home=tmp_path, timeout=300)
        assert down.returncode == 0, dump(down)
        assert not cloud.instances(name), "down terminated the cluster"


def test_down_of_a_stopped_cluster_terminates_it(cloud, tmp_path):
    name = "fault-stopped-down"
    tags = {"flambe-cluster:cluster": name, "flambe-cluster:creator": "root"}
    ids = cloud.make_instance({**tags, "flambe-cluster:role": "orchestrator",
                               "flambe-cluster:launch": "a-orchestrator"})
    ids += cloud.make_instance({**tags, "flambe-cluster:role": "factory", "flambe-cluster:launch": "a-factory"},
                               count=2)
    cloud.ec2.stop_instances(InstanceIds=ids)
    try:
        done = cloud.cli("down", str(cloud.write_config(tmp_path / "c.yaml", name, creator="root", connect_timeout=2)),
                         home=tmp_path)
        assert done.returncode == 0, dump(done)
        assert {cloud.state_of(i) for i in ids} == {"terminated"}
    finally:
        cloud.ec2.terminate_instances(InstanceIds=ids)
