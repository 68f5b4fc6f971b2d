"""Finding, creating, waiting for and terminating the cluster's EC2 instances.

A cluster's instances carry tags: ``flambe-cluster:cluster`` (its name),
``flambe-cluster:creator``, ``flambe-cluster:role`` (orchestrator or
factory) and ``flambe-cluster:launch`` (the RunInstances call that made it:
``<run id>-<role>``, also its ClientToken), plus ``Name`` and the user's
``tags``.  They are set at launch (TagSpecifications), so an instance is
never untagged, not even for a moment.

API economy: creating costs one RunInstances call per role, whatever the
number of factories; every look-up (finding, waiting for running or
terminated) is one paginated DescribeInstances call filtered on the cluster's
tags (1000 instances a page), never one call per instance.
"""

from __future__ import annotations

import datetime
import logging
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TypedDict

from attrs import frozen
from flambe_cluster.provider import (
    ClusterError,
    ClusterInstances,
    CreatedResource,
    Endpoint,
    Instance,
    Progress,
    Role,
    TaggedCluster,
    host_name,
)

from . import api, pricing, validation

logger = logging.getLogger("flambe_cluster_aws")

TAG_CLUSTER = "flambe-cluster:cluster"
TAG_CREATOR = "flambe-cluster:creator"
TAG_ROLE = "flambe-cluster:role"
TAG_LAUNCH = "flambe-cluster:launch"
LIVE = ("pending", "running", "stopping", "stopped")
GONE = ("shutting-down", "terminated")
#: io1 volumes get this many provisioned IOPS (capped at EC2's 50 IOPS per GiB).
IO1_IOPS = 3000
#: How long ``down`` and rollbacks wait for instances to be terminated (or stopped).
RELEASE_TIMEOUT = 600.0
#: Seconds between two looks at the instances (the first look is immediate).
POLL_DELAYS = (0.5, 1.0, 2.0, 3.0, 5.0)
#: Filter values per DescribeInstances filter (EC2 accepts up to 200).
FILTER_VALUES = 200

KIND_LAUNCH = "launch"
KIND_STARTED = "started"


@frozen
class Machine:
    """One EC2 instance, as read from DescribeInstances (plain values, no SDK object)."""

    instance_id: str
    state: str
    role: str | None
    launch: str
    launch_index: int
    launch_time: float
    private_ip: str | None
    public_ip: str | None
    reason: str
    cluster: str | None = None
    creator: str | None = None

    @classmethod
    def parse(cls, item: dict) -> Machine:
        tags = {t["Key"]: t["Value"] for t in item.get("Tags", [])}
        launched = item.get("LaunchTime")
        return cls(
            instance_id=item["InstanceId"],
            state=item["State"]["Name"],
            role=tags.get(TAG_ROLE),
            launch=tags.get(TAG_LAUNCH, ""),
            launch_index=int(item.get("AmiLaunchIndex", 0)),
            launch_time=launched.timestamp() if isinstance(launched, datetime.datetime) else 0.0,
            private_ip=item.get("PrivateIpAddress") or None,
            public_ip=item.get("PublicIpAddress") or None,
            reason=(item.get("StateReason") or {}).get("Message", ""),
            cluster=tags.get(TAG_CLUSTER),
            creator=tags.get(TAG_CREATOR),
        )

    def describe(self) -> str:
        return (f"{self.instance_id} ({self.state}"
                f"{': ' + self.reason if self.reason and self.state != 'running' else ''})")


@frozen
class Selection:
    """The instances a cluster uses, chosen among those EC2 lists.

    ``surplus`` are live instances that existed before this run beyond the
    count asked for (likely leaks: reported, never deleted); ``others`` are
    new live instances not chosen (a concurrent run's, or this run's own
    duplicates, which it terminates).
    """

    orchestrator: Machine | None
    factories: tuple[Machine, ...]
    surplus: tuple[Machine, ...]
    others: tuple[Machine, ...]

    @property
    def chosen(self) -> list[Machine]:
        return ([self.orchestrator] if self.orchestrator else []) + list(self.factories)


def select(machines: Iterable[Machine], factories_num: int, known: set[str]) -> Selection:
    """Choose the orchestrator and the factories among the live instances, the same way in every run.

    Instances ``known`` before this run (reused) come first, ordered by their
    launch tag and launch index, so names stay stable from run to run.  New
    instances follow by launch time: when two clients launched the same
    cluster at once, the one that launched later sees the earlier one's
    instances and gives its own up.
    """

    def key(m: Machine) -> tuple:
        if m.instance_id in known:
            return (0, 0.0, m.launch, m.launch_index, m.instance_id)
        return (1, m.launch_time, m.launch, m.launch_index, m.instance_id)

    live = [m for m in machines if m.state in LIVE]
    orchestrators = sorted((m for m in live if m.role == Role.ORCHESTRATOR.value), key=key)
    factories = sorted((m for m in live if m.role == Role.FACTORY.value), key=key)
    rest = (orchestrators[1:] + factories[factories_num:]
            + [m for m in live if m.role not in ("orchestrator", "factory")])
    return Selection(
        orchestrator=orchestrators[0] if orchestrators else None,
        factories=tuple(factories[:factories_num]),
        surplus=tuple(m for m in rest if m.instance_id in known),
        others=tuple(m for m in rest if m.instance_id not in known),
    )


# --- looking


def cluster_filters(config) -> list[dict]:
    """DescribeInstances filters that match exactly this cluster's instances (name and creator)."""
    return [
        {"Name": f"tag:{TAG_CLUSTER}", "Values": [config.name]},
        {"Name": f"tag:{TAG_CREATOR}", "Values": [config.options.creator]},
    ]


def describe(region: str, filters: list[dict]) -> list[Machine]:
    """Every instance matching ``filters``, in any state: one call per 1000 instances."""
    paginator = api.client("ec2", region).get_paginator("describe_instances")
    machines = []
    for page in paginator.paginate(Filters=filters, PaginationConfig={"PageSize": 1000}):
        for reservation in page["Reservations"]:
            machines += [Machine.parse(item) for item in reservation["Instances"]]
    return machines


def _chunks(items: Sequence[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def describe_where(region: str, name: str, values: Iterable[str]) -> list[Machine]:
    """The instances whose filter ``name`` has one of ``values`` (any state; 200 values per look)."""
    machines = []
    for chunk in _chunks(sorted(set(values)), FILTER_VALUES):
        machines += describe(region, [{"Name": name, "Values": chunk}])
    return machines


def sweep(region: str) -> list[TaggedCluster]:
    """Every cluster with live instances tagged ``flambe-cluster:cluster`` in ``region``, by name and creator
    (one paginated look): alice's and bob's ``exp1`` are two clusters.

    Each comes with its place (region, creator) and the AWS CLI line that
    terminates its instances.
    """
    with api.step(f"looking for flambe-cluster's instances in {region}"):
        machines = describe(region, [{"Name": "tag-key", "Values": [TAG_CLUSTER]},
                                     {"Name": "instance-state-name", "Values": list(LIVE)}])
    by_cluster: dict[tuple[str, str], list[Machine]] = {}
    for machine in machines:
        by_cluster.setdefault((machine.cluster or "", machine.creator or ""), []).append(machine)
    return [
        TaggedCluster(name, [f"{m.instance_id} ({m.state}, {m.role or 'no role'})" for m in found],
                      f"aws ec2 terminate-instances --region {region} --instance-ids "
                      + " ".join(m.instance_id for m in found),
                      {"region": region, "creator": creator})
        for (name, creator), found in sorted(by_cluster.items())
    ]


# --- records for the core


def _record(config, machine: Machine, name: str) -> Instance:
    if machine.private_ip is None:
        raise ClusterError(f"AWS, instance {machine.instance_id} of cluster {config.name!r} has no private address "
                           f"(state {machine.state}); check it in the EC2 console")
    private = Endpoint(machine.private_ip)
    public = Endpoint(machine.public_ip) if machine.public_ip else private
    role = Role(machine.role)
    return Instance(name=name, role=role, public=public, private=private,
                    use_public=config.options.use_public, instance_id=machine.instance_id)


def to_cluster_instances(config, selection: Selection) -> ClusterInstances:
    assert selection.orchestrator is not None
    return ClusterInstances(
        orchestrator=_record(config, selection.orchestrator, host_name(config.name, Role.ORCHESTRATOR, 0)),
        factories=[_record(config, m, host_name(config.name, Role.FACTORY, i))
                   for i, m in enumerate(selection.factories)],
    )


def _warn_surplus(config, surplus: Sequence[Machine]) -> None:
    if surplus:
        logger.warning(
            "cluster %r has %d more instance(s) than its configuration asks for: %s. Factories of a cluster whose "
            "factories_num was lowered are terminated by this `up`; others were likely leaked by an earlier run and "
            "are not used and not deleted: `flambe-cluster down` terminates them with the rest of the cluster, or "
            "terminate them yourself.",
            config.name, len(surplus),
            ", ".join(f"{m.instance_id} ({m.role or 'no role'}, {m.state})" for m in surplus),
        )


# --- find (never changes anything)


def find(config) -> ClusterInstances | None:
    """The cluster's live instances (stopped ones included), or None when it has none.

    Raises ClusterError when the cluster is incomplete (an orchestrator or
    factories missing), naming what is there and what to do.
    """
    region = config.options.region_name
    with api.step("finding the cluster's instances"):
        machines = describe(region, cluster_filters(config))
    live = [m for m in machines if m.state in LIVE]
    if not live:
        return None
    selection = select(machines, config.factories_num, {m.instance_id for m in live})
    if selection.orchestrator is None or len(selection.factories) < config.factories_num:
        have = ", ".join(f"{m.instance_id} ({m.role or 'no role'}, {m.state})" for m in live)
        raise ClusterError(
            f"AWS, finding the cluster's instances: cluster {config.name!r} is incomplete: it has "
            f"{'an' if selection.orchestrator else 'no'} orchestrator and {len(selection.factories)} of "
            f"{config.factories_num} factories ({have}); an idle-timeout alarm may have terminated the others"
            f"{' (or EC2 interrupted spot factories)' if config.options.factories_spot else ''}. "
            "Run `flambe-cluster up` to replace what is missing, or terminate what is left: "
            f"aws ec2 terminate-instances --region {region} --instance-ids {' '.join(m.instance_id for m in live)}"
        )
    _warn_surplus(config, selection.surplus)
    return to_cluster_instances(config, selection)


# --- load (find or create)


def launch_parameters(config, plan: validation.LaunchPlan, role: str, count: int, token: str) -> dict:
    """The RunInstances parameters of ``count`` instances of ``role`` (tags, volume, network, tenancy,
    spot factories)."""
    options = config.options
    image = plan.images[role]
    tags = {
        **options.tags,
        "Name": f"{config.name}_{role}",
        TAG_CLUSTER: config.name,
        TAG_CREATOR: options.creator,
        TAG_ROLE: role,
        TAG_LAUNCH: token,
    }
    tag_list = [{"Key": k, "Value": v} for k, v in tags.items()]
    ebs: dict = {"VolumeSize": options.volume_size, "VolumeType": options.volume_type, "DeleteOnTermination": True}
    if options.volume_type == "io1":
        ebs["Iops"] = max(100, min(IO1_IOPS, 50 * options.volume_size))
    params: dict = {
        "ImageId": image.image_id,
        "InstanceType": options.instance_type(role),
        "MinCount": count,
        "MaxCount": count,
        "KeyName": options.key_name,
        "ClientToken": token,
        "BlockDeviceMappings": [{"DeviceName": image.root_device, "Ebs": ebs}],
        "TagSpecifications": [{"ResourceType": "instance", "Tags": tag_list},
                              {"ResourceType": "volume", "Tags": tag_list}],
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
    }
    if options.use_public:
        params["NetworkInterfaces"] = [{
            "DeviceIndex": 0, "SubnetId": plan.subnet_id, "Groups": [plan.security_group_id],
            "AssociatePublicIpAddress": True, "DeleteOnTermination": True,
        }]
    else:
        params["SubnetId"] = plan.subnet_id
        params["SecurityGroupIds"] = [plan.security_group_id]
    if options.dedicated:
        params["Placement"] = {"Tenancy": "dedicated"}
    if role == Role.FACTORY.value and options.factories_spot:
        params["InstanceMarketOptions"] = spot_market_options(options.factories_spot_max_price)
    return params


def spot_market_options(max_price: str | None) -> dict:
    """RunInstances' market options of one-time spot instances that EC2 terminates when it interrupts them.

    Without ``max_price`` EC2 caps the price at the on-demand price.
    """
    spot: dict = {"SpotInstanceType": "one-time", "InstanceInterruptionBehavior": "terminate"}
    if max_price is not None:
        spot["MaxPrice"] = max_price
    return {"MarketType": "spot", "SpotOptions": spot}


def _launch(config, journal, plan: validation.LaunchPlan, role: str, count: int) -> list[str]:
    """One RunInstances call for ``count`` instances of ``role``, journaled before and after.

    The journal entry is written before the call (so a crash during it still
    leaves a trace a rollback can follow through the launch tag) and again
    with the instance ids as soon as EC2 answers, or marked ``refused`` when
    EC2 answered that it launched nothing (see :func:`_refused`).  The
    ClientToken is the entry's id: a retried call never launches twice, and
    a later run never reuses it.
    """
    from botocore.exceptions import ClientError

    options = config.options
    token = f"{journal.run_id}-{role}"
    details = {"region": options.region_name, "role": role, "count": count, "instance_ids": [],
               **pricing.offer(config, role).details()}  # what each costs: the cost view reads it from the journal
    journal.record(CreatedResource(KIND_LAUNCH, token, details))
    kind = options.instance_type(role)
    what = f"creating the orchestrator ({kind})" if role == "orchestrator" else f"creating factories ({count} x {kind})"
    with api.step(what):
        try:
            response = api.client("ec2", options.region_name).run_instances(
                **launch_parameters(config, plan, role, count, token))
        except ClientError as exc:
            if _refused(exc):
                journal.record(CreatedResource(KIND_LAUNCH, token, {**details, "refused": True}))
            raise
    ids = [item["InstanceId"] for item in response["Instances"]]
    journal.record(CreatedResource(KIND_LAUNCH, token, {**details, "instance_ids": ids}))
    return ids


def _refused(exc) -> bool:
    """Whether a RunInstances error says that nothing was launched: a client error (4xx), or a lack of capacity.

    Any other failure (5xx, no answer) leaves it open: the instances may
    exist, and a rollback looks for them through the launch tag.
    """
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 500)
    return status < 500 or api.error_code(exc).startswith("Insufficient")


def load(config, journal, progress: Progress | None = None) -> ClusterInstances:
    """Reuse the cluster's instances, start stopped ones, create what is missing, wait until all run.

    While it waits, ``progress`` gets each instance's EC2 state at every
    poll.  Raises :class:`AWSError` naming the step that failed; everything
    this run created is in the journal by then.
    """
    options = config.options
    region = options.region_name
    with api.step("finding the cluster's instances"):
        machines = describe(region, cluster_filters(config))
    known = {m.instance_id for m in machines if m.state in LIVE}
    selection = select(machines, config.factories_num, known)
    _warn_surplus(config, selection.surplus)
    missing_factories = config.factories_num - len(selection.factories)
    launched: list[str] = []
    if selection.orchestrator is None or missing_factories:
        problems, plan = validation.resolve(options, config.key)
        if problems or plan is None:
            raise ClusterError(
                "AWS, preparing to create instances: the configuration no longer matches the account:\n  - "
                + "\n  - ".join(problems)
            )
        new = [host_name(config.name, Role.ORCHESTRATOR, 0)] if selection.orchestrator is None else []
        new += [host_name(config.name, Role.FACTORY, i) for i in range(len(selection.factories), config.factories_num)]
        for name in new if progress is not None else ():
            assert progress is not None  # the loop runs only with a progress
            progress(name, "launching")
        if selection.orchestrator is None:
            launched += _launch(config, journal, plan, "orchestrator", 1)
        if missing_factories:
            launched += _launch(config, journal, plan, "factory", missing_factories)
    elif all(_ready(config, m) for m in selection.chosen):
        return to_cluster_instances(config, selection)
    return to_cluster_instances(config, _wait_running(config, journal, known, set(launched), progress))


def _ready(config, machine: Machine) -> bool:
    return (machine.state == "running" and machine.private_ip is not None
            and (machine.public_ip is not None or not config.options.use_public))


def _report(config, selection: Selection, progress: Progress | None) -> None:
    """Each chosen instance's state, by the name it will have (``<cluster>_factory0``): EC2's state and its id."""
    if progress is None:
        return
    named = [(host_name(config.name, Role.ORCHESTRATOR, 0), selection.orchestrator)] if selection.orchestrator else []
    named += [(host_name(config.name, Role.FACTORY, i), m) for i, m in enumerate(selection.factories)]
    for name, machine in named:
        state = "running" if _ready(config, machine) else (
            "running, waiting for its address" if machine.state == "running" else machine.state)
        progress(name, f"{state} ({machine.instance_id})")


def _wait_running(config, journal, known: set[str], launched: set[str], progress: Progress | None = None) -> Selection:
    """Poll (one DescribeInstances per look) until every chosen instance runs with its addresses.

    Starts chosen instances that are stopped (saying so), gives up this
    run's own instances that lost to a concurrent launch, and raises naming
    the instances when one is terminated or the deadline passes.
    """
    options = config.options
    region = options.region_name
    what = "waiting for instances to run"
    deadline = time.monotonic() + options.launch_timeout
    started: set[str] = set()
    given_up: set[str] = set()
    delays = iter(POLL_DELAYS)
    while True:
        with api.step(what):
            machines = describe(region, cluster_filters(config))
        selection = select(machines, config.factories_num, known)
        losers = [m for m in selection.others if m.instance_id in launched and m.instance_id not in given_up]
        if losers:
            _give_up(config, losers)
            given_up |= {m.instance_id for m in losers}
        seen = {m.instance_id: m for m in machines}
        failed = [seen[i] for i in launched - given_up if i in seen and seen[i].state in GONE]
        if failed:
            raise api.AWSError(
                what, "InstanceTerminated",
                "EC2 terminated instances this run launched: " + "; ".join(m.describe() for m in failed),
                [m.instance_id for m in failed],
                "read the state reason above (capacity, quota, volume or image problems are the usual causes) "
                "and retry",
            )
        chosen = selection.chosen
        _report(config, selection, progress)
        invisible = sorted(i for i in launched - given_up if i not in seen)
        if (selection.orchestrator is None or len(selection.factories) < config.factories_num) and not invisible:
            raise api.AWSError(
                what, "InstanceLost",
                f"cluster {config.name!r} lost instances while waiting; it now has: "
                + (", ".join(m.describe() for m in machines if m.state in LIVE) or "none"),
                advice="run `flambe-cluster up` again to replace them",
            )
        to_start = [m for m in chosen if m.state == "stopped" and m.instance_id not in started]
        if to_start:
            _start(config, journal, to_start)
            started |= {m.instance_id for m in to_start}
        without_public = [m for m in chosen if m.state == "running" and options.use_public and m.public_ip is None]
        if without_public:
            raise api.AWSError(
                what, "NoPublicAddress", "running instances without a public address: "
                + ", ".join(m.instance_id for m in without_public),
                [m.instance_id for m in without_public],
                "set `use_public: false` when this machine reaches the subnet's private addresses, or terminate these "
                "instances (`flambe-cluster down`) so they are launched again with a public address",
            )
        waiting = [m for m in chosen if not _ready(config, m)]
        if not waiting and not invisible:
            return selection
        if time.monotonic() >= deadline:
            raise api.AWSError(
                what, "Timeout",
                f"not running after {options.launch_timeout:g} s: "
                + ", ".join([m.describe() for m in waiting] + [f"{i} (not listed by EC2 yet)" for i in invisible]),
                [m.instance_id for m in waiting] + invisible,
                "look at the instances in the EC2 console (state reason, system log); "
                "raise `launch_timeout` if they are only slow",
            )
        time.sleep(min(next(delays, POLL_DELAYS[-1]), max(0.0, deadline - time.monotonic())))


def _start(config, journal, machines: Sequence[Machine]) -> None:
    ids = [m.instance_id for m in machines]
    logger.warning("cluster %r: starting %d stopped instance(s): %s", config.name, len(ids), ", ".join(ids))
    for instance_id in ids:
        journal.record(CreatedResource(KIND_STARTED, f"started-{instance_id}",
                                       {"region": config.options.region_name, "instance_id": instance_id}))
    with api.step("starting the cluster's stopped instances", ids):
        api.client("ec2", config.options.region_name).start_instances(InstanceIds=ids)


def _give_up(config, machines: Sequence[Machine]) -> None:
    """Terminate this run's instances that lost to a concurrent launch of the same cluster."""
    ids = [m.instance_id for m in machines]
    logger.warning(
        "cluster %r was launched by another client at the same time; keeping its instances and terminating this "
        "run's duplicates: %s", config.name, ", ".join(ids),
    )
    with api.step("terminating duplicate instances of a concurrent launch", ids):
        api.client("ec2", config.options.region_name).terminate_instances(InstanceIds=ids)


# --- releasing


def terminate_and_wait(region: str, ids: Iterable[str], look: Callable[[], list[Machine]], what: str) -> None:
    """Terminate ``ids`` and wait until ``look()`` reports them terminated (or no longer lists them)."""
    ids = sorted(set(ids))
    if not ids:
        return
    with api.step(what, ids):
        for chunk in _chunks(ids, 1000):
            _terminate(region, chunk)
    _wait_state(ids, look, ("terminated",), what)


#: Seconds between looks for the instances of a launch whose answer was lost: EC2 lists new instances late.
LOST_LAUNCH_DELAYS = (0.5, 1.0, 2.0, 3.0)


def _unanswered(resource: CreatedResource) -> bool:
    """Whether a launch may have made instances the journal has no id of (its answer never came)."""
    return not resource.details.get("instance_ids") and not resource.details.get("refused")


def _look_for_lost_launches(look: Callable[[], list[Machine]], counts: dict[str, int]) -> list[Machine]:
    """``look()``, again with backoff (:data:`LOST_LAUNCH_DELAYS`) while a launch token in ``counts`` has fewer
    instances listed than it asked for (RunInstances launches all or none); then taken as never launched."""
    delays = iter(LOST_LAUNCH_DELAYS)
    while True:
        machines = look()
        short = sorted(t for t, n in counts.items() if sum(m.launch == t for m in machines) < n)
        if not short:
            return machines
        delay = next(delays, None)
        if delay is None:
            logger.info("taking launch(es) %s as never made: EC2 lists none of their instances", ", ".join(short))
            return machines
        time.sleep(delay)


#: Seconds to wait before asking again to terminate ids EC2 does not know (yet: it is eventually consistent).
NOT_FOUND_RETRIES = (1.0, 2.0)


def _terminate(region: str, ids: list[str]) -> None:
    """TerminateInstances; ids EC2 says do not exist are asked again briefly (new ones may not be visible yet),
    then taken as gone."""
    from botocore.exceptions import ClientError

    ec2 = api.client("ec2", region)
    retries = iter(NOT_FOUND_RETRIES)
    while ids:
        try:
            ec2.terminate_instances(InstanceIds=ids)
            return
        except ClientError as exc:
            missing = set(re.findall(r"i-[0-9a-f]+", str(exc))) & set(ids)
            if api.error_code(exc) != "InvalidInstanceID.NotFound" or not missing:
                raise
            known = [i for i in ids if i not in missing]
            if known:
                ec2.terminate_instances(InstanceIds=known)
            delay = next(retries, None)
            if delay is None:
                logger.info("taking %s as long gone: EC2 does not know them", ", ".join(sorted(missing)))
                return
            time.sleep(delay)
            ids = sorted(missing)


def _wait_state(ids: Sequence[str], look: Callable[[], list[Machine]], states: tuple[str, ...], what: str) -> None:
    """Poll ``look()`` until none of ``ids`` is in a state other than ``states`` (vanished counts as done)."""
    deadline = time.monotonic() + RELEASE_TIMEOUT
    delays = iter(POLL_DELAYS)
    wanted = set(ids)
    while True:
        with api.step(what, ids):
            remaining = [m for m in look() if m.instance_id in wanted and m.state not in states]
        if not remaining:
            return
        if time.monotonic() >= deadline:
            raise api.AWSError(
                what, "Timeout", f"still not {' or '.join(states)} after {RELEASE_TIMEOUT:g} s: "
                + ", ".join(m.describe() for m in remaining),
                [m.instance_id for m in remaining],
                "check them in the EC2 console and terminate them there if they are stuck",
            )
        time.sleep(min(next(delays, POLL_DELAYS[-1]), max(0.0, deadline - time.monotonic())))


class _RollbackBucket(TypedDict):
    """What a rollback handles in one region: launch tokens, journaled ids, started ids, unanswered launches."""

    tokens: list[str]
    ids: list[str]
    started: list[str]
    unanswered: dict[str, int]


def rollback(config, created: Sequence[CreatedResource]) -> None:
    """Terminate the instances these launches made, stop the instances this run started; wait for both.

    Instances are found through the journaled ids and the launch tags (so a
    launch interrupted before its ids were journaled is covered too; EC2
    lists new instances late, so such a launch is looked up again until its
    instances are listed, a few seconds at most).  Idempotent: instances
    already gone are skipped.
    """
    by_region: dict[str, _RollbackBucket] = {}
    for resource in created:
        region = resource.details.get("region", config.options.region_name)
        bucket = by_region.setdefault(region, {"tokens": [], "ids": [], "started": [], "unanswered": {}})
        if resource.kind == KIND_LAUNCH:
            bucket["tokens"].append(resource.resource_id)
            bucket["ids"] += resource.details.get("instance_ids", [])
            if _unanswered(resource):
                bucket["unanswered"][resource.resource_id] = resource.details.get("count", 1)
        elif resource.kind == KIND_STARTED:
            bucket["started"].append(resource.details["instance_id"])
    for region, bucket in by_region.items():
        tokens, started = bucket["tokens"], bucket["started"]

        def look(tokens=tokens, region=region, started=started) -> list[Machine]:
            return describe_where(region, f"tag:{TAG_LAUNCH}", tokens) + describe_where(region, "instance-id", started)

        with api.step("rolling back: finding the instances this run created"):
            machines = _look_for_lost_launches(look, bucket["unanswered"])
        visible = {m.instance_id: m for m in machines}
        made = set(bucket["ids"]) | {m.instance_id for m in machines if m.launch in tokens}
        # A journaled id EC2 does not list is either too new to be listed or long gone: _terminate tells them apart.
        ids = {i for i in made if i not in visible or visible[i].state != "terminated"}
        to_stop = sorted(m.instance_id for m in machines
                         if m.instance_id in started and m.state in ("pending", "running"))
        if to_stop:
            with api.step("rolling back: stopping the instances this run started", to_stop):
                api.client("ec2", region).stop_instances(InstanceIds=to_stop)
        terminate_and_wait(region, ids, look, "rolling back: terminating the instances this run created")
        if to_stop:
            _wait_state(to_stop, look, ("stopped", "terminated"), "rolling back: waiting for started instances to stop")


def release(config, ids: Sequence[str]) -> None:
    """Terminate the instances ``ids`` (factories a resize removed) and wait until they are terminated."""
    region = config.options.region_name
    terminate_and_wait(region, ids, lambda: describe_where(region, "instance-id", ids),
                       f"terminating {len(ids)} factories removed from cluster {config.name!r}")


def terminate(config, instances: ClusterInstances | None) -> None:
    """Terminate every live instance of the cluster (its tags) and the given ones; wait until terminated."""
    region = config.options.region_name
    with api.step("finding the cluster's instances to terminate"):
        machines = describe(region, cluster_filters(config))
    ids = {m.instance_id for m in machines if m.state not in ("terminated",)}
    ids |= {i.instance_id for i in instances or () if i.instance_id}
    terminated = {m.instance_id for m in machines if m.state == "terminated"}
    ids -= terminated
    look_filters = cluster_filters(config)

    def look() -> list[Machine]:
        found = describe(region, look_filters)
        return found + describe_where(region, "instance-id", ids - {m.instance_id for m in found})

    terminate_and_wait(region, ids, look, f"terminating the instances of cluster {config.name!r}")
