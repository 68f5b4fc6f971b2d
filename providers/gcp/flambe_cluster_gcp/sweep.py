"""``flambe-cluster list --provider gcp``: the clusters whose instances carry flambe-cluster's labels (leak sweep).

Needs no cluster file.  Where it looks:

* the project: ``where["project"]`` when given, else the environment
  variable ``GOOGLE_CLOUD_PROJECT``, else ``CLOUDSDK_CORE_PROJECT``, else
  the project of the Application Default Credentials (as a cluster file
  without ``project:``);
* the endpoint and credentials: as every client of the provider
  (:func:`.api.connect`): ``$FLAMBE_GCP_API_ENDPOINT`` overrides Google's
  endpoint (the tests point it at their fake Compute Engine), credentials
  are Application Default Credentials;
* ``where["region"]`` (``--region``): a zone (``us-central1-a``) is
  listed alone (``instances.list``); a region (``us-central1``) is every
  zone of it; none is every zone of the project.  Regions and the whole
  project take one paginated ``instances.aggregatedList``.

Only instances labelled ``flambe-cluster`` are asked for (a server-side
filter); every status is listed, ``TERMINATED`` (stopped) included: a
stopped instance's disk still costs.  One
:class:`~flambe_cluster.records.TaggedCluster` per cluster name and place
(project and zone, the terms of ``flambe_cluster_place``), its machines
described as ``NAME (STATUS, ROLE, creator OWNER)``, with the ``gcloud``
line that deletes them all.  Only list requests are made: nothing is
created, changed or deleted.
"""

from __future__ import annotations

import os
import re
import shlex
from types import SimpleNamespace

from attrs import frozen
from flambe_cluster.provider import TaggedCluster, UsageError
from google.cloud import compute_v1

from .api import Compute, CredentialsMissing, GCPError, connect, describe
from .provision import LABEL_CLUSTER, LABEL_CREATOR, LABEL_ROLE

#: Environment variables naming the project to sweep, in order (then the credentials' project).
PROJECT_ENVS = ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT")
#: Every instance labelled as a cluster's (a label's value is never empty: it is the cluster's name).
LABELLED = f'labels.{LABEL_CLUSTER} eq ".+"'
REGION = re.compile(r"^[a-z]+-[a-z]+[0-9]+$")
ZONE = re.compile(r"^([a-z]+-[a-z]+[0-9]+)-[a-z0-9]+$")
PAGE = 500


@frozen
class Labelled:
    """One labelled instance as a list showed it."""

    name: str
    zone: str
    status: str
    cluster: str
    creator: str | None
    role: str | None

    @classmethod
    def from_api(cls, instance: compute_v1.Instance, zone: str) -> Labelled:
        labels = dict(instance.labels)
        return cls(instance.name, zone, instance.status, labels.get(LABEL_CLUSTER, ""), labels.get(LABEL_CREATOR),
                   labels.get(LABEL_ROLE))

    def describe(self) -> str:
        return f"{self.name} ({self.status}, {self.role or 'no role'}, creator {self.creator or 'unknown'})"


def project_of(where: dict) -> str | None:
    """The project asked for (``where``, then the environment), or None for the credentials' own."""
    for value in (where.get("project"), *(os.environ.get(name) for name in PROJECT_ENVS)):
        if value and value.strip():
            return value.strip()
    return None


def _connect(project: str | None) -> Compute:
    options = SimpleNamespace(api_endpoint=None, project=project, zone=None)
    try:
        return connect(options)
    except CredentialsMissing:
        raise
    except GCPError:  # the only other failure: no project anywhere
        raise GCPError(
            "no project to look in: set GOOGLE_CLOUD_PROJECT (or CLOUDSDK_CORE_PROJECT) to the project, or "
            "`gcloud config set project PROJECT` (the Application Default Credentials name none)"
        ) from None


def scope_of(region: str | None) -> tuple[str | None, str | None]:
    """``(zone, region)`` of ``--region``'s value: one of them set, or neither for the whole project."""
    if not region:
        return None, None
    value = region.strip()
    if ZONE.fullmatch(value):
        return value, None
    if REGION.fullmatch(value):
        return None, value
    raise UsageError(f"--region for gcp: expected a region (us-central1) or a zone (us-central1-a), got {region!r}")


def list_labelled(compute: Compute, zone: str | None, region: str | None) -> list[Labelled]:
    """Every instance labelled ``flambe-cluster`` in ``zone``, the zones of ``region``, or the whole project.

    Raises :class:`GCPError` naming the step when a request fails, or when
    the project has no zone in ``region``.
    """
    where = f"zone {zone}" if zone else f"region {region}" if region else "every zone"

    def fetch(timeout: float) -> tuple[list[Labelled], set[str]]:
        if zone:
            request = compute_v1.ListInstancesRequest(project=compute.project, zone=zone, filter=LABELLED,
                                                      max_results=PAGE)
            return [Labelled.from_api(i, zone)
                    for i in compute.instances.list(request=request, timeout=timeout)], {zone}
        request = compute_v1.AggregatedListInstancesRequest(project=compute.project, filter=LABELLED, max_results=PAGE)
        found, zones = [], set()
        for scope, scoped in compute.instances.aggregated_list(request=request, timeout=timeout):
            if not scope.startswith("zones/"):
                continue
            name = scope.split("/", 1)[1]
            zones.add(name)
            found += [Labelled.from_api(i, name) for i in scoped.instances]
        return found, zones

    try:
        found, zones = compute.call(f"listing flambe-cluster's instances in {where}", fetch)
    except Exception as exc:
        raise GCPError(
            f"looking for flambe-cluster's instances in {where} of project {compute.project} failed: {describe(exc)}. "
            "Check the project (GOOGLE_CLOUD_PROJECT), the zone or region, and your access "
            "(roles/compute.viewer), then try again."
        ) from exc
    if region:
        zones = {z for z in zones if z.rsplit("-", 1)[0] == region}
        if not zones:
            raise GCPError(f"project {compute.project} has no zone in region {region!r}; give a region of the "
                           "project (e.g. us-central1) or a zone (us-central1-a)")
        found = [f for f in found if f.zone in zones]
    return found


def remove_command(names: list[str], zone: str, project: str) -> str:
    """The ``gcloud`` line that deletes ``names`` (their boot disks go with them: auto-delete)."""
    return " ".join(["gcloud compute instances delete", *map(shlex.quote, names), "--zone", shlex.quote(zone),
                     "--project", shlex.quote(project), "--quiet"])


def sweep(where: dict) -> list[TaggedCluster]:
    """Every cluster with instances labelled by flambe-cluster where ``where`` says (see the module docstring)."""
    zone, region = scope_of(where.get("region"))
    compute = _connect(project_of(where))
    by_cluster: dict[tuple[str, str, str], list[Labelled]] = {}
    for item in list_labelled(compute, zone, region):  # one owner's cluster per entry: a delete line never mixes owners
        by_cluster.setdefault((item.cluster, item.creator or "", item.zone), []).append(item)
    swept = []
    for (name, creator, in_zone), found in sorted(by_cluster.items()):
        found.sort(key=lambda f: (f.role != "orchestrator", f.name))
        place = {"project": compute.project, "zone": in_zone, **({"creator": creator} if creator else {})}
        swept.append(TaggedCluster(name, [f.describe() for f in found],
                                   remove_command([f.name for f in found], in_zone, compute.project), place))
    return swept
