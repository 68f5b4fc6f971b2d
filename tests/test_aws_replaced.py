"""An AWS instance replaced at the same address, on moto + real test hosts (issue 11: item 6, through the AWS provider).

A cluster's factory is terminated and a new instance (new id) launched at
its private address; its host comes back with a new host key.  While the
new instance's console (GetConsoleOutput) shows no host keys, every command
refuses it ("HOST KEY CHANGED") and the pin stays; once the console shows
the new key, as cloud-init prints it, the AWS provider vouches for it and
the next command re-pins it, saying so.
"""

from __future__ import annotations

import pytest
from aws_support import aws_cloud, dump  # noqa: F401 - aws_cloud is a fixture

pytestmark = pytest.mark.hosts

NAME = "replaced"


def console_with(key_line: str) -> str:
    """A boot console as cloud-init prints it on EC2, with one host key (the fingerprint block is left out)."""
    return ("[   12.3] cloud-init[901]: Cloud-init v. 24.1 running 'modules:final'\n"
            "-----BEGIN SSH HOST KEY KEYS-----\n"
            f"{key_line}\n"
            "-----END SSH HOST KEY KEYS-----\n"
            "[   13.0] cloud-init[901]: Cloud-init v. 24.1 finished\n")


def public_key(host) -> str:
    return " ".join(host.host_key_path.with_name(host.host_key_path.name + ".pub").read_text().split()[:2])


def test_a_replaced_instance_is_repinned_only_from_its_console_keys(aws_cloud, tmp_path):
    cloud = aws_cloud
    tags = {"flambe-cluster:cluster": NAME, "flambe-cluster:creator": "root"}
    ids = cloud.make_instance({**tags, "flambe-cluster:role": "orchestrator",
                               "flambe-cluster:launch": "a-orchestrator"})
    ids += cloud.make_instance({**tags, "flambe-cluster:role": "factory", "flambe-cluster:launch": "a-factory"})
    config = str(cloud.write_config(tmp_path / "c.yaml", NAME, creator="root", factories_num=1, connect_timeout=20))
    known = tmp_path / "clusters" / NAME / "known_hosts"
    try:
        first = cloud.cli("exec", config, "--", "true", home=tmp_path)
        assert first.returncode == 0, dump(first)
        host = cloud.host_of(ids[1])
        old = public_key(host)
        assert f"{host.address} {old}" in known.read_text()

        cloud.ec2.terminate_instances(InstanceIds=[ids[1]])  # its host stops
        cloud.release_address(host.address)
        [replacement] = cloud.ec2.run_instances(
            ImageId=cloud.image_id(), InstanceType="t3.micro", MinCount=1, MaxCount=1, SubnetId=cloud.subnet_id,
            KeyName="flambe-test", PrivateIpAddress=host.address,
            TagSpecifications=[{"ResourceType": "instance", "Tags": [
                {"Key": k, "Value": v} for k, v in {**tags, "flambe-cluster:role": "factory",
                                                     "flambe-cluster:launch": "b-factory"}.items()]}],
        )["Instances"]
        ids.append(replacement["InstanceId"])
        assert replacement["PrivateIpAddress"] == host.address and cloud.host_of(replacement["InstanceId"]) is host
        new = public_key(host)
        assert new != old, "the replacement's host has a new key"

        refused = cloud.cli("exec", config, "--", "true", home=tmp_path)  # the console shows no keys (moto's)
        assert refused.returncode == 1, dump(refused)
        assert "HOST KEY CHANGED" in refused.stderr and f"{NAME}_factory0 ({host.address})" in refused.stderr, \
            dump(refused)
        assert old in known.read_text() and new not in known.read_text(), "the refusal changes no pin"

        cloud.server.consoles[replacement["InstanceId"]] = console_with(public_key(cloud.host_of(ids[0])))
        refused = cloud.cli("exec", config, "--", "true", home=tmp_path)  # the console vouches for another key
        assert refused.returncode == 1 and "HOST KEY CHANGED" in refused.stderr, dump(refused)
        assert new not in known.read_text()

        cloud.server.consoles[replacement["InstanceId"]] = console_with(new)
        done = cloud.cli("exec", config, "--", "echo", "ran", home=tmp_path)
        assert done.returncode == 0, dump(done)
        assert f"[{NAME}_factory0] ran" in done.stdout, dump(done)
        assert "which the provider vouches for" in done.stderr and f"{NAME}_factory0" in done.stderr, dump(done)
        assert f"{host.address} {new}" in known.read_text() and old not in known.read_text()
    finally:
        cloud.server.consoles.clear()
        live = [i for i in ids if cloud.state_of(i) != "terminated"]
        if live:
            cloud.ec2.terminate_instances(InstanceIds=live)
