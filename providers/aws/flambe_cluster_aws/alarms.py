"""Idle auto-termination: one CloudWatch alarm per instance, with EC2's terminate action.

As the seed's cluster does, an instance whose CPU stays idle for its role's
timeout is terminated by CloudWatch itself, with no client and no process on
the host involved — so it works when the laptop that ran ``up`` is closed,
and when the host is wedged.  (An on-host watchdog could know whether a job
runs, but it dies with the host's software and needs permissions on the
host to terminate itself; the alarm needs neither.)

Timeouts, per role (``orchestrator_timeout``, ``factories_timeout``):

- ``-1``: never; no alarm (and an existing one is removed).
- ``N`` hours: terminate once the CPU stayed below ``IDLE_CPU_PERCENT`` (the
  maximum of every 5-minute datapoint) for N consecutive hours.
- ``0``: "when the job ends": terminate as soon as the host is idle for one
  alarm period — 5 minutes, the shortest period EC2's basic monitoring
  offers.  In practice the factories go about 5-10 minutes after the job's
  last task; note that a cluster left idle after ``up`` also goes after 5
  minutes, so submit the job right away.

The orchestrator mostly waits while the factories compute, so its CPU looks
idle during a job: give it ``-1`` (the default) or a timeout longer than
your jobs.

Alarm names are ``flambe-cluster/<name>/<creator>/<instance id>``: the same
name for the same instance on every ``up`` (idempotent: an alarm whose
settings match is left alone, one that differs is updated, no second one is
ever made), and ``down`` finds them all by prefix.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flambe_cluster.provider import CreatedResource, Instance

from . import api

logger = logging.getLogger("flambe_cluster_aws")

IDLE_CPU_PERCENT = 5.0
HOUR = 3600
SHORTEST_PERIOD = 300
KIND_ALARM = "alarm"


def prefix(config) -> str:
    """The name prefix of every alarm of the cluster."""
    return f"flambe-cluster/{config.name}/{config.options.creator}/"


def alarm_name(config, instance_id: str) -> str:
    return f"{prefix(config)}{instance_id}"


def alarm_settings(config, instance: Instance, timeout_hours: int) -> dict:
    """The PutMetricAlarm parameters for ``instance`` idle for ``timeout_hours`` (0: one shortest period)."""
    assert instance.instance_id is not None  # configure() skips instances without an id
    region = config.options.region_name
    period, periods = (SHORTEST_PERIOD, 1) if timeout_hours == 0 else (HOUR, timeout_hours)
    idle = "5 minutes (timeout 0: when the job ends)" if timeout_hours == 0 else f"{timeout_hours} hour(s)"
    return {
        "AlarmName": alarm_name(config, instance.instance_id),
        "AlarmDescription": f"flambe-cluster {config.name!r}: terminate {instance.name} after its CPU stayed below "
                            f"{IDLE_CPU_PERCENT:g}% for {idle}",
        "ActionsEnabled": True,
        "AlarmActions": [f"arn:aws:automate:{region}:ec2:terminate"],
        "MetricName": "CPUUtilization",
        "Namespace": "AWS/EC2",
        "Statistic": "Maximum",
        "Dimensions": [{"Name": "InstanceId", "Value": instance.instance_id}],
        "Period": period,
        "EvaluationPeriods": periods,
        "DatapointsToAlarm": periods,
        "Threshold": IDLE_CPU_PERCENT,
        "ComparisonOperator": "LessThanThreshold",
        "TreatMissingData": "notBreaching",
    }


_COMPARED = ("AlarmActions", "MetricName", "Namespace", "Statistic", "Dimensions", "Period", "EvaluationPeriods",
             "DatapointsToAlarm", "Threshold", "ComparisonOperator", "TreatMissingData")


def _same(existing: dict, wanted: dict) -> bool:
    return all(existing.get(key) == wanted[key] for key in _COMPARED)


def existing_alarms(config) -> dict[str, dict]:
    """The cluster's alarms by name (one paginated DescribeAlarms call)."""
    cloudwatch = api.client("cloudwatch", config.options.region_name)
    found: dict[str, dict] = {}
    for page in cloudwatch.get_paginator("describe_alarms").paginate(AlarmNamePrefix=prefix(config),
                                                                     AlarmTypes=["MetricAlarm"]):
        found.update({alarm["AlarmName"]: alarm for alarm in page["MetricAlarms"]})
    return found


def delete(region: str, names: Iterable[str], what: str) -> None:
    """Delete alarms by name (100 per call); names that do not exist are ignored."""
    names = sorted(set(names))
    cloudwatch = api.client("cloudwatch", region)
    with api.step(what):
        for start in range(0, len(names), 100):
            cloudwatch.delete_alarms(AlarmNames=names[start:start + 100])


def configure(config, instances: Iterable[Instance], journal) -> None:
    """Make each instance's alarm match its role's timeout; remove the cluster's other alarms.

    Idempotent: unchanged alarms cost no call; alarms of instances that are
    no longer in the cluster (replaced, or terminated by their alarm) and of
    roles whose timeout is now -1 are deleted.  New alarms are journaled.
    """
    options = config.options
    what = "configuring idle-termination alarms"
    with api.step(what):
        existing = existing_alarms(config)
        cloudwatch = api.client("cloudwatch", options.region_name)
        wanted = set()
        for instance in instances:
            if instance.instance_id is None:
                continue
            timeout = options.timeout(instance.role.value)
            if timeout < 0:
                continue
            settings = alarm_settings(config, instance, timeout)
            name = settings["AlarmName"]
            wanted.add(name)
            if name in existing and _same(existing[name], settings):
                continue
            if name not in existing:
                journal.record(CreatedResource(KIND_ALARM, name, {"region": options.region_name,
                                                                   "instance_id": instance.instance_id}))
            cloudwatch.put_metric_alarm(**settings)
    stale = set(existing) - wanted
    if stale:
        logger.info("cluster %r: removing %d alarm(s) of instances it no longer has", config.name, len(stale))
        delete(options.region_name, stale, "removing stale idle-termination alarms")


def delete_all(config) -> None:
    """Delete every alarm of the cluster (for ``down``)."""
    with api.step("finding the cluster's alarms"):
        names = list(existing_alarms(config))
    if names:
        delete(config.options.region_name, names, "deleting the cluster's alarms")
