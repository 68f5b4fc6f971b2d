"""Resize in place on real test hosts (ssh provider): 1+2 -> 1+4 -> 1+1 under a running job.

The cluster file's list of factories changes and `up` runs again: new
factories are prepared and joined to the running head, removed ones are
drained (their Ray node stopped) and forgotten (pins, the cluster's record).
A job that counts its Ray workers runs throughout and sees the counts
change; the head's process (its ``gcs_server`` PID on the orchestrator, with
the machine's boot id) and the workers that stay are the same before and after.
"""

from __future__ import annotations

import json
import os
import time

import pytest
from aws_support import aws_cloud  # noqa: F401 - a fixture
from helpers import run_cli, ssh_cluster_yaml

NAME = "resize"
COUNT_JOB = __import__("pathlib").Path(__file__).parent / "jobs" / "count_workers.py"


def pids(host, pattern: str) -> list[int]:
    """PIDs of the processes matching ``pattern`` inside ``host``'s own PID namespace (only its processes)."""
    done = host.run_in_namespace(["pgrep", "-f", pattern])
    return sorted(int(p) for p in done.stdout.split())


def boot_id(host) -> str:
    return host.run_in_namespace(["cat", "/proc/sys/kernel/random/boot_id"]).stdout.strip()


def authorized_keys(host) -> str:
    return (host.home / ".ssh" / "authorized_keys").read_text()


def cluster_public_key(host) -> str | None:
    """The cluster key's public line installed on ``host`` (None when there is none)."""
    path = host.home / ".ssh" / f"flambe-cluster-{NAME}.pub"
    return path.read_text().strip() if path.exists() else None


def test_the_journal_forgets_released_instances_one_by_one(tmp_path):
    from flambe_cluster.records import CreatedResource
    from flambe_cluster.state import ClusterState

    journal = ClusterState(tmp_path).ensure().journal
    earlier, later = journal.start_run(), journal.start_run()
    earlier.record(CreatedResource("launch", "t1", {"instance_ids": ["i-a", "i-b"], "count": 2}))
    earlier.record(CreatedResource("alarm", "x/i-a", {"instance_id": "i-a"}))
    later.record(CreatedResource("launch", "t2", {"instance_ids": ["i-c"]}))
    journal.forget_instances({"i-b", "i-c"})
    assert {r.resource_id: r.details for r in journal.outstanding()} == {
        "t1": {"instance_ids": ["i-a"], "count": 2}, "x/i-a": {"instance_id": "i-a"}}
    assert [r.resource_id for r in earlier.created()] == ["t1", "x/i-a"], "still the earlier run's"
    assert later.created() == []
    journal.forget_instances({"i-a"})
    assert journal.outstanding() == []


def test_members_are_recorded_by_identity_and_dropped(tmp_path):
    from flambe_cluster.records import ClusterInstances, Endpoint, identity
    from flambe_cluster.state import MEMBERS, ClusterState

    state = ClusterState(tmp_path)
    assert state.members() is None, "no record: nothing to shrink"
    hosts = list(ClusterInstances.named("c", [(Endpoint.parse(f"10.0.0.{i}"), Endpoint.parse(f"10.0.0.{i}"))
                                              for i in (1, 2, 3)]))
    state.record_members(hosts)
    assert [identity(h) for h in state.members()] == [identity(h) for h in hosts]
    state.drop_members(hosts[2:])
    assert [h.name for h in state.members()] == ["c_orchestrator", "c_factory0"]
    (state.root / MEMBERS).write_text("{damaged")
    assert state.members() is None
    state.drop_members()
    assert not (state.root / MEMBERS).exists()


class Env:
    def __init__(self, network, folder, key):
        self.network, self.hosts, self.folder, self.key = network, network.hosts, folder, key
        self.config = folder / "cluster.yaml"
        self.state = folder / "state"

    def write(self, factories: int):
        ssh_cluster_yaml(self.config, self.hosts[:1 + factories], self.key, NAME, ray_timeout=90)

    def cli(self, command, *args, check=None, timeout=900):
        """``flambe-cluster COMMAND CONFIG ARGS...``"""
        return run_cli(command, str(self.config), *args, state_home=self.state, check=check, timeout=timeout)

    def status(self) -> dict:
        return json.loads(self.cli("status", "--json").stdout)

    def counts(self) -> list[int]:
        """Every worker count the job printed so far, in order."""
        text = self.cli("logs", check=0).stdout
        return [int(line.split()[1]) for line in text.splitlines() if line.startswith("workers ")]

    def wait_for_count(self, wanted: int, timeout: float = 60) -> list[int]:
        deadline = time.monotonic() + timeout
        while True:
            counts = self.counts()
            if counts and counts[-1] == wanted:
                return counts
            assert time.monotonic() < deadline, f"the job never saw {wanted} workers: {counts[-20:]}"
            time.sleep(1)

    def pins(self) -> str:
        path = self.state / "clusters" / NAME / "known_hosts"
        return path.read_text() if path.exists() else ""


def hosts_env(flambe_test_hosts, flambe_client_key, tmp_path, count: int):
    """An :class:`Env` on ``count`` fresh test hosts; afterwards `down`, then the hosts go."""
    network = flambe_test_hosts(count)
    env = Env(network, tmp_path, flambe_client_key.path)
    try:
        yield env
    finally:
        try:
            env.cli("down", timeout=300)  # the hosts the file lists last; every host's processes end with the network
        finally:
            network.close()


@pytest.fixture
def env(flambe_test_hosts, flambe_client_key, tmp_path):
    yield from hosts_env(flambe_test_hosts, flambe_client_key, tmp_path, 5)


@pytest.mark.hosts
def test_grow_then_shrink_under_a_running_job(env):
    orchestrator = env.hosts[0]
    env.write(2)
    env.cli("up", check=0)
    head, boot = pids(orchestrator, "gcs_server"), boot_id(orchestrator)
    assert len(head) == 1, head
    workers_before = {h.address: pids(h, "raylet") for h in env.hosts[1:3]}
    assert all(workers_before.values()), workers_before
    env.cli("submit", str(COUNT_JOB), check=0)
    assert env.wait_for_count(2)[-1] == 2

    # 1+2 -> 1+4: two workers join the running head; nothing else restarts, the job goes on
    env.write(4)
    grow = env.cli("up", check=0)
    assert ("adding 2 factories to the cluster" in grow.stderr
            and grow.stderr.count("starting the Ray worker on ") == 2), grow.stderr
    status = env.status()
    assert status["ray"]["alive_workers"] == 4 and status["job"]["state"] == "running", status
    counts = env.wait_for_count(4)
    assert 2 in counts and counts[-1] == 4
    assert pids(orchestrator, "gcs_server") == head and boot_id(orchestrator) == boot, "the head was restarted"
    assert {h.address: pids(h, "raylet") for h in env.hosts[1:3]} == workers_before, "a worker was restarted"
    assert all(pids(h, "raylet") for h in env.hosts[3:5])
    for host in env.hosts[3:5]:
        assert host.address in env.pins()

    # 1+4 -> 1+1: three workers drained and forgotten; the head, the worker that stays and the job go on
    env.write(1)
    old_key = cluster_public_key(env.hosts[0])
    from test_cli_manners import answered_on_a_terminal

    asked, code = answered_on_a_terminal(["up", str(env.config)], {**os.environ, "FLAMBE_CLUSTER_HOME": str(env.state)},
                                         b"n\n")
    assert code == 2, asked
    assert "A job runs on cluster 'resize'. Remove 3 factories (resize_factory1" in asked, asked
    assert "was left as it is: no factory was removed" in asked, asked
    assert all(pids(h, "raylet") for h in env.hosts[2:5]) and env.wait_for_count(4)[-1] == 4, "a no changes nothing"
    shrink = env.cli("up", check=0)  # no terminal: no question, as for `down`
    assert "removing 3 factories" in shrink.stderr, shrink.stderr
    status = env.status()
    assert status["ray"]["alive_workers"] == 1 and status["job"]["state"] == "running", status
    assert [n["ip"] for n in status["ray"]["nodes"] if n["alive"] and not n["head"]] == [env.hosts[1].address]
    assert env.wait_for_count(1)[-1] == 1
    assert pids(orchestrator, "gcs_server") == head and boot_id(orchestrator) == boot, "the head was restarted"
    assert pids(env.hosts[1], "raylet") == workers_before[env.hosts[1].address], "the worker that stays was restarted"
    for host in env.hosts[2:5]:
        assert pids(host, "raylet") == [], f"{host.address} still runs a Ray node"
        assert host.address not in env.pins(), f"{host.address} is still pinned"
    assert env.hosts[1].address in env.pins()
    for host in env.hosts[2:5]:  # removed: the cluster key is revoked there
        assert cluster_public_key(host) is None and old_key not in authorized_keys(host), host.address
    new_key = cluster_public_key(env.hosts[0])
    assert new_key and new_key != old_key, "the hosts that stay got a new pair"
    for host in env.hosts[:2]:
        assert cluster_public_key(host) == new_key and new_key in authorized_keys(host)
        assert old_key not in authorized_keys(host), host.address

    # an unchanged file: the next `up` changes nothing
    again = env.cli("up", check=0)
    assert "removing" not in again.stderr and "Ray already up: 1 workers alive" in again.stderr, again.stderr
    assert pids(orchestrator, "gcs_server") == head
    env.cli("exec", "--", "touch stop-counting", check=0)


@pytest.fixture
def small_env(flambe_test_hosts, flambe_client_key, tmp_path):
    yield from hosts_env(flambe_test_hosts, flambe_client_key, tmp_path, 3)


@pytest.mark.hosts
def test_a_removed_factory_that_does_not_answer_is_released_anyway(small_env):
    env = small_env
    env.write(2)
    env.cli("up", check=0)
    gone = env.hosts[2]
    gone.stop()  # the machine died: its Ray node with it
    env.write(1)
    shrink = env.cli("up", check=0)
    assert "removing 1 factories" in shrink.stderr and f"{gone.address}) did not answer" in shrink.stderr, shrink.stderr
    assert env.status()["ray"]["alive_workers"] == 1
    assert gone.address not in env.pins()
    members = json.loads((env.state / "clusters" / NAME / "members.json").read_text())
    assert sorted(m["private"] for m in members) == sorted(h.address for h in env.hosts[:2])


TASK_JOB = COUNT_JOB.with_name("task_on_factory.py")


@pytest.mark.hosts
def test_a_shrink_drains_the_removed_factory_its_task_finishes(small_env):
    env = small_env
    env.write(2)
    env.cli("up", check=0)
    leaving = env.hosts[2]
    env.cli("submit", str(TASK_JOB), leaving.address, check=0)
    marker = leaving.home / "task-started"
    deadline = time.monotonic() + 60
    while not marker.exists():  # the task runs on the factory about to leave
        assert time.monotonic() < deadline, env.cli("logs", check=0).stdout
        time.sleep(0.2)
    env.write(1)
    shrink = env.cli("up", "-y", check=0)
    assert f"draining resize_factory1 ({leaving.address})" in shrink.stderr, shrink.stderr
    line = next(text for text in shrink.stderr.splitlines() if "drained, its tasks done after" in text)
    assert float(line.rsplit(" ", 1)[1].rstrip("s")) >= 3, f"the drain did not wait for the task: {line}"
    logs = env.cli("logs", check=0).stdout
    assert f"finished {leaving.address}" in logs, f"the task was not let finish:\n{logs}"
    assert pids(leaving, "raylet") == [], "the removed factory still runs a Ray node"
    status = env.status()
    assert status["ray"]["alive_workers"] == 1 and status["job"]["state"] == "running", status
    env.cli("exec", "--", "touch stop-waiting", check=0)


# --- AWS on moto: each instance moto launches is a real test host (aws_support.MotoCloud)

AWS_NAME = "aws-resize"
LIVE = ("pending", "running", "stopping", "stopped")


class AWSEnv(Env):
    def __init__(self, cloud, folder):
        self.cloud, self.folder = cloud, folder
        self.config, self.state = folder / "cluster.yaml", folder / "state"

    def write(self, factories: int):
        self.cloud.write_config(self.config, AWS_NAME, factories_num=factories, ray_timeout=90)

    def cli(self, command, *args, check=None, timeout=900):
        return self.cloud.cli(command, str(self.config), *args, home=self.state, check=check, timeout=timeout)

    def pins(self) -> str:
        path = self.state / "clusters" / AWS_NAME / "known_hosts"
        return path.read_text() if path.exists() else ""

    def roles(self) -> dict[str, list[str]]:
        """role -> live instance ids, in the order `status` lists the hosts."""
        found: dict[str, list[str]] = {}
        for host in self.status()["hosts"]:
            found.setdefault(host["role"], []).append(host["instance_id"])
        return found


@pytest.fixture
def aws_env(aws_cloud, tmp_path):
    env = AWSEnv(aws_cloud, tmp_path)
    try:
        yield env
    finally:
        if aws_cloud.instances(AWS_NAME, LIVE):
            env.cli("down", timeout=300)


@pytest.mark.hosts
def test_aws_grow_then_shrink_terminates_the_removed_factories(aws_env):
    from flambe_cluster.state import ClusterState

    env, cloud = aws_env, aws_env.cloud
    env.write(2)
    env.cli("up", check=0)
    [orchestrator_id] = env.roles()["orchestrator"]
    orchestrator = cloud.host_of(orchestrator_id)
    head, boot = pids(orchestrator, "gcs_server"), boot_id(orchestrator)
    assert len(head) == 1, head
    first = env.roles()["factory"]
    env.cli("submit", str(COUNT_JOB), check=0)
    assert env.wait_for_count(2)[-1] == 2

    env.write(4)
    grow = env.cli("up", check=0)
    assert ("adding 2 factories to the cluster" in grow.stderr
            and grow.stderr.count("starting the Ray worker on ") == 2), grow.stderr
    factories = env.roles()["factory"]
    assert factories[:2] == first and len(factories) == 4, factories
    status = env.status()
    assert status["ray"]["alive_workers"] == 4 and status["job"]["state"] == "running", status
    assert env.wait_for_count(4)[-1] == 4
    assert pids(orchestrator, "gcs_server") == head and boot_id(orchestrator) == boot, "the head was restarted"
    alarmed = sorted(a["Dimensions"][0]["Value"] for a in cloud.alarms(f"flambe-cluster/{AWS_NAME}/"))
    assert alarmed == sorted(factories)

    env.write(1)
    shrink = env.cli("up", check=0)
    assert "removing 3 factories" in shrink.stderr, shrink.stderr
    removed = factories[1:]
    assert {cloud.state_of(i) for i in removed} == {"terminated"}
    assert sorted(i["InstanceId"] for i in cloud.instances(AWS_NAME, LIVE)) == sorted([orchestrator_id, factories[0]])
    assert env.roles()["factory"] == [factories[0]]
    assert [a["Dimensions"][0]["Value"] for a in cloud.alarms(f"flambe-cluster/{AWS_NAME}/")] == [factories[0]]
    status = env.status()
    assert status["ray"]["alive_workers"] == 1 and status["job"]["state"] == "running", status
    assert env.wait_for_count(1)[-1] == 1
    assert pids(orchestrator, "gcs_server") == head and boot_id(orchestrator) == boot, "the head was restarted"
    journal = ClusterState(env.state / "clusters" / AWS_NAME).journal
    still = [r for r in journal.outstanding()
             if set(r.details.get("instance_ids", ())) & set(removed) or r.details.get("instance_id") in removed]
    assert still == [], still
    for instance_id in removed:
        assert cloud.host_of(instance_id).address not in env.pins()


# --- GCP: the release hook against the local Compute Engine fake (no hosts)


def test_gcp_releases_exactly_the_removed_factories(flambe_client_key, flambe_state_home):
    from flambe_cluster import Cluster
    from flambe_cluster.config import parse_config
    from gcp_fake import FakeComputeEngine

    with FakeComputeEngine(addresses=[f"10.213.251.{i}" for i in range(4, 12)], boot_seconds=0.3) as fake:
        raw = {"provider": "gcp", "name": "shrink", "key": str(flambe_client_key.path), "username": "flambe",
               "zone": "us-central1-a", "project": fake.project, "api_endpoint": fake.url, "use_public": False}
        big = Cluster.from_config(parse_config({**raw, "factories_num": 3}))
        big.load_all_instances()
        small = Cluster.from_config(parse_config({**raw, "factories_num": 1}))
        small.load_all_instances()
        assert small.factories[0].instance_id == big.factories[0].instance_id, "the lowest index stays"
        removed = big.session.factories[1:]
        small.hooks.release_instances(config=small.config, instances=removed)
        small.hooks.release_instances(config=small.config, instances=removed)  # idempotent
        assert sorted(i["name"] for i in fake.live_instances()) == sorted(
            [big.orchestrator.instance_id, big.factories[0].instance_id])
        small.hooks.terminate(config=small.config, instances=None)
