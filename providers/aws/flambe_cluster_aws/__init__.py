"""The AWS provider: a cluster of EC2 instances that are reused, verified and never leaked.

``pip install 'flambe-cluster[aws]'``, then (``provider: aws`` or the seed's
``!AWSCluster`` tag)::

    provider: aws
    name: my-cluster
    factories_num: 2
    factories_type: g4dn.xlarge          # a GPU type: the default image carries the NVIDIA driver
    orchestrator_type: m5.large
    key_name: my-key                     # EC2 key pair ...
    key: ~/.ssh/my-key.pem               # ... and its private key here
    security_group: sg-0123456789abcdef0 # or a group name in the subnet's VPC
    subnet_id: subnet-0123456789abcdef0
    # optional, with their defaults:
    creator: <local user name>           # tag; part of the cluster's identity
    region_name: <boto3's configured region, else us-east-1>
    username: ubuntu
    volume_type: gp2                     # gp2 | gp3 | io1 (io1: 3000 IOPS, at most 50 per GiB)
    volume_size: 100                     # GiB, root volume
    orchestrator_ami: <newest Ubuntu LTS, looked up>
    factory_ami: <newest Ubuntu LTS, looked up; for GPU types the newest Deep Learning Base OSS Nvidia Driver GPU AMI>
    factories_spot: false                # factories as one-time spot instances (the orchestrator is always on-demand)
    factories_spot_max_price: null       # USD per hour a factory may cost at most (default: the on-demand price)
    dedicated: false                     # dedicated tenancy
    orchestrator_timeout: -1             # idle auto-termination: -1 never, 0 when the job ends, N idle hours
    factories_timeout: 1
    use_public: true                     # connect to public addresses (launched with one)
    tags: {project: x}                   # added to instances and volumes
    launch_timeout: 600                  # seconds to wait for instances to run
    connect_timeout: 300                 # (common field; the AWS default allows for booting)

Credentials, endpoints and retries come from where boto3 finds them
(``aws configure``, ``AWS_PROFILE``, ``AWS_ENDPOINT_URL``/``AWS_ENDPOINT_URL_EC2``,
``AWS_MAX_ATTEMPTS``, ...).

What it guarantees:

- **Validation before spending**: credentials, subnet, security group (in
  the subnet's VPC), key pair (and that ``key`` is its private key), instance types offered in the subnet's zone,
  images (and their architecture) — every problem reported at once.
- **Reuse**: the cluster's instances are found by tags (name, creator,
  role) and reused; only what is missing is created, with one RunInstances
  call per role whose ClientToken is this run's journal entry; each launch
  is journaled before the call and again with its instance ids.  Stopped
  instances of the cluster are started (with a warning), never duplicated;
  instances beyond the count asked for are reported as likely leaks and
  left alone.
- **Resize**: a lower ``factories_num`` terminates the factories launched
  last (their alarms deleted first); a higher one launches only the new ones.
- **Rollback**: a failed or interrupted ``up`` terminates exactly the
  instances this run launched (and stops those it started), and waits.
  ``down`` terminates every instance of the cluster, deletes its alarms and
  waits until they are terminated.
- **Idle auto-termination** with CloudWatch alarms (see :mod:`.alarms`).
- **Sweep** (``list --provider aws --region R``): the clusters with live
  instances tagged ``flambe-cluster:cluster`` in the region, each with the
  ``aws ec2 terminate-instances`` line that removes them.
- **GPUs**: the default image of a GPU type (DescribeInstanceTypes) carries
  the NVIDIA driver (see :func:`.catalog.default_image`); Ray is told about
  the GPUs ``nvidia-smi`` sees, and ``up`` fails naming a factory whose type
  promises GPUs it does not see.
- **Spot factories** (``factories_spot``) are one-time spot requests that
  EC2 terminates when it interrupts them; the cluster then lacks that
  factory (``status`` says so) until ``up`` replaces it.
- **Host keys** the instance printed on its console are required on first
  contact, and replace the pin of an instance replaced at the same address
  (see :mod:`.hostkeys`).
"""

from __future__ import annotations

from flambe_cluster import hookimpl
from flambe_cluster.provider import warn_never_idle

from . import alarms, api, catalog, hostkeys, planning, pricing, validation
from . import instances as fleet
from .options import AWSOptions, default_region

__all__ = ["AWSOptions"]

#: Fresh instances boot before sshd answers: a longer default than the core's 60 s.
DEFAULT_CONNECT_TIMEOUT = 300.0


@hookimpl
def flambe_cluster_options_class() -> type:
    return AWSOptions


@hookimpl
def flambe_cluster_config_defaults(raw: dict) -> dict:
    """``username: ubuntu`` (the default images are Ubuntu's) and a connect timeout that allows for booting."""
    return {"username": "ubuntu", "connect_timeout": DEFAULT_CONNECT_TIMEOUT}


@hookimpl
def flambe_cluster_validate(config) -> list[str]:
    """Look everything up in EC2 (read-only) and report every problem at once.

    Raises :class:`~flambe_cluster_aws.api.AWSError` (exit 1) when AWS itself
    fails to answer, naming the step.
    """
    problems, _plan = validation.resolve(config.options, config.key)
    return problems


@hookimpl
def flambe_cluster_place(config) -> dict:
    """The region and the creator tag: one name in two regions, or of two users, is two clusters."""
    return {"region": config.options.region_name, "creator": config.options.creator}


@hookimpl
def flambe_cluster_load_instances(config, journal, progress):
    """Find the cluster's instances by tags, create what is missing, wait until they run (each one's state shown)."""
    return fleet.load(config, journal, progress)


@hookimpl
def flambe_cluster_find_instances(config):
    """The cluster's live instances (stopped included), or None; never changes anything."""
    return fleet.find(config)


@hookimpl
def flambe_cluster_plan(config):
    """The instances ``up`` would launch and the surplus factories it may terminate, with their prices."""
    return planning.plan(config)


@hookimpl
def flambe_cluster_rollback(config, created) -> None:
    """Delete this run's alarms, terminate the instances it launched, stop those it started; wait."""
    names = [r.resource_id for r in created if r.kind == alarms.KIND_ALARM]
    if names:
        alarms.delete(config.options.region_name, names, "rolling back: deleting this run's alarms")
    fleet.rollback(config, created)


@hookimpl
def flambe_cluster_terminate(config, instances) -> None:
    """Delete the cluster's alarms, terminate all its instances, wait until they are terminated."""
    alarms.delete_all(config)
    fleet.terminate(config, instances)


@hookimpl
def flambe_cluster_release_instances(config, instances) -> None:
    """Delete the idle alarms of the factories a resize removed, terminate them, wait until they are terminated."""
    ids = sorted({i.instance_id for i in instances if i.instance_id})
    if ids:
        alarms.delete(config.options.region_name, [alarms.alarm_name(config, i) for i in ids],
                      "deleting the idle alarms of removed factories")
        fleet.release(config, ids)


@hookimpl
def flambe_cluster_sweep(where):
    """The clusters with live instances tagged by flambe-cluster in ``where["region"]`` (default: boto3's region)."""
    return fleet.sweep(where.get("region") or default_region())


@hookimpl
def flambe_cluster_idle_removed(config, instances):
    """Of ``instances``, those whose idle-termination alarm went off (state ALARM): their idle timeout released them."""
    if config.options.factories_timeout < 0 or not any(i.instance_id for i in instances):
        return []
    fired = {name for name, alarm in alarms.existing_alarms(config).items() if alarm["StateValue"] == "ALARM"}
    return [i for i in instances if i.instance_id and alarms.alarm_name(config, i.instance_id) in fired]


@hookimpl
def flambe_cluster_configure_idle_shutdown(config, instances, journal, run) -> None:
    """One CloudWatch alarm per instance whose role has a timeout >= 0 (see :mod:`.alarms`); a warning when the
    orchestrator has none."""
    alarms.configure(config, instances, journal)
    if config.options.orchestrator_timeout == -1:
        warn_never_idle(config.name, pricing.offer(config, "orchestrator"))


@hookimpl
def flambe_cluster_promised_gpus(config, instance):
    """NVIDIA GPUs of the instance's type, from DescribeInstanceTypes (cached); None when unknown (not NVIDIA)."""
    if instance.instance_id is None:
        return None
    name = config.options.instance_type(instance.role.value)
    try:
        with api.step("reading the instance type's GPUs"):
            info = catalog.type_info(config.options.region_name, [name]).get(name)
    except api.AWSError:
        return None
    return info.gpus if info else None


@hookimpl
def flambe_cluster_host_keys(config, instance):
    """The host keys the instance printed on its console; None when there are none.

    The core asks only when the cluster's known_hosts does not pin the
    instance's address yet (first contact), or when the address presents
    another key than the pinned one (an instance replaced at the same
    address: a key its console shows replaces the pin; otherwise the
    refusal stands).  Pinned hosts presenting their pinned key cost no call.
    """
    if instance.instance_id is None:
        return None
    return hostkeys.console_host_keys(config.options.region_name, instance.instance_id)
