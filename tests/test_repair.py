"""Repair: `up` replaces exactly the lost factories; `up --watch` keeps a cluster whole while a job runs.

On AWS (moto + test hosts, spot factories): a factory instance terminated
under a running job (as EC2 does when it interrupts a spot instance) is
replaced by a plain `up`, then another one by `up --watch`, which notices it
on its own; each time the replacement's Ray worker joins the running head,
the job counting its workers sees the count drop and recover, and the head's
process is the same throughout.  Ctrl-C ends the watch (exit 0) and leaves
the cluster as it is.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from aws_support import aws_cloud  # noqa: F401 - a fixture
from test_resize import AWS_NAME, COUNT_JOB, LIVE, AWSEnv, aws_env, boot_id, pids  # noqa: F401 - aws_env: a fixture


class Watch:
    """`flambe-cluster up CONFIG --watch SECONDS` in the background, its output in files."""

    def __init__(self, env, seconds: float, *more: str):
        self.err_path = env.folder / "watch.err"
        self.out_path = env.folder / "watch.out"
        if hasattr(env, "cloud"):
            environment = env.cloud.cli_env(env.state)
        else:
            environment = {**os.environ, "FLAMBE_CLUSTER_HOME": str(env.state), "COLUMNS": "200"}
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "flambe_cluster", "up", str(env.config), "--watch", str(seconds), *more],
                stdout=out, stderr=err, text=True, env=environment, start_new_session=True)

    @property
    def output(self) -> str:
        return self.err_path.read_text() + self.out_path.read_text()

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.output:
            assert self.process.poll() is None, f"the watch ended (exit {self.process.returncode}):\n{self.output}"
            assert time.monotonic() < deadline, f"the watch never said {text!r}:\n{self.output}"
            time.sleep(0.5)
        return self.output

    def interrupt(self, timeout: float = 60) -> int:
        os.kill(self.process.pid, signal.SIGINT)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """End it whatever it does (its own process group only)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)


def read_counts(env, orchestrator, name: str) -> None:
    """Let ``env`` read the job's worker counts from the orchestrator's disk: `logs` refuses an incomplete cluster."""
    log = orchestrator.home / ".flambe-cluster" / name / "job" / "output.log"

    def counts() -> list[int]:
        text = log.read_text() if log.exists() else ""
        return [int(line.split()[1]) for line in text.splitlines() if line.startswith("workers ")]

    env.counts = counts


def after(counts_before: int, env: AWSEnv) -> list[int]:
    return env.counts()[counts_before:]


# --- the watch's rounds on a stand-in session (no hosts): what it says, journals and repairs


class FakePool:
    """The watch's commands on stand-in hosts: its probe of a factory (which Ray nodes run there) and the
    orchestrator's check of which factories' SSH ports answer.  ``down``: machines that are off (nobody reaches
    them); ``cut``: the client has lost its route to every host (they still reach each other)."""

    connect_timeout = 60.0

    def __init__(self):
        self.down: set[str] = set()
        self.without_node: set[str] = set()  # answering hosts on which no Ray node of cluster "c" runs
        self.silent: set[str] = set()  # alive hosts that do not answer the client (busy, or a route of its own)
        self.cut = False

    def connect_within(self, seconds):
        return contextlib.nullcontext()

    def run(self, host, command, timeout=None, check=True):
        import shlex

        from flambe_cluster.errors import ClusterError

        if self.cut or host.private.host in self.down | self.silent:
            raise ClusterError(f"{host.label}: no answer")
        if "sock.recv(4)" in command:  # the orchestrator's check: HOST:PORT arguments after the script
            targets = shlex.split(command)[3:]
            answer = {t: t.rpartition(":")[0] not in self.down for t in targets}
        else:
            answer = [] if host.private.host in self.without_node else [{"cluster": "c", "ip": host.private.host}]
        return type("Result", (), {"ok": True, "stdout": json.dumps(answer)})()

    def map(self, hosts, action):
        return {h: action(h) for h in hosts}


def fake_session(tmp_path, ids):
    from types import SimpleNamespace

    from flambe_cluster.records import ClusterInstances, Endpoint
    from flambe_cluster.state import ClusterState

    ends = [(Endpoint.parse(f"10.0.0.{i}"), Endpoint.parse(f"10.0.0.{i}")) for i in (1, 2, 3)]
    instances = ClusterInstances.named("c", ends, instance_ids=ids)
    lines: list[str] = []
    session = SimpleNamespace(
        name="c", config=SimpleNamespace(connect_timeout=60.0, python="python3", factories_num=2), pool=FakePool(),
        lines=lines,
        orchestrator=instances.orchestrator, factories=list(instances.factories), on_step=lines.append,
        require_orchestrator=lambda: instances.orchestrator,
        state=ClusterState(tmp_path / "state"), run_journal=None, released=[],
        hooks=SimpleNamespace(find_instances=lambda config: instances))
    session.hooks.release_instances = lambda config, instances: session.released.extend(instances)
    session.hooks.idle_removed = lambda config, instances: [
        i for i in instances if i.instance_id in session.idle_ids]
    session.idle_ids = set()  # instances their idle policy released (the provider says so)
    session.hosts = lambda: [session.orchestrator, *session.factories]
    return session


def watch_actions(session) -> list[str]:
    return [e["action"] for e in session.state.journal.entries() if e["event"] == "watch"]


def test_a_silent_machine_the_user_brought_is_waited_for_then_rejoins(tmp_path, monkeypatch):
    from flambe_cluster import raycluster, repair

    session = fake_session(tmp_path, None)
    alive = {"10.0.0.2": {}, "10.0.0.3": {}}
    monkeypatch.setattr(raycluster, "nodes", lambda s: [{"ip": ip, "alive": True, "head": False} for ip in alive])
    repairs: list[int] = []
    watch = repair.Watch(session, lost_after=0)
    watch.round(lambda before: repairs.append(before() or 1))
    assert repairs == [] and session.lines == [] and watch_actions(session) == [], "a whole cluster: nothing to do"
    session.pool.down.add("10.0.0.3")
    del alive["10.0.0.3"]
    watch.round(lambda before: repairs.append(before() or 1))
    watch.round(lambda before: repairs.append(before() or 1))
    assert repairs == [] and session.released == [], "a machine the user brought is not replaced by the watch"
    assert len(session.lines) == 1 and "waiting for a machine to answer at its address" in session.lines[0], \
        session.lines
    session.pool.down.clear()  # a machine answers at the address again, without a Ray worker
    watch.round(lambda before: repairs.append(before() or 1))
    assert repairs == [1]
    assert [line.split(":")[0] for line in session.lines[1:]] == [
        "c_factory1 (10.0.0.3) is lost", "c_factory1 (10.0.0.3) rejoined Ray (2 workers alive)"], session.lines
    assert watch_actions(session) == ["lost", "lost", "rejoined"], "one journal entry per line"


def test_a_worker_the_head_still_lists_whose_node_is_gone_rejoins(tmp_path, monkeypatch):
    """The head notices a node that went away only seconds later: the factory's own account decides."""
    from flambe_cluster import raycluster, repair

    session = fake_session(tmp_path, None)
    monkeypatch.setattr(raycluster, "nodes", lambda s: [{"ip": ip, "alive": True, "head": False}
                                                        for ip in ("10.0.0.2", "10.0.0.3")])
    repairs: list[int] = []
    watch = repair.Watch(session, lost_after=0)
    session.pool.without_node.add("10.0.0.3")
    watch.round(lambda before: repairs.append(before() or 1))
    assert repairs == [1], "the head's stale 'alive' does not hide a stopped node"
    assert session.lines[0] == "c_factory1 (10.0.0.3) is lost: its Ray worker is not alive", session.lines


def test_a_silent_cloud_factory_is_released_and_replaced_a_failed_repair_is_said(tmp_path, monkeypatch):
    from flambe_cluster import raycluster, repair, resize
    from flambe_cluster.errors import ClusterError

    session = fake_session(tmp_path, ["i-0", "i-1", "i-2"])
    monkeypatch.setattr(raycluster, "nodes", lambda s: [])
    monkeypatch.setattr(resize, "forget", lambda s, hosts: None)
    watch = repair.Watch(session, lost_after=0)
    session.pool.down.add("10.0.0.2")

    def failing(before):
        before()  # the release, under the lock; then `up` fails
        raise ClusterError("no capacity")

    watch.round(failing)
    assert [h.instance_id for h in session.released] == ["i-1"], "released so that up creates another"
    assert "repair failed, trying again in the next round: no capacity" in session.lines[-1]
    assert watch_actions(session) == ["lost", "repair-failed"]


def test_a_client_cut_off_from_every_host_releases_nothing_and_says_once_why_it_waits(tmp_path, monkeypatch):
    from flambe_cluster import raycluster, repair

    session = fake_session(tmp_path, ["i-0", "i-1", "i-2"])
    monkeypatch.setattr(raycluster, "nodes", lambda s: [])
    watch = repair.Watch(session, lost_after=0)
    session.pool.cut = True  # the hosts still reach each other; the provider still answers
    repairs: list[int] = []
    for _ in range(3):
        watch.round(lambda before: repairs.append(before() or 1))
    assert session.released == [] and repairs == [], "nothing is released on the client's view alone"
    assert session.lines == ["the client reaches neither the orchestrator nor c_factory0 (10.0.0.2), c_factory1 "
                             "(10.0.0.3): its own route (VPN, bastion) may be down; waiting, nothing is released"]
    assert watch_actions(session) == ["waiting"]


def test_a_factory_silent_to_the_client_that_the_orchestrator_reaches_is_slow_not_lost(tmp_path, monkeypatch):
    from flambe_cluster import raycluster, repair, resize

    session = fake_session(tmp_path, ["i-0", "i-1", "i-2"])
    monkeypatch.setattr(resize, "forget", lambda s, hosts: None)
    monkeypatch.setattr(raycluster, "nodes", lambda s: [])  # the head does not list it: the orchestrator vouches
    watch = repair.Watch(session, lost_after=0)
    session.pool.silent.add("10.0.0.3")
    repairs: list[int] = []
    watch.round(lambda before: repairs.append(before() or 1))
    watch.round(lambda before: repairs.append(before() or 1))
    assert session.released == [] and repairs == []
    assert len(session.lines) == 1 and "slow, not lost" in session.lines[0], session.lines
    session.pool.silent.clear()
    session.pool.down.add("10.0.0.3")  # now off: neither the orchestrator nor the head sees it
    watch.round(lambda before: repairs.append(before() or 1))
    assert [h.instance_id for h in session.released] == ["i-2"] and repairs == [1], session.lines


def test_a_factory_its_idle_policy_released_is_left_alone_and_said_once(tmp_path, monkeypatch):
    from flambe_cluster import raycluster, repair
    from flambe_cluster.errors import ClusterError

    session = fake_session(tmp_path, ["i-0", "i-1", "i-2"])
    monkeypatch.setattr(raycluster, "nodes", lambda s: [{"ip": "10.0.0.2", "alive": True, "head": False}])
    watch = repair.Watch(session, lost_after=0)
    session.pool.down.add("10.0.0.3")  # terminated by its idle alarm: gone, and the cluster incomplete

    def incomplete(config):
        raise ClusterError("cluster 'c' is incomplete: it has an orchestrator and 1 of 2 factories")

    session.hooks.find_instances = incomplete
    session.idle_ids.add("i-2")
    repairs: list[int] = []
    for _ in range(3):
        watch.round(lambda before: repairs.append(before() or 1))
    assert repairs == [] and session.released == [], "what the idle policy released is not replaced"
    assert session.lines == ["c_factory1 (10.0.0.3) i-2 was released by its idle timeout: left alone, not replaced "
                             "(`up` brings it back)"], session.lines
    assert watch_actions(session) == ["idle"]
    session.pool.down.add("10.0.0.2")  # another factory lost, not by its idle policy: that one is repaired
    session.idle_ids.clear()
    watch.round(lambda before: repairs.append(before() or 1))
    assert repairs == [1] and "c_factory0 (10.0.0.2) i-1 is lost" in session.lines[1], session.lines


def test_the_watch_follows_members_another_command_changed_and_acts_only_on_its_look(tmp_path, monkeypatch):
    from flambe_cluster import raycluster, repair

    session = fake_session(tmp_path, None)
    monkeypatch.setattr(raycluster, "nodes", lambda s: [{"ip": "10.0.0.2", "alive": True, "head": False}])
    session.state.record_members(session.hosts())
    watch = repair.Watch(session, lost_after=0)
    # another shell shrank the cluster to one factory: its Ray node stopped, the record says so
    session.pool.without_node.add("10.0.0.3")
    session.state.record_members(session.hosts()[:2])
    repairs: list[int] = []
    watch.round(lambda before: repairs.append(before() or 1))
    assert repairs == [] and [f.label for f in session.factories] == ["c_factory0 (10.0.0.2)"]
    assert session.lines == ["the cluster changed (another command): its factories are now c_factory0 (10.0.0.2)"]
    # the record changes between the look and the action: nothing is done on the old look
    session.pool.without_node.add("10.0.0.2")

    def changed_meanwhile(before):
        session.state.record_members(session.hosts()[:1])
        before()
        repairs.append(1)

    watch.round(changed_meanwhile)
    assert repairs == [] and session.released == []
    assert session.lines[-1] == "another command changed the cluster or holds its lock; looking again", session.lines
    assert not any(" is lost" in line for line in session.lines), "nothing is said lost on a look that no longer holds"
    # another command holds the lock: the watch waits, says so once
    with session.state.lock():
        watch.round(lambda before: repairs.append(before() or 1))
        watch.round(lambda before: repairs.append(before() or 1))
    assert repairs == [] and session.lines[-1] == ("another command holds the cluster's lock (it is changing the "
                                                   "cluster); waiting for it")


def test_a_cluster_file_asking_for_fewer_factories_is_not_applied_by_the_watch(tmp_path, monkeypatch):
    """Removing factories is the user's call (`up` drains them and asks while a job runs), never the watch's."""
    from types import SimpleNamespace

    from flambe_cluster import raycluster, repair

    session = fake_session(tmp_path, ["i-0", "i-1", "i-2"])
    monkeypatch.setattr(raycluster, "nodes", lambda s: [{"ip": ip, "alive": True, "head": False}
                                                        for ip in ("10.0.0.2", "10.0.0.3")])
    edited = SimpleNamespace(connect_timeout=60.0, python="python3", factories_num=1)
    files = [edited, None, None]
    watch = repair.Watch(session, lost_after=0, reread=lambda always=False: files.pop(0))
    repairs: list[int] = []
    for _ in range(3):
        watch.round(lambda before: repairs.append(before() or 1))
    assert repairs == [] and session.released == [] and session.config.factories_num == 2
    assert session.lines == ["the cluster file now asks for 1 factories, fewer than the cluster's 2: the watch "
                             "removes none; run `flambe-cluster up` to shrink it (it drains them, and asks while a "
                             "job runs)"], session.lines


def test_a_cluster_taken_down_from_another_shell_ends_the_watch_creating_nothing(tmp_path, monkeypatch):
    from flambe_cluster import raycluster, repair

    session = fake_session(tmp_path, ["i-0", "i-1", "i-2"])
    monkeypatch.setattr(raycluster, "nodes", lambda s: [])
    repairs: list[int] = []

    def taken_down_after_the_first_round(seconds):
        session.state.journal.record_down()

    monkeypatch.setattr(repair.time, "sleep", taken_down_after_the_first_round)
    session.pool.down.update({"10.0.0.2", "10.0.0.3"})
    session.hooks.find_instances = lambda config: None  # the provider lists nothing any more
    repair.watch(session, lambda before: repairs.append(before() or 1), interval=0.01, lost_after=0)
    assert session.lines[-1] == "cluster 'c' was taken down (flambe-cluster down); stopped watching", session.lines
    assert repairs == [1] and session.released == [], "one repair before the down; none after"


def test_ctrl_c_between_rounds_ends_the_watch_during_a_repair_it_propagates(tmp_path, monkeypatch):
    from flambe_cluster import raycluster, repair

    session = fake_session(tmp_path, None)

    def interrupt(s):
        raise KeyboardInterrupt

    monkeypatch.setattr(raycluster, "nodes", interrupt)
    repair.watch(session, lambda before: None, interval=0.01)
    assert session.lines[-1] == "stopped watching cluster 'c'; the cluster is left as it is"
    monkeypatch.setattr(raycluster, "nodes", lambda s: [])  # no worker alive: a repair, interrupted
    with pytest.raises(KeyboardInterrupt):
        repair.watch(session, lambda before: interrupt(None), interval=0.01)


@pytest.mark.hosts
def test_aws_lost_factories_are_replaced_by_up_and_by_up_watch_under_a_running_job(aws_env):
    from flambe_cluster.state import ClusterState

    env, cloud = aws_env, aws_env.cloud
    cloud.write_config(env.config, AWS_NAME, factories_num=2, ray_timeout=90, factories_spot=True)
    env.cli("up", check=0)
    [orchestrator_id] = env.roles()["orchestrator"]
    orchestrator = cloud.host_of(orchestrator_id)
    head, boot = pids(orchestrator, "gcs_server"), boot_id(orchestrator)
    read_counts(env, orchestrator, AWS_NAME)
    first = env.roles()["factory"]
    env.cli("submit", str(COUNT_JOB), check=0)
    assert env.wait_for_count(2)[-1] == 2

    # a plain `up` replaces exactly the lost factory (EC2 interrupted the spot instance: it is terminated)
    cloud.ec2.terminate_instances(InstanceIds=[first[1]])
    seen = len(env.counts())
    assert env.wait_for_count(1, timeout=90)[-1] == 1, "the job sees the worker go"
    repaired = env.cli("up", check=0)
    assert "replacing 1 lost factories" in repaired.stderr and "did not answer" not in repaired.stderr, \
        "a lost instance is not drained"
    factories = env.roles()["factory"]
    assert factories[0] == first[0] and factories[1] not in first and len(factories) == 2, (first, factories)
    assert cloud.state_of(first[1]) == "terminated"
    assert env.roles()["orchestrator"] == [orchestrator_id]
    status = env.status()
    assert status["ray"]["alive_workers"] == 2 and status["job"]["state"] == "running", status
    assert env.wait_for_count(2)[-1] == 2
    counts = after(seen, env)
    assert 1 in counts and counts[-1] == 2, counts
    assert pids(orchestrator, "gcs_server") == head and boot_id(orchestrator) == boot, \
        f"the head was restarted\n{repaired.stderr}"
    alarmed = sorted(a["Dimensions"][0]["Value"] for a in cloud.alarms(f"flambe-cluster/{AWS_NAME}/"))
    assert alarmed == sorted(factories), "the replacement has its idle alarm, the lost one's is gone"

    # `up --watch` notices a lost factory by itself, replaces it and joins it to Ray; the job goes on
    watch = Watch(env, 3)
    try:
        watch.wait_for("watching cluster", timeout=300)
        seen = len(env.counts())
        cloud.ec2.terminate_instances(InstanceIds=[factories[0]])
        output = watch.wait_for("joined Ray", timeout=400)
        now = env.roles()["factory"]
        assert now[0] == factories[1] and now[1] not in factories and len(now) == 2, \
            f"the factory that stayed comes first: {factories} -> {now}"
        replacement = now[1]
        assert env.wait_for_count(2)[-1] == 2
        counts = after(seen, env)
        assert 1 in counts and counts[-1] == 2, counts
        status = env.status()
        assert status["ray"]["alive_workers"] == 2 and status["job"]["state"] == "running", status
        assert pids(orchestrator, "gcs_server") == head and boot_id(orchestrator) == boot, "the head was restarted"
        assert f"{factories[0]} is lost" in output and replacement in output, output
        watching = output[output.index("watching cluster"):]  # what the watch printed after its `up`
        assert "replacing 1 lost factories" not in watching and "WARNING" not in watching, \
            "the repair's own steps are logged, not printed"

        # Ctrl-C: the watch ends (exit 0), saying so; the cluster is as it was
        assert watch.interrupt() == 0, watch.output
        assert "stopped watching" in watch.output, watch.output
    finally:
        watch.kill()
    assert env.roles()["factory"] == now
    assert env.status()["job"]["state"] == "running"
    actions = [e for e in ClusterState(env.state / "clusters" / AWS_NAME).journal.entries() if e["event"] == "watch"]
    assert [e["action"] for e in actions][-2:] == ["lost", "replaced"], actions
    assert actions[-1]["details"]["instance_id"] == replacement, actions[-1]
    assert actions[-1]["details"]["old_instance_id"] == factories[0], actions[-1]
    env.cli("exec", "--", "touch stop-counting", check=0)


@pytest.mark.hosts
def test_aws_a_client_cut_off_from_every_host_terminates_nothing_and_the_job_goes_on(aws_env):
    """The client loses its route to every host (a VPN or bastion down) while the cloud's API still answers:
    for 3 × lost_after the watch says why it waits and releases nothing; the job never notices."""
    env, cloud = aws_env, aws_env.cloud
    cloud.write_config(env.config, AWS_NAME, factories_num=2, ray_timeout=90)
    env.cli("up", check=0)
    roles = env.roles()
    instances = roles["orchestrator"] + roles["factory"]
    orchestrator = cloud.host_of(roles["orchestrator"][0])
    read_counts(env, orchestrator, AWS_NAME)
    env.cli("submit", str(COUNT_JOB), check=0)
    assert env.wait_for_count(2)[-1] == 2
    routes = [f"{cloud.host_of(i).address}/32" for i in instances]
    lost_after = 5
    watch = Watch(env, 2, "--lost-after", str(lost_after))
    try:
        watch.wait_for("watching cluster", timeout=300)
        try:
            for route in routes:  # from this machine only: the hosts still reach each other over their bridge
                subprocess.run(["ip", "route", "add", "prohibit", route], check=True)
            watch.wait_for("may be down; waiting, nothing is released", timeout=120)
            time.sleep(3 * lost_after)
            output = watch.output
        finally:
            for route in routes:
                subprocess.run(["ip", "route", "del", "prohibit", route], check=False)
        assert [cloud.state_of(i) for i in instances] == ["running"] * 3, output
        assert "is lost:" not in output and "repair" not in output, output
        assert output.count("waiting, nothing is released") == 1, "said once"
        seen, deadline = len(env.counts()), time.monotonic() + 60
        while len(env.counts()) <= seen + 4:
            assert time.monotonic() < deadline, f"the job stopped counting: {env.counts()[-10:]}"
            time.sleep(1)
        assert env.counts()[-1] == 2
        assert watch.interrupt() == 0, watch.output
    finally:
        watch.kill()
    assert env.roles()["factory"] == roles["factory"]
    env.cli("exec", "--", "touch stop-counting", check=0)


@pytest.mark.hosts
def test_aws_down_from_another_shell_ends_the_watch_and_nothing_is_created_again(aws_env):
    env, cloud = aws_env, aws_env.cloud
    cloud.write_config(env.config, AWS_NAME, factories_num=2, ray_timeout=90)
    env.cli("up", check=0)
    watch = Watch(env, 1, "--lost-after", "2")
    try:
        watch.wait_for("watching cluster", timeout=300)
        env.cli("down", "--yes", "--wait", "60", check=0)
        assert watch.process.wait(timeout=60) == 0, watch.output
    finally:
        watch.kill()
    assert "was taken down (flambe-cluster down); stopped watching" in watch.output, watch.output
    assert "replaced" not in watch.output, watch.output  # a round under way may have said a factory is lost
    time.sleep(3)
    assert cloud.instances(AWS_NAME, LIVE) == [], "nothing was created again"


# --- ssh provider: machines the user brought; the replacement answers at the same address with the same host key


def fresh_machine(host, client_key) -> None:
    """Make ``host`` (stopped) a machine set up anew: its home holds only the login key; its host key stays."""
    import shutil

    for item in host.home.iterdir():
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item)
        else:
            item.unlink()
    (host.home / ".ssh").mkdir(mode=0o700)
    (host.home / ".ssh" / "authorized_keys").write_text(client_key.public_line.strip() + "\n")
    subprocess.run(["chown", "-R", f"{host.username}:", str(host.home)], check=True)


@pytest.fixture
def ssh_env(flambe_test_hosts, flambe_client_key, tmp_path):
    from test_resize import Env

    network = flambe_test_hosts(3)
    env = Env(network, tmp_path, flambe_client_key.path)
    try:
        yield env
    finally:
        try:
            for host in network.hosts:
                host.start()
            env.cli("down", timeout=300)
        finally:
            network.close()


@pytest.mark.hosts
def test_ssh_a_stopped_factory_replaced_at_its_address_rejoins_under_up_watch(ssh_env, flambe_client_key):
    from flambe_cluster.state import ClusterState

    env = ssh_env
    orchestrator, gone = env.hosts[0], env.hosts[2]
    env.write(2)
    env.cli("up", check=0)
    head = pids(orchestrator, "gcs_server")
    read_counts(env, orchestrator, "resize")
    env.cli("submit", str(COUNT_JOB), check=0)
    assert env.wait_for_count(2)[-1] == 2
    watch = Watch(env, 2, "--lost-after", "5")
    try:
        watch.wait_for("watching cluster", timeout=300)
        seen = len(env.counts())
        gone.stop()
        watch.wait_for("has not answered for", timeout=120)
        assert env.wait_for_count(1, timeout=90)[-1] == 1
        fresh_machine(gone, flambe_client_key)
        gone.start()  # the replacement: same address, same host key, nothing of the cluster on it
        output = watch.wait_for("rejoined Ray", timeout=400)
        assert env.wait_for_count(2)[-1] == 2
        counts = after(seen, env)
        assert 1 in counts and counts[-1] == 2, counts
        status = env.status()
        assert status["ray"]["alive_workers"] == 2 and status["job"]["state"] == "running", status
        assert pids(orchestrator, "gcs_server") == head, "the head was restarted"
        assert "waiting for a machine to answer at its address" in output and "repair failed" not in output, output
        assert watch.interrupt() == 0, watch.output
        assert "stopped watching" in watch.output
    finally:
        watch.kill()
    actions = [e["action"] for e in ClusterState(env.state / "clusters" / "resize").journal.entries()
               if e["event"] == "watch"]
    assert actions[0] == "lost" and actions[-1] == "rejoined", actions
    env.cli("exec", "--", "touch stop-counting", check=0)


@pytest.mark.hosts
def test_ssh_a_slow_ray_head_is_waited_for_not_restarted_and_the_job_survives(ssh_env):
    """A head that is alive but accepts no new connection for 15 s (its port drops new SYNs: what a loaded or
    badly routed head looks like) is slow, not gone: `up` waits for it and the running job keeps its cluster."""
    import threading

    env = ssh_env
    orchestrator = env.hosts[0]
    env.write(2)
    env.cli("up", check=0)
    read_counts(env, orchestrator, "resize")
    env.cli("submit", str(COUNT_JOB), check=0)
    assert env.wait_for_count(2)[-1] == 2
    head = pids(orchestrator, "gcs_server")
    answer: dict = {}
    nft = ["nft", "-f", "-"]
    rules = ("table inet fcslow {\n chain input {\n  type filter hook input priority 0;\n"
             "  tcp dport 6379 tcp flags syn drop\n }\n}\n")
    made = orchestrator.run_in_namespace(nft, input=rules)
    assert made.returncode == 0, made.stderr
    try:
        thread = threading.Thread(target=lambda: answer.update(up=env.cli("up")))
        thread.start()
        time.sleep(15)
    finally:
        orchestrator.run_in_namespace(["nft", "delete", "table", "inet", "fcslow"])
    thread.join(timeout=600)
    up = answer["up"]
    assert up.returncode == 0, up.stderr
    assert "the Ray head answers slowly; waiting for it" in up.stderr, up.stderr
    assert "starting the Ray head" not in up.stderr and pids(orchestrator, "gcs_server") == head, \
        f"the head was restarted\n{up.stderr}"
    seen, deadline = len(env.counts()), time.monotonic() + 60
    while len(env.counts()) <= seen + 4:
        assert time.monotonic() < deadline, f"the job stopped counting: {env.counts()[-10:]}"
        time.sleep(1)
    assert env.counts()[-1] == 2, "the job goes on with both workers"
    assert env.status()["job"]["state"] == "running"
    env.cli("exec", "--", "touch stop-counting", check=0)


@pytest.mark.hosts
def test_ssh_a_shrink_from_another_shell_is_followed_not_grown_back(ssh_env):
    env = ssh_env
    env.write(2)
    env.cli("up", check=0)
    watch = Watch(env, 1, "--lost-after", "3")
    try:
        watch.wait_for("watching cluster", timeout=300)
        env.write(1)
        shrink = env.cli("up", "-y", "--wait", "120", check=0)  # the watch holds the lock only while it acts
        assert "removing 1 factories" in shrink.stderr, shrink.stderr
        watch.wait_for("its factories are now resize_factory0", timeout=60)
        time.sleep(8)  # several rounds
        output = watch.output
        assert " is lost:" not in output and "replaced" not in output and "rejoined" not in output, output
        assert env.status()["ray"]["alive_workers"] == 1
        assert pids(env.hosts[2], "raylet") == [], "the removed factory was not grown back"
        assert watch.interrupt() == 0, watch.output
    finally:
        watch.kill()
