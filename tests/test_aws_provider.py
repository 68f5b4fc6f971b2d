"""The AWS provider against moto over HTTP, without SSH: options, validation, provisioning, rollback, alarms.

boto3 talks HTTP to a moto server (tests/aws_support.py) exactly as to EC2;
the faults moto never produces (throttling, lost answers, concurrent
launches) are injected in front of it.  End-to-end runs with real hosts are
in test_aws_e2e.py and test_aws_faults.py.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import threading

import pytest
from aws_support import dump, moto_cloud, provider_calls  # noqa: F401 - moto_cloud is a fixture
from flambe_cluster import ClusterConfigurationError
from flambe_cluster.config import parse_config, read_config_file
from flambe_cluster.converters import build
from flambe_cluster.records import CreatedResource, Endpoint, Instance, Role
from flambe_cluster.state import ClusterState
from flambe_cluster_aws import (
    alarms,
    api,
    flambe_cluster_host_keys,
    flambe_cluster_promised_gpus,
    flambe_cluster_rollback,
    flambe_cluster_terminate,
    hostkeys,
    instances,
    validation,
)
from flambe_cluster_aws.options import AWSOptions

ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
ECDSA_BLOB = base64.b64encode(
    b"\x00\x00\x00\x13ecdsa-sha2-nistp256" + b"\x00\x00\x00\x08nistp256" + b"\x00" * 20
).decode()
CONSOLE = f"""\
[   12.3] cloud-init[1050]: Generating public/private ed25519 key pair.
ec2: -----BEGIN SSH HOST KEY FINGERPRINTS-----
ec2: 256 SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU root@ip-10-0-0-5 (ED25519)
ec2: -----END SSH HOST KEY FINGERPRINTS-----
-----BEGIN SSH HOST KEY KEYS-----
ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOldBlock0000000000000000000000000000000000000 root@old
-----END SSH HOST KEY KEYS-----
[   40.1] reboot
ec2: -----BEGIN SSH HOST KEY KEYS-----
ec2: ecdsa-sha2-nistp256 {ECDSA_BLOB} root@ip-10-0-0-5
ec2: {ED25519} root@ip-10-0-0-5
ec2: ssh-rsa bm90IGEga2V5 root@ip-10-0-0-5
ec2: -----END SSH HOST KEY KEYS-----
Cloud-init v. 23.1 finished
"""


def journal_for(name: str):
    return ClusterState.for_cluster(name).ensure().journal.start_run()


def live(cloud, name):
    return sorted(i["InstanceId"] for i in cloud.instances(name))


# --- options


def test_seed_tag_and_defaults(moto_cloud, tmp_path, monkeypatch):
    path = moto_cloud.write_config(tmp_path / "c.yaml", "tagged", tag=True)
    raw = read_config_file(path)
    assert raw["provider"] == "aws"
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    minimal = {k: raw[k] for k in ("factories_type", "orchestrator_type", "key_name", "security_group", "subnet_id")}
    problems: list[str] = []
    options = build(AWSOptions, minimal, problems)
    assert problems == []
    assert options.region_name == "eu-west-3", "the default region is boto3's configured one"
    assert (options.volume_type, options.volume_size, options.use_public, options.dedicated) == (
        "gp2", 100, True, False)
    assert (options.orchestrator_timeout, options.factories_timeout) == (-1, 1)
    assert options.orchestrator_ami is None and options.factory_ami is None, "images are looked up, not hard-coded"
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    assert build(AWSOptions, minimal, []).region_name == "us-east-1"
    config = parse_config({k: v for k, v in raw.items() if k not in ("username", "connect_timeout")})
    assert config.username == "ubuntu" and config.connect_timeout == 300.0


def test_bad_values_are_reported_together():
    problems: list[str] = []
    build(AWSOptions, {
        "factories_type": "t3.micro", "orchestrator_type": "big", "key_name": "k", "security_group": "sg-1",
        "subnet_id": "sub-1", "volume_type": "io2", "factories_timeout": 200, "tags": {"aws:owner": "me"},
        "region_name": "Mars",
    }, problems)
    fields = sorted(p.split(":")[0] for p in problems)
    assert fields == ["factories_timeout", "orchestrator_type", "region_name", "subnet_id", "tags",
                      "volume_type"], problems
    assert any("expected one of 'gp2', 'gp3', 'io1', got 'io2'" in p for p in problems)


# --- validation


def test_wrong_type_missing_key_pair_and_missing_subnet_are_reported_together(moto_cloud, tmp_path):
    path = moto_cloud.write_config(tmp_path / "bad.yaml", "bad-validation", factories_type="t3.mircro",
                                   key_name="no-such-key", subnet_id="subnet-0123456789abcdef0")
    done = moto_cloud.cli("up", str(path), home=tmp_path / "state", check=2)
    assert "problems with the cluster configuration" in done.stderr, dump(done)
    assert ("factories_type: expected an EC2 instance type, but 't3.mircro' does not exist; "
            "did you mean 't3.micro'?") in done.stderr
    assert "key_name: expected an EC2 key pair of region us-east-1, but 'no-such-key' does not exist" in done.stderr
    assert ("subnet_id: expected a subnet of region us-east-1, but subnet-0123456789abcdef0 does not exist"
            in done.stderr)
    assert moto_cloud.server.count("RunInstances") == 0
    assert moto_cloud.instances("bad-validation") == []


def test_security_group_of_another_vpc_and_image_of_another_architecture(moto_cloud):
    ec2 = moto_cloud.ec2
    other_vpc = ec2.create_vpc(CidrBlock="10.214.0.0/16")["Vpc"]["VpcId"]
    group = ec2.create_security_group(GroupName="elsewhere", Description="x", VpcId=other_vpc)["GroupId"]
    amd64 = moto_cloud.image_id()
    with pytest.raises(ClusterConfigurationError) as caught:
        parse_config(moto_cloud.config("mismatch", security_group=group, factories_type="m6g.large", factory_ami=amd64))
    problems = caught.value.problems
    assert any(p.startswith(f"security_group: {group} belongs to {other_vpc}") for p in problems), problems
    assert any(p.startswith(f"factory_ami: image {amd64} is built for x86_64, but m6g.large runs arm64")
               for p in problems), problems
    # a group named in the subnet's VPC is found by name
    assert parse_config(moto_cloud.config("by-name", security_group="flambe-test")).options.security_group == (
        "flambe-test")


def test_the_key_must_be_the_key_pairs_private_key(moto_cloud, tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from flambe_cluster.testing.pytest_plugin import make_client_key

    other = make_client_key(tmp_path / "other")
    moto_cloud.ec2.import_key_pair(KeyName="other-key", PublicKeyMaterial=other.public_line.encode())
    with pytest.raises(ClusterConfigurationError) as caught:
        parse_config(moto_cloud.config("wrong-key", key_name="other-key"))
    assert caught.value.problems == [
        f"key: expected the private key of EC2 key pair 'other-key' (fingerprint "
        f"{moto_cloud.ec2.describe_key_pairs(KeyNames=['other-key'])['KeyPairs'][0]['KeyFingerprint']}), "
        f"but {moto_cloud.client_key.path} is another key"
    ]
    assert parse_config(moto_cloud.config("right-key", key_name="other-key", key=str(other.path)))
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_path = tmp_path / "rsa.pem"
    rsa_path.write_bytes(private.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.TraditionalOpenSSL,
                                               serialization.NoEncryption()))
    rsa_path.chmod(0o600)
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    moto_cloud.ec2.import_key_pair(KeyName="rsa-key", PublicKeyMaterial=public)
    assert parse_config(moto_cloud.config("rsa-key", key_name="rsa-key", key=str(rsa_path))), \
        "MD5 of the DER public key"
    blob = base64.b64decode(other.public_line.split()[1])
    aws_style = "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode()
    assert validation.key_matches(other.path, aws_style) and validation.key_matches(other.path, aws_style[7:] + "=")
    assert validation.key_matches(moto_cloud.client_key.path, aws_style) is False


def test_missing_credentials_are_a_problem_of_their_own(moto_cloud, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ClusterConfigurationError) as caught:
        parse_config(moto_cloud.config("no-credentials"))
    assert len(caught.value.problems) == 1 and caught.value.problems[0].startswith(
        "credentials: no AWS credentials found")


def test_aws_failing_during_validation_names_the_step_and_exits_1(moto_cloud, tmp_path):
    moto_cloud.fault("DescribeKeyPairs", "RequestLimitExceeded", status=503, message="Request limit exceeded.")
    try:
        done = moto_cloud.cli("up", str(moto_cloud.write_config(tmp_path / "c.yaml", "throttled-validation")),
                              home=tmp_path / "state", check=1)
    finally:
        moto_cloud.clear_faults()
    assert "AWS, validating the configuration against EC2: RequestLimitExceeded" in done.stderr, dump(done)
    assert "What to do: EC2 throttled" in done.stderr
    assert moto_cloud.server.count("RunInstances") == 0


# --- instance types, host keys, launch parameters


def test_promised_gpus_come_from_the_instance_type_without_ssh(moto_cloud):
    config = parse_config(moto_cloud.config("gpus", factories_type="g4dn.12xlarge"))
    factory = Instance("gpus_factory0", Role.FACTORY, Endpoint("10.0.0.9"), Endpoint("10.0.0.9"), instance_id="i-1")
    orchestrator = Instance("gpus_orchestrator", Role.ORCHESTRATOR, Endpoint("10.0.0.8"), Endpoint("10.0.0.8"),
                            instance_id="i-2")
    assert flambe_cluster_promised_gpus(config=config, instance=factory) == 4
    assert flambe_cluster_promised_gpus(config=config, instance=orchestrator) == 0


def test_gpus_of_another_maker_are_not_promised(moto_cloud):
    from moto.ec2.models.instance_types import INSTANCE_TYPES

    amd_types = sorted(name for name, info in INSTANCE_TYPES.items()
                       if any(g.get("Manufacturer") == "AMD" for g in info.get("GpuInfo", {}).get("Gpus", [])))
    if not amd_types:
        pytest.skip("this moto version lists no instance type with AMD GPUs")
    amd = parse_config(moto_cloud.config("amd-gpus", factories_type=amd_types[0]))
    factory = Instance("amd-gpus_factory0", Role.FACTORY, Endpoint("10.0.0.9"), Endpoint("10.0.0.9"), instance_id="i-1")
    assert flambe_cluster_promised_gpus(config=amd, instance=factory) is None, "not NVIDIA: no promise"


def test_host_keys_are_parsed_from_the_console_text():
    keys = hostkeys.parse_host_keys(CONSOLE)
    assert keys == [f"ecdsa-sha2-nistp256 {ECDSA_BLOB}", ED25519], "the last block, well-formed keys only"
    assert hostkeys.parse_host_keys("no keys here\n-----BEGIN SSH HOST KEY KEYS-----\nunfinished") == []
    encoded = base64.b64encode(CONSOLE.encode()).decode()
    assert hostkeys.decode_console(encoded) == CONSOLE
    assert hostkeys.decode_console(CONSOLE) == CONSOLE


def test_host_keys_hook_asks_the_console_pinned_or_not(moto_cloud, flambe_state_home):
    """The core asks only for unpinned hosts and changed keys; for a changed key the console must be read
    (an instance replaced at the same address), so the hook does not answer None for a pinned address."""
    config = parse_config(moto_cloud.config("console"))
    [instance_id] = moto_cloud.make_instance()
    instance = Instance("console_orchestrator", Role.ORCHESTRATOR, Endpoint("10.213.40.99"), Endpoint("10.213.40.99"),
                        use_public=False, instance_id=instance_id)
    before = moto_cloud.server.count("GetConsoleOutput")
    assert flambe_cluster_host_keys(config=config, instance=instance) is None, "moto's console carries no keys"
    assert moto_cloud.server.count("GetConsoleOutput") == before + 1
    known = ClusterState.for_cluster("console").ensure().known_hosts
    known.write_text(f"10.213.40.99 {ED25519}\n")
    hostkeys._cache.clear()
    moto_cloud.server.consoles[instance_id] = CONSOLE
    try:
        assert flambe_cluster_host_keys(config=config, instance=instance) == [
            f"ecdsa-sha2-nistp256 {ECDSA_BLOB}", ED25519]
    finally:
        del moto_cloud.server.consoles[instance_id]
    assert moto_cloud.server.count("GetConsoleOutput") == before + 2


def test_launch_parameters_carry_tags_volume_network_and_tenancy(moto_cloud):
    config = parse_config(moto_cloud.config("params", volume_type="io1", volume_size=40, dedicated=True,
                                            use_public=True, tags={"project": "x", "cost": 7}))
    problems, plan = validation.resolve(config.options)
    assert problems == []
    params = instances.launch_parameters(config, plan, "factory", 100, "run-factory")
    assert (params["MinCount"], params["MaxCount"], params["ClientToken"]) == (100, 100, "run-factory")
    tags = {t["Key"]: t["Value"] for t in params["TagSpecifications"][0]["Tags"]}
    assert tags == {"project": "x", "cost": "7", "Name": "params_factory", "flambe-cluster:cluster": "params",
                    "flambe-cluster:creator": config.options.creator, "flambe-cluster:role": "factory",
                    "flambe-cluster:launch": "run-factory"}
    assert params["BlockDeviceMappings"][0]["Ebs"] == {"VolumeSize": 40, "VolumeType": "io1", "Iops": 2000,
                                                       "DeleteOnTermination": True}
    assert params["Placement"] == {"Tenancy": "dedicated"}
    assert params["NetworkInterfaces"][0]["AssociatePublicIpAddress"] is True and "SubnetId" not in params


def test_use_public_launches_with_a_public_address(moto_cloud, flambe_state_home):
    config = parse_config(moto_cloud.config("public", use_public=True, factories_num=1))
    made = instances.load(config, journal_for("public"))
    assert all(i.public.host != i.private.host and i.endpoint == i.public for i in made)
    flambe_cluster_terminate(config=config, instances=made)


# --- choosing instances


def machine(instance_id, role, launch="r1-x", index=0, launched=100.0, state="running"):
    return instances.Machine(instance_id, state, role, launch, index, launched, "10.0.0.1", None, "")


def test_selection_is_stable_and_the_later_concurrent_launch_gives_way():
    found = [machine("i-b", "factory", index=1), machine("i-a", "factory", index=0), machine("i-o", "orchestrator"),
             machine("i-x", "factory", launch="r0-x", index=5, state="stopped"),
             machine("i-t", "factory", state="terminated")]
    chosen = instances.select(found, 2, known={"i-a", "i-b", "i-o", "i-x"})
    assert [m.instance_id for m in chosen.factories] == ["i-x", "i-a"], "older launches first, then launch index"
    assert [m.instance_id for m in chosen.surplus] == ["i-b"] and chosen.others == ()
    # two runs launched the same cluster at once; each sees both: the earlier launch wins in both views
    early = [machine("i-1", "orchestrator", "rB-o", launched=10.0), machine("i-2", "factory", "rB-f", launched=10.0)]
    late = [machine("i-3", "orchestrator", "rA-o", launched=11.0), machine("i-4", "factory", "rA-f", launched=11.0)]
    for view in (early + late, late + early):
        chosen = instances.select(view, 1, known=set())
        assert [m.instance_id for m in chosen.chosen] == ["i-1", "i-2"]
        assert {m.instance_id for m in chosen.others} == {"i-3", "i-4"}


def test_two_clients_launching_at_once_end_with_one_set(moto_cloud, flambe_state_home):
    """No shared lock (two machines): both launch, both see both launches, the later one gives way."""
    config = parse_config(moto_cloud.config("twice"))
    barrier = threading.Barrier(2)
    with moto_cloud.server._lock:
        moto_cloud.server.holds.append((lambda call: call.action == "RunInstances" and call.role == "factory", barrier))
    results: dict[int, object] = {}

    def up(index):
        try:
            results[index] = instances.load(config, journal_for("twice"))
        except BaseException as exc:  # noqa: BLE001 - reported below
            results[index] = exc

    threads = [threading.Thread(target=up, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    moto_cloud.server.holds.clear()
    ours = lambda call: call.tags.get("flambe-cluster:cluster") == "twice"  # noqa: E731
    assert moto_cloud.server.count("RunInstances", when=ours) == 4, "both clients launched"
    first, second = results[0], results[1]
    assert not isinstance(first, BaseException), first
    assert not isinstance(second, BaseException), second
    assert [i.instance_id for i in first] == [i.instance_id for i in second]
    assert live(moto_cloud, "twice") == sorted(i.instance_id for i in first), "one set of instances"
    flambe_cluster_terminate(config=config, instances=first)


# --- tokens, journal, rollback


def test_a_retried_run_instances_never_launches_twice(moto_cloud, flambe_state_home):
    config = parse_config(moto_cloud.config("retried", factories_num=3))
    moto_cloud.fault("RunInstances", "InternalError", status=503, lost_response=True, times=1,
                     when=lambda call: call.role == "factory")
    try:
        made = instances.load(config, journal_for("retried"))
    finally:
        moto_cloud.clear_faults()
    calls = [c for c in moto_cloud.server.calls_of("RunInstances") if c.tags.get("flambe-cluster:cluster") == "retried"]
    assert [c.role for c in calls] == ["orchestrator", "factory", "factory"], "boto3 retried the lost answer"
    assert calls[1].param("ClientToken") == calls[2].param("ClientToken")
    assert len(live(moto_cloud, "retried")) == 4
    flambe_cluster_terminate(config=config, instances=made)
    again = instances.load(config, journal_for("retried"))
    tokens = [c.param("ClientToken") for c in moto_cloud.server.calls_of("RunInstances")
              if c.tags.get("flambe-cluster:cluster") == "retried"]
    assert len(set(tokens)) == 4, "a later run never reuses a token (EC2 would answer with the terminated instances)"
    flambe_cluster_terminate(config=config, instances=again)


def test_a_launch_whose_answer_never_came_is_rolled_back_through_its_tag(moto_cloud, flambe_state_home):
    """The journal entry is written before RunInstances: even ids EC2 never told us are found and terminated."""
    [bystander] = moto_cloud.make_instance({"flambe-cluster:cluster": "lost-answer",
                                            "flambe-cluster:creator": "someone-else",
                                            "flambe-cluster:role": "factory"})
    config = parse_config(moto_cloud.config("lost-answer"))
    journal = journal_for("lost-answer")
    moto_cloud.fault("RunInstances", "InternalError", status=503, lost_response=True,
                     when=lambda call: call.role == "factory")
    try:
        with pytest.raises(api.AWSError, match=r"AWS, creating factories \(2 x t3.micro\): InternalError"):
            instances.load(config, journal)
    finally:
        moto_cloud.clear_faults()
    created = journal.created()
    factory_launch = next(r for r in created if r.details["role"] == "factory")
    assert factory_launch.details["instance_ids"] == [], "EC2's answer never arrived"
    assert len(live(moto_cloud, "lost-answer")) == 4, "yet moto launched them (plus the bystander)"
    flambe_cluster_rollback(config=config, created=created)
    flambe_cluster_rollback(config=config, created=created)  # idempotent
    assert live(moto_cloud, "lost-answer") == [bystander], "only what this run launched is gone"


def test_a_lost_launch_is_looked_up_until_ec2_lists_its_instances(moto_cloud, flambe_state_home, monkeypatch):
    """EC2 lists new instances late: a launch whose answer was lost is looked up again until its instances are known."""
    config = parse_config(moto_cloud.config("late-listing"))
    journal = journal_for("late-listing")
    moto_cloud.fault("RunInstances", "InternalError", status=503, lost_response=True,
                     when=lambda call: call.role == "factory")
    try:
        with pytest.raises(api.AWSError, match="InternalError"):
            instances.load(config, journal)
    finally:
        moto_cloud.clear_faults()
    token = next(r for r in journal.created() if r.details["role"] == "factory").resource_id
    real_describe = instances.describe
    looks = []

    def late(region, filters):  # the first two looks by launch tag do not list the launch's instances yet
        machines = real_describe(region, filters)
        if any(f["Name"] == f"tag:{instances.TAG_LAUNCH}" for f in filters):
            looks.append(filters)
            if len(looks) <= 2:
                return [m for m in machines if m.launch != token]
        return machines

    monkeypatch.setattr(instances, "describe", late)
    monkeypatch.setattr(instances, "LOST_LAUNCH_DELAYS", (0.01, 0.01, 0.01), raising=False)
    flambe_cluster_rollback(config=config, created=journal.created())
    assert live(moto_cloud, "late-listing") == [], "the factories launched without an answer are terminated too"


def test_rollback_asks_again_for_instances_ec2_does_not_know_yet(moto_cloud, flambe_state_home):
    """EC2 is eventually consistent: right after RunInstances, TerminateInstances may not know the new ids."""
    config = parse_config(moto_cloud.config("not-yet"))
    journal = journal_for("not-yet")
    made = instances.load(config, journal)
    newest = made.factories[1].instance_id
    moto_cloud.fault("TerminateInstances", "InvalidInstanceID.NotFound", times=1,
                     message=f"The instance ID '{newest}' does not exist")
    try:
        flambe_cluster_rollback(config=config, created=journal.created())
    finally:
        moto_cloud.clear_faults()
    assert live(moto_cloud, "not-yet") == []
    assert moto_cloud.server.count("TerminateInstances", when=lambda c: newest in c.instance_ids()) == 2


def test_more_instances_than_asked_are_reported_not_deleted(moto_cloud, flambe_state_home, caplog):
    config = parse_config(moto_cloud.config("surplus"))
    made = instances.load(config, journal_for("surplus"))
    tags = {"flambe-cluster:cluster": "surplus", "flambe-cluster:creator": config.options.creator,
            "flambe-cluster:role": "factory", "flambe-cluster:launch": "zzz-later-factory"}
    [extra] = moto_cloud.make_instance(tags)
    with caplog.at_level(logging.WARNING, logger="flambe_cluster_aws"):
        again = instances.load(config, journal_for("surplus"))
    assert again == made
    assert f"{extra} (factory, running)" in caplog.text and "likely leaked" in caplog.text
    assert extra in live(moto_cloud, "surplus"), "reported, not deleted"
    flambe_cluster_terminate(config=config, instances=again)
    assert live(moto_cloud, "surplus") == [], "down terminates the surplus with the rest"


def test_stopped_instances_are_started_not_duplicated_and_a_rollback_stops_them_again(moto_cloud, flambe_state_home,
                                                                                      caplog):
    config = parse_config(moto_cloud.config("stopped"))
    made = instances.load(config, journal_for("stopped"))
    stopped = made.factories[1].instance_id
    moto_cloud.ec2.stop_instances(InstanceIds=[stopped])
    assert instances.find(config) == made, "find reports stopped instances and changes nothing"
    assert moto_cloud.state_of(stopped) == "stopped"
    journal = journal_for("stopped")
    with caplog.at_level(logging.WARNING, logger="flambe_cluster_aws"):
        again = instances.load(config, journal)
    assert again == made and moto_cloud.state_of(stopped) == "running"
    assert f"starting 1 stopped instance(s): {stopped}" in caplog.text
    assert moto_cloud.server.count("RunInstances",
                                   when=lambda c: c.tags.get("flambe-cluster:cluster") == "stopped") == 2
    flambe_cluster_rollback(config=config, created=journal.created())
    assert moto_cloud.state_of(stopped) == "stopped", "the rollback puts it back as it was"
    assert moto_cloud.state_of(made.orchestrator.instance_id) == "running"
    flambe_cluster_terminate(config=config, instances=made)


def test_an_incomplete_cluster_is_named_with_what_to_do(moto_cloud, flambe_state_home):
    config = parse_config(moto_cloud.config("partial"))
    made = instances.load(config, journal_for("partial"))
    moto_cloud.ec2.terminate_instances(InstanceIds=[made.factories[0].instance_id])
    with pytest.raises(Exception, match=r"incomplete: it has an orchestrator and 1 of 2 factories") as caught:
        instances.find(config)
    assert "aws ec2 terminate-instances --region us-east-1 --instance-ids" in str(caught.value)
    again = instances.load(config, journal_for("partial"))
    assert again.orchestrator == made.orchestrator and len(again.factories) == 2, "up replaces what is missing"
    flambe_cluster_terminate(config=config, instances=again)


# --- alarms


def test_idle_alarms_are_idempotent_follow_the_timeouts_and_go_with_down(moto_cloud, flambe_state_home):
    config = parse_config(moto_cloud.config("idle", orchestrator_timeout=0, factories_timeout=3))
    made = instances.load(config, journal_for("idle"))
    journal = journal_for("idle")
    alarms.configure(config, made, journal)
    found = {a["AlarmName"]: a for a in moto_cloud.alarms("flambe-cluster/idle/")}
    assert len(found) == 3 and len(journal.created()) == 3
    orchestrator = found[alarms.alarm_name(config, made.orchestrator.instance_id)]
    factory = found[alarms.alarm_name(config, made.factories[0].instance_id)]
    assert (orchestrator["Period"], orchestrator["EvaluationPeriods"]) == (300, 1), "0: the shortest period"
    assert (factory["Period"], factory["EvaluationPeriods"]) == (3600, 3)
    assert factory["AlarmActions"] == ["arn:aws:automate:us-east-1:ec2:terminate"]
    assert factory["Dimensions"] == [{"Name": "InstanceId", "Value": made.factories[0].instance_id}]
    puts = moto_cloud.server.count("PutMetricAlarm")
    alarms.configure(config, made, journal_for("idle"))
    assert moto_cloud.server.count("PutMetricAlarm") == puts, "a second up changes nothing"
    never = parse_config(moto_cloud.config("idle", orchestrator_timeout=-1, factories_timeout=3))
    alarms.configure(never, made, journal_for("idle"))
    assert len(moto_cloud.alarms("flambe-cluster/idle/")) == 2, "-1 removes the orchestrator's alarm"
    flambe_cluster_rollback(config=config, created=journal.created())
    assert moto_cloud.alarms("flambe-cluster/idle/") == [], "a rollback removes the alarms the run made"
    alarms.configure(never, made, journal_for("idle"))
    flambe_cluster_terminate(config=config, instances=made)
    assert moto_cloud.alarms("flambe-cluster/idle/") == [] and live(moto_cloud, "idle") == []


def test_a_factory_whose_idle_alarm_went_off_is_told_apart_from_a_lost_one(moto_cloud, flambe_state_home):
    """The watch leaves alone what the idle policy released: the provider tells it by the alarm's state.  moto
    does not evaluate alarms (no metrics), so the test sets the state CloudWatch would set before its action."""
    import boto3
    from flambe_cluster_aws import flambe_cluster_idle_removed

    config = parse_config(moto_cloud.config("idlegone", factories_num=2, factories_timeout=1))
    made = instances.load(config, journal_for("idlegone"))
    alarms.configure(config, made, journal_for("idlegone"))
    idle, lost = made.factories
    cloudwatch = boto3.client("cloudwatch", region_name="us-east-1")
    cloudwatch.set_alarm_state(AlarmName=alarms.alarm_name(config, idle.instance_id), StateValue="ALARM",
                               StateReason="CPU idle for 1 hour")
    assert flambe_cluster_idle_removed(config=config, instances=[idle, lost]) == [idle]
    never = parse_config(moto_cloud.config("idlegone", factories_num=2, factories_timeout=-1))
    assert flambe_cluster_idle_removed(config=never, instances=[idle, lost]) == [], "no idle policy: none"
    flambe_cluster_terminate(config=config, instances=made)


# --- API economy


def test_one_run_instances_per_role_and_one_describe_per_poll(moto_cloud, flambe_state_home):
    config = parse_config(moto_cloud.config("economy", factories_num=40))
    before = provider_calls(moto_cloud)
    made = instances.load(config, journal_for("economy"))
    after = provider_calls(moto_cloud)
    assert len(made.factories) == 40
    assert after["RunInstances"] - before.get("RunInstances", 0) == 2
    assert after["DescribeInstances"] - before.get("DescribeInstances", 0) == 2, "one look before, one poll after"
    flambe_cluster_terminate(config=config, instances=made)
    assert provider_calls(moto_cloud)["TerminateInstances"] - after.get("TerminateInstances", 0) == 1


def test_rollback_of_nothing_and_of_gone_instances_does_not_raise(moto_cloud, flambe_state_home):
    config = parse_config(moto_cloud.config("gone"))
    flambe_cluster_rollback(config=config, created=[])
    flambe_cluster_rollback(config=config, created=[CreatedResource("launch", "never-launched", {
        "region": "us-east-1", "instance_ids": ["i-0123456789abcdef0"]})])


def test_booting_instances_report_their_state_through_the_progress_callable(moto_cloud, flambe_state_home):
    """The provider reports each instance's state while it boots, through the hook's ``progress`` (not print)."""
    from flambe_cluster import Cluster

    cluster = Cluster.from_config(parse_config(moto_cloud.config("booting")))
    events: list[tuple[str, str]] = []
    cluster.on_progress = lambda subject, state, **counts: events.append((subject, state))
    cluster.load_all_instances()
    try:
        hosts = cluster.all_hosts()
        assert {subject for subject, _ in events} == {h.name for h in hosts} == {
            "booting_orchestrator", "booting_factory0", "booting_factory1"}
        for host in hosts:
            states = [state for subject, state in events if subject == host.name]
            assert states[0] == "launching", states
            assert states[-1] == f"running ({host.instance_id})", states
            assert all(s.endswith(f"({host.instance_id})") and s.split(" (")[0] in ("pending", "running")
                       for s in states[1:]), states
        again: list[tuple[str, str]] = []
        cluster.on_progress = lambda subject, state, **counts: again.append((subject, state))
        cluster.load_all_instances()
        assert again == [], "instances that already run are not reported again"
    finally:
        flambe_cluster_terminate(config=cluster.config, instances=cluster.session.instances())
