"""The AWS provider's spot factories and GPU images against moto over HTTP, without SSH.

What moto received is asserted (``cloud.server.calls``): the market options
of each RunInstances call, and the image chosen for a GPU type — the newest
Deep Learning Base AMI with the OSS NVIDIA driver, which moto's catalogue
lacks, so :class:`aws_support.MotoCloud` registers one with the real name.
What `up` does with a GPU factory whose driver is missing is in
test_aws_e2e.py (it needs hosts).
"""

from __future__ import annotations

import pytest
from aws_support import DLAMI_NAME, moto_cloud  # noqa: F401 - moto_cloud is a fixture
from flambe_cluster import ClusterConfigurationError, ClusterError
from flambe_cluster.config import parse_config
from flambe_cluster.converters import build
from flambe_cluster.state import ClusterState
from flambe_cluster_aws import catalog, flambe_cluster_terminate, instances, validation
from flambe_cluster_aws.options import AWSOptions

REQUIRED = {"factories_type": "t3.micro", "orchestrator_type": "t3.micro", "key_name": "k",
            "security_group": "sg-0123456789abcdef0", "subnet_id": "subnet-0123456789abcdef0"}


def journal_for(name: str):
    return ClusterState.for_cluster(name).ensure().journal.start_run()


def run_instances_of(cloud, name: str) -> dict:
    """role -> the provider's RunInstances call for cluster ``name``."""
    return {c.role: c for c in cloud.server.calls_of("RunInstances")
            if c.from_provider and c.tags.get("flambe-cluster:cluster") == name}


# --- spot factories


def test_spot_options_are_parsed_and_checked_together():
    problems: list[str] = []
    options = build(AWSOptions, {**REQUIRED, "factories_spot": True, "factories_spot_max_price": "0.350"}, problems)
    assert problems == [] and options.factories_spot_max_price == "0.35"
    assert build(AWSOptions, {**REQUIRED, "factories_spot": True, "factories_spot_max_price": 2},
                 []).factories_spot_max_price == "2"
    assert build(AWSOptions, REQUIRED, []).factories_spot is False, "on-demand unless asked"
    problems = []
    build(AWSOptions, {**REQUIRED, "factories_spot": "yes", "factories_spot_max_price": -1}, problems)
    text = "\n".join(problems)
    assert "factories_spot" in text and "expected true or false" in text, problems
    assert "expected a positive price in USD per hour such as 0.35, got int -1" in text, problems
    problems = []
    build(AWSOptions, {**REQUIRED, "factories_spot_max_price": 0.5}, problems)
    assert any("factories_spot_max_price" in p and "without factories_spot: true" in p for p in problems), problems


def test_spot_factories_are_one_time_spot_requests_and_the_orchestrator_is_on_demand(moto_cloud, flambe_state_home):
    config = parse_config(moto_cloud.config("spot", factories_spot=True, factories_spot_max_price=0.42))
    made = instances.load(config, journal_for("spot"))
    calls = run_instances_of(moto_cloud, "spot")
    factory = calls["factory"]
    assert factory.param("InstanceMarketOptions.MarketType") == "spot"
    assert factory.param("InstanceMarketOptions.SpotOptions.SpotInstanceType") == "one-time"
    assert factory.param("InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior") == "terminate"
    assert factory.param("InstanceMarketOptions.SpotOptions.MaxPrice") == "0.42"
    assert not any(k.startswith("InstanceMarketOptions") for k in calls["orchestrator"].params), "always on-demand"
    # EC2 interrupting a spot factory terminates it: the cluster is then incomplete, as with any lost factory
    moto_cloud.ec2.terminate_instances(InstanceIds=[made.factories[1].instance_id])
    with pytest.raises(ClusterError,
                       match=r"incomplete: it has an orchestrator and 1 of 2 factories.*interrupted spot"):
        instances.find(config)
    flambe_cluster_terminate(config=config, instances=None)


def test_without_a_max_price_ec2_caps_spot_at_the_on_demand_price(moto_cloud, flambe_state_home):
    config = parse_config(moto_cloud.config("spot-cap", factories_spot=True, factories_num=1))
    problems, plan = validation.resolve(config.options)
    assert problems == []
    assert instances.launch_parameters(config, plan, "factory", 1, "t")["InstanceMarketOptions"] == {
        "MarketType": "spot",
        "SpotOptions": {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}}


# --- GPU images


def test_a_gpu_type_defaults_to_the_newest_image_with_the_nvidia_driver(moto_cloud, flambe_state_home):
    older = moto_cloud.amazon_image(DLAMI_NAME.replace("20250101", "20240101"), created="2024-01-01T00:00:00+00:00")
    moto_cloud.amazon_image("Deep Learning ARM64 Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 20250101", "arm64")
    config = parse_config(moto_cloud.config("gpu-image", factories_type="g4dn.xlarge", factories_num=1))
    problems, plan = validation.resolve(config.options)
    assert problems == []
    assert plan.images["factory"].image_id == moto_cloud.gpu_image_id, "the newest, for x86_64"
    assert plan.images["factory"].image_id != older
    ubuntu = plan.images["orchestrator"]
    assert ubuntu.name.startswith("ubuntu/images/") and "Nvidia" not in ubuntu.name, "a CPU type keeps plain Ubuntu"
    instances.load(config, journal_for("gpu-image"))
    calls = run_instances_of(moto_cloud, "gpu-image")
    assert calls["factory"].param("ImageId") == moto_cloud.gpu_image_id
    assert calls["orchestrator"].param("ImageId") == ubuntu.image_id
    flambe_cluster_terminate(config=config, instances=None)


def test_the_gpu_image_follows_the_ubuntu_version_asked_for_then_the_newest(moto_cloud):
    newer_ubuntu = moto_cloud.amazon_image("Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 24.04) 20240601")
    assert catalog.default_image("us-east-1", "x86_64", gpus=True).image_id == newer_ubuntu, "24.04 before 22.04"
    assert catalog.default_image("us-east-1", "x86_64", gpus=True, ubuntu="22.04").image_id == moto_cloud.gpu_image_id
    assert catalog.default_image("us-east-1", "x86_64", gpus=True, ubuntu="16.04").image_id == newer_ubuntu, \
        "a version without a GPU image falls back to the newest"
    moto_cloud.ec2.deregister_image(ImageId=newer_ubuntu)


def test_no_gpu_image_is_a_problem_naming_the_field(moto_cloud):
    seeded = moto_cloud.ec2.describe_images(Owners=["amazon"],
                                            Filters=[{"Name": "name", "Values": ["*Nvidia Driver*"]}])
    for image in seeded["Images"]:
        moto_cloud.ec2.deregister_image(ImageId=image["ImageId"])
    try:
        with pytest.raises(ClusterConfigurationError) as caught:
            parse_config(moto_cloud.config("no-gpu-image", factories_type="g4dn.xlarge"))
        assert any(p.startswith("factory_ami: no default image with the NVIDIA driver")
                   for p in caught.value.problems), caught.value.problems
        given = parse_config(moto_cloud.config("gpu-given", factories_type="g4dn.xlarge",
                                               factory_ami=moto_cloud.image_id()))
        assert given.options.factory_ami == moto_cloud.image_id(), "an image given is used as it is"
    finally:
        moto_cloud.gpu_image_id = moto_cloud.amazon_image(DLAMI_NAME)
