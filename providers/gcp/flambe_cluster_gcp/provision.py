"""Finding, creating, waiting for and deleting a cluster's Compute Engine instances.

A cluster is identified by its name and its owner: its instances carry the
labels ``flambe-cluster=<name>``, ``flambe-creator=<owner>``,
``flambe-role=orchestrator|factory``, ``flambe-index=<n>`` (factories) and
``flambe-run=<run id>`` (the run that made them).  They are found by one
``instances.list`` filtered on the name and owner labels, so each poll of a
wait is one request whatever the size of the cluster, and another owner's
cluster of the same name is never seen, reused or deleted.

Creation is safe to retry, to interrupt and to race:

* instance names are fixed per cluster identity
  (``<cluster>-orchestrator-<owner hash>``, ``<cluster>-factory<n>-<owner hash>``),
  so two clients creating the same cluster at once (two state folders, no
  shared lock) ask for the same names: the zone admits one instance per
  name, the second insert answers 409 ``alreadyExists``, and that client
  waits for the first client's instance;
* each name is written to the run's journal, with the run's label, *before*
  its insert is sent, so a rollback knows it even when the insert's answer
  never came; a rollback deletes a journaled name only when the instance
  carries this run's label (or is not listed), never another client's;
* each insert carries a request id derived from the run id and the name
  (UUID5), reused by every retry of that insert: a retried insert whose first
  answer was lost returns the first operation and creates nothing new;
* a stopped instance that ``up`` starts is journaled before it is started,
  and a rollback stops it again: a rollback leaves no instance in a state it
  did not find it in.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Sequence

import requests
from attrs import frozen
from flambe_cluster.provider import (
    ClusterInstances,
    CreatedResource,
    Endpoint,
    Instance,
    Progress,
    Role,
    host_name,
    public_key_line,
)
from google.api_core import exceptions as gexc
from google.cloud import compute_v1

from . import pricing
from .api import WATCHDOG_SCOPES, Compute, GCPError, describe, error_reasons
from .options import DEFAULT_IMAGE, UBUNTU, GCPOptions, parse_image

logger = logging.getLogger(__name__)

LABEL_CLUSTER = "flambe-cluster"
LABEL_ROLE = "flambe-role"
LABEL_INDEX = "flambe-index"
LABEL_RUN = "flambe-run"
LABEL_CREATOR = "flambe-creator"
RESOURCE_KIND = "gcp-instance"
#: The journal kind of a stopped instance this run started (a rollback stops it again).
STARTED_KIND = "gcp-started"
REQUEST_NAMESPACE = uuid.UUID("8b0f5bc4-3c0e-4c56-a3a5-6f6c1e6f5a10")
#: Statuses of an instance that is (or will soon be) up without help.
COMING_UP = {"PROVISIONING", "STAGING", "RUNNING", "REPAIRING"}
#: Statuses of a stopped instance that ``instances.start`` brings back.
STOPPED = {"TERMINATED", "STOPPED"}
#: Machine-type families whose GPUs come with the type (they cannot live-migrate).
GPU_MACHINE_FAMILIES = ("a2-", "a3-", "a4-", "g2-")
#: The project publishing the Deep Learning VM images, and the families of those with the NVIDIA driver
#: installed (``common-cu128-ubuntu-2204-nvidia-570``), as an RE2 pattern for an images.list filter
#: (no backslashes: the filter's literal is quoted).
DLVM_PROJECT = "deeplearning-platform-release"
DLVM_FAMILY = f"common-cu[0-9]+-ubuntu-{UBUNTU}-nvidia-[0-9]+"
#: Waits poll quickly at first, then back off to this many seconds between list requests.
MAX_POLL_INTERVAL = 2.0


def _pauses():
    """Seconds to sleep between polls: 0.2, 0.3, 0.45, ... up to MAX_POLL_INTERVAL."""
    pause = 0.2
    while True:
        yield pause
        pause = min(pause * 1.5, MAX_POLL_INTERVAL)


@frozen
class Found:
    """One instance of the cluster as ``instances.list`` showed it (no SDK object escapes this module)."""

    name: str
    role: str | None
    index: int | None
    status: str
    network_ip: str | None
    nat_ip: str | None
    gpus: int
    created: str
    run: str | None = None

    @classmethod
    def from_api(cls, instance: compute_v1.Instance) -> Found:
        labels = dict(instance.labels)
        index = labels.get(LABEL_INDEX)
        nic = instance.network_interfaces[0] if instance.network_interfaces else None
        nat = next((c.nat_i_p for c in nic.access_configs if c.nat_i_p), None) if nic else None
        return cls(
            name=instance.name,
            role=labels.get(LABEL_ROLE),
            index=int(index) if index and index.isdigit() else None,
            status=instance.status,
            network_ip=(nic.network_i_p or None) if nic else None,
            nat_ip=nat,
            gpus=sum(a.accelerator_count for a in instance.guest_accelerators),
            created=instance.creation_timestamp,
            run=labels.get(LABEL_RUN),
        )


@frozen
class Selection:
    """The instances that make up the cluster, and those that do not fit it (surplus)."""

    orchestrator: Found | None
    factories: dict  # index -> Found
    surplus: tuple

    def missing(self, factories_num: int) -> list[tuple[Role, int]]:
        wanted = [] if self.orchestrator is not None else [(Role.ORCHESTRATOR, 0)]
        return wanted + [(Role.FACTORY, i) for i in range(factories_num) if i not in self.factories]

    def chosen(self) -> list[Found]:
        return ([self.orchestrator] if self.orchestrator else []) + [self.factories[i] for i in sorted(self.factories)]


# --- names, labels, keys


def run_label(run_id: str) -> str:
    """The run id as a label value (lowercase)."""
    return run_id.lower()


def instance_name(cluster: str, role: Role, index: int, creator: str) -> str:
    """``<cluster>-orchestrator-<h>`` or ``<cluster>-factory<n>-<h>``, ``h`` a hash of the owner: valid GCP names,
    the same in every run and every client of this owner's cluster."""
    suffix = hashlib.sha256(creator.encode()).hexdigest()[:8]
    part = "orchestrator" if role is Role.ORCHESTRATOR else f"factory{index}"
    return f"{cluster}-{part}-{suffix}"


def request_id(run_id: str, name: str) -> str:
    """The request id of the insert of ``name`` in a run: the same for every retry (a UUID, as the API requires)."""
    return str(uuid.uuid5(REQUEST_NAMESPACE, f"{run_id}/{name}/insert"))


def cluster_filter(cluster: str, creator: str) -> str:
    """An instances.list filter matching exactly the instances of this owner's cluster."""
    return f'labels.{LABEL_CLUSTER} = "{cluster}" AND labels.{LABEL_CREATOR} = "{creator}"'


# --- finding


def list_cluster(compute: Compute, config) -> list[Found]:
    """Every instance labelled as this owner's cluster, in ``compute``'s zone (one paginated list request)."""
    cluster = config.name
    request = compute_v1.ListInstancesRequest(project=compute.project, zone=compute.zone,
                                              filter=cluster_filter(cluster, config.options.creator), max_results=500)

    def fetch(timeout: float) -> list[Found]:
        return [Found.from_api(i) for i in compute.instances.list(request=request, timeout=timeout)]

    try:
        return compute.call(f"listing the instances of cluster {cluster!r}", fetch)
    except Exception as exc:
        raise GCPError(
            f"cluster {cluster!r}: listing its instances in zone {compute.zone} of project {compute.project} failed: "
            f"{describe(exc)}. Check the project and your access (roles/compute.instanceAdmin.v1), then try again."
        ) from exc


def select(found: Iterable[Found], factories_num: int) -> Selection:
    """Pick the orchestrator and one factory per index; running and older instances win, the rest is surplus."""
    usable = sorted((f for f in found if f.status != "STOPPING"),
                    key=lambda f: (f.status != "RUNNING", f.created, f.name))
    orchestrator, factories, surplus = None, {}, []
    for item in usable:
        if item.role == "orchestrator" and orchestrator is None:
            orchestrator = item
        elif (item.role == "factory" and item.index is not None and item.index < factories_num
              and item.index not in factories):
            factories[item.index] = item
        else:
            surplus.append(item)
    return Selection(orchestrator, factories, tuple(surplus))


def to_instance(cluster: str, options: GCPOptions, found: Found, role: Role, index: int) -> Instance:
    """The core's record of one instance (addresses, GPUs from its accelerators, the GCP name as id)."""
    if not found.network_ip:
        raise GCPError(f"instance {found.name} of cluster {cluster!r} has no internal address yet "
                       f"(status {found.status})")
    public = found.nat_ip if options.use_public and found.nat_ip else found.network_ip
    name = host_name(cluster, role, index)
    return Instance(name=name, role=role, public=Endpoint(public), private=Endpoint(found.network_ip),
                    use_public=options.use_public, instance_id=found.name, gpus=found.gpus)


def cluster_instances(cluster: str, options: GCPOptions, selection: Selection) -> ClusterInstances:
    assert selection.orchestrator is not None
    return ClusterInstances(
        to_instance(cluster, options, selection.orchestrator, Role.ORCHESTRATOR, 0),
        [to_instance(cluster, options, selection.factories[i], Role.FACTORY, i) for i in sorted(selection.factories)],
    )


# --- creating


def instance_body(config, compute: Compute, role: Role, index: int, name: str, image_link: str, run_id: str,
                  public_key: str) -> compute_v1.Instance:
    """The insert request body of one instance."""
    options: GCPOptions = config.options
    zone = compute.zone
    machine_type = options.orchestrator_type if role is Role.ORCHESTRATOR else options.factories_type
    labels = {**options.labels, LABEL_CLUSTER: config.name, LABEL_CREATOR: options.creator, LABEL_ROLE: role.value,
              LABEL_RUN: run_label(run_id)}
    if role is Role.FACTORY:
        labels[LABEL_INDEX] = str(index)
    network = (options.network if "/" in options.network
               else f"projects/{compute.project}/global/networks/{options.network}")
    interface = compute_v1.NetworkInterface(network=network)
    if options.subnetwork:
        interface.subnetwork = (
            options.subnetwork if "/" in options.subnetwork
            else f"projects/{compute.project}/regions/{compute.region}/subnetworks/{options.subnetwork}"
        )
    if options.use_public:
        interface.access_configs = [compute_v1.AccessConfig(name="External NAT", type_="ONE_TO_ONE_NAT")]
    accelerators = []
    if role is Role.FACTORY and options.gpu_count:
        accelerators = [compute_v1.AcceleratorConfig(
            accelerator_type=f"projects/{compute.project}/zones/{zone}/acceleratorTypes/{options.factories_gpu_type}",
            accelerator_count=options.gpu_count)]
    gpus = role is Role.FACTORY and factories_have_gpus(options)
    interruptible = options.preemptible or options.spot
    scheduling = compute_v1.Scheduling(
        automatic_restart=not interruptible,
        on_host_maintenance="TERMINATE" if (gpus or interruptible or machine_type.startswith(GPU_MACHINE_FAMILIES))
        else "MIGRATE",
        preemptible=options.preemptible,
    )
    if options.spot:
        scheduling.provisioning_model = "SPOT"
        scheduling.instance_termination_action = "DELETE"
    return compute_v1.Instance(
        name=name,
        machine_type=f"zones/{zone}/machineTypes/{machine_type}",
        labels=labels,
        metadata=compute_v1.Metadata(items=[
            compute_v1.Items(key="ssh-keys", value=f"{config.username}:{public_key} {config.username}"),
            # the guest agent then publishes the SSH host keys, which the client checks on first contact
            compute_v1.Items(key="enable-guest-attributes", value="TRUE"),
            # Deep Learning VM images install the NVIDIA driver at first boot when it is not there yet
            *([compute_v1.Items(key="install-nvidia-driver", value="True")] if gpus else []),
        ]),
        disks=[compute_v1.AttachedDisk(
            boot=True, auto_delete=True,
            initialize_params=compute_v1.AttachedDiskInitializeParams(
                source_image=image_link, disk_size_gb=options.disk_size,
                disk_type=f"zones/{zone}/diskTypes/{options.disk_type}",
            ),
        )],
        network_interfaces=[interface],
        guest_accelerators=accelerators,
        scheduling=scheduling,
        service_accounts=service_accounts(options, role),
    )


def service_accounts(options: GCPOptions, role: Role) -> list[compute_v1.ServiceAccount]:
    """The least the role's instances need: none, unless their idle watchdog deletes them through the Compute API
    (``service_account`` with the compute scope only)."""
    if not options.idle_shutdown(role):
        return []
    return [compute_v1.ServiceAccount(email=options.service_account, scopes=list(WATCHDOG_SCOPES))]


def factories_have_gpus(options: GCPOptions) -> bool:
    """Whether the factories get GPUs: accelerators asked for, or a machine type that comes with them."""
    return bool(options.gpu_count) or options.factories_type.startswith(GPU_MACHINE_FAMILIES)


def image_spec(compute: Compute, options: GCPOptions, role: Role) -> str:
    """The image a role boots from: the one configured, else the default for it.

    Factories with GPUs default to the newest Deep Learning VM image family
    with the NVIDIA driver (:func:`gpu_image_family`); the rest to
    :data:`~.options.DEFAULT_IMAGE`.  Raises :class:`GCPError` when no such
    family is found, or the lookup fails.
    """
    given = options.orchestrator_image if role is Role.ORCHESTRATOR else options.factories_image
    if given:
        return given
    if role is Role.FACTORY and factories_have_gpus(options):
        return gpu_image_family(compute)
    return DEFAULT_IMAGE


def gpu_image_family(compute: Compute) -> str:
    """``PROJECT/FAMILY`` of the newest usable image whose family matches :data:`DLVM_FAMILY` (one list request)."""
    request = compute_v1.ListImagesRequest(project=DLVM_PROJECT, filter=f'family eq "{DLVM_FAMILY}"')
    what = f"finding a Deep Learning VM image with the NVIDIA driver in project {DLVM_PROJECT}"

    def fetch(timeout: float) -> list[compute_v1.Image]:
        return list(compute.client("ImagesClient").list(request=request, timeout=timeout))

    try:
        images = compute.call(what, fetch)
    except Exception as exc:
        raise GCPError(f"{what} failed: {describe(exc)}; set factories_image") from exc
    usable = [i for i in images if not (i.deprecated and i.deprecated.state)]
    if not usable:
        raise GCPError(f"no image of a family matching {DLVM_FAMILY!r} in project {DLVM_PROJECT}; set factories_image "
                       "to an image that carries the NVIDIA driver")
    newest = max(usable, key=lambda i: (i.creation_timestamp, i.name))
    return f"{DLVM_PROJECT}/{newest.family}"


def resolve_image(compute: Compute, spec: str) -> compute_v1.Image:
    """The image ``spec`` names: the newest of a family, or the one named (raises the API's error)."""
    ref = parse_image(spec)
    images = compute.client("ImagesClient")
    if ref.is_family:
        return compute.call(f"resolving {ref}", images.get_from_family, project=ref.project, family=ref.name)
    return compute.call(f"reading {ref}", images.get, project=ref.project, image=ref.name)


def _say(progress: Progress | None, config, role: Role | str | None, index: int | None, state: str) -> None:
    """Report ``state`` for the instance of ``role`` and ``index``, by its host name (``<cluster>_factory0``)."""
    if progress is not None and role is not None:
        progress(host_name(config.name, Role(role), index or 0), state)


def create(config, compute: Compute, journal, missing: Sequence[tuple[Role, int]],
           progress: Progress | None = None) -> dict[str, tuple[Role, int, str]]:
    """Insert the ``missing`` instances (each journaled before its insert);
    returns ``{name: (role, index, operation)}``.

    Inserts go out one after the other (orchestrator first) without waiting
    for their operations; :func:`wait_operations` waits for all of them.
    """
    options: GCPOptions = config.options
    run_id = journal.run_id
    public_key = public_key_line(config.key)
    images: dict[Role, str] = {}  # role -> image link
    for role in {role for role, _ in missing}:
        spec = image_spec(compute, options, role)
        try:
            images[role] = resolve_image(compute, spec).self_link
        except Exception as exc:
            raise GCPError(f"cluster {config.name!r}: resolving {parse_image(spec)} failed: {describe(exc)}. "
                           "Fix the image in the cluster file, then run `up` again.") from exc
    operations: dict[str, tuple[Role, int, str]] = {}
    for role, index in missing:
        name = instance_name(config.name, role, index, options.creator)
        body = instance_body(config, compute, role, index, name, images[role], run_id, public_key)
        journal.record(CreatedResource(RESOURCE_KIND, name, {"project": compute.project, "zone": compute.zone,
                                                             "role": role.value, "index": index,
                                                             "run": run_label(run_id),
                                                             **pricing.offer(config, role).details()}))
        request = compute_v1.InsertInstanceRequest(project=compute.project, zone=compute.zone, instance_resource=body,
                                                   request_id=request_id(run_id, name))
        what = f"creating instance {name} ({role.value}{'' if role is Role.ORCHESTRATOR else f' {index}'})"
        _say(progress, config, role, index, f"creating ({name})")
        try:
            operation = compute.call(what, compute.instances.insert_unary, request=request)
        except gexc.Conflict as exc:
            if "alreadyExists" not in error_reasons(exc):
                raise GCPError(f"cluster {config.name!r}: {what} failed: {describe(exc)}") from exc
            logger.warning("%s: it exists already (another client is creating the same cluster); using it", what)
            operations[name] = (role, index, "")
            continue
        except Exception as exc:
            raise GCPError(
                f"cluster {config.name!r}: {what} in zone {compute.zone} failed: {describe(exc)}. "
                "What this run created is rolled back; fix the cause (quota, type, image) and run `up` again."
            ) from exc
        operations[name] = (role, index, operation.name)
    return operations


def wait_operations(config, compute: Compute, operations: dict[str, tuple[Role, int, str]], deadline: float,
                    progress: Progress | None = None) -> None:
    """Wait until every insert operation is done; raise naming every instance whose operation failed."""
    failures = []
    for name, (role, index, operation_name) in operations.items():
        if not operation_name:
            continue
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                failures.append(f"{name}: its insert operation {operation_name} was not done in time")
                break
            try:
                operation = compute.call(f"waiting for the insert of {name}", compute.operations.wait,
                                         project=compute.project, zone=compute.zone, operation=operation_name,
                                         timeout=min(remaining + 5, 150.0))
            except Exception as exc:  # noqa: BLE001
                failures.append(f"{name}: waiting for its insert operation failed: {describe(exc)}")
                break
            if operation.status == compute_v1.Operation.Status.DONE:
                if operation.error and operation.error.errors:
                    codes = "; ".join(f"{e.code}: {e.message}" for e in operation.error.errors)
                    failures.append(f"{name} ({role.value}): {codes}")
                    _say(progress, config, role, index, f"creating failed ({name})")
                else:
                    _say(progress, config, role, index, f"created ({name})")
                break
    if failures:
        raise GCPError(
            f"cluster {config.name!r}: creating instances in zone {compute.zone} failed:\n  " + "\n  ".join(failures)
            + "\nWhat this run created is rolled back. For capacity errors (ZONE_RESOURCE_POOL_EXHAUSTED, "
            "QUOTA_EXCEEDED) try another zone or machine type, or ask for quota; then run `up` again."
        )


def wait_running(config, compute: Compute, journal, wanted: Sequence[str], deadline: float,
                 first: list[Found] | None = None, progress: Progress | None = None) -> list[Found]:
    """Poll (one list request per poll) until every instance in ``wanted`` is RUNNING with an address.

    Stopped instances (``TERMINATED``) are started once, each journaled
    (:data:`STARTED_KIND`) before it is started so that a rollback stops it
    again.  Raises naming each instance that is not running at the deadline,
    or that disappeared.
    """
    started: set[str] = set()
    found = first
    pauses = _pauses()
    while True:
        if found is None:
            found = list_cluster(compute, config)
        by_name = {f.name: f for f in found}
        gone = [name for name in wanted if name not in by_name]
        if gone:
            raise GCPError(
                f"cluster {config.name!r}: instance(s) {', '.join(gone)} disappeared while starting (deleted, or "
                "preempted). What this run created is rolled back; run `up` again."
            )
        for name in wanted:
            if by_name[name].status in STOPPED and name not in started:
                logger.info("starting stopped instance %s", name)
                journal.record(CreatedResource(STARTED_KIND, f"started-{name}",
                                               {"project": compute.project, "zone": compute.zone, "instance": name}))
                try:
                    compute.call(f"starting {name}", compute.instances.start_unary, project=compute.project,
                                 zone=compute.zone, instance=name)
                except Exception as exc:
                    raise GCPError(f"cluster {config.name!r}: starting the stopped instance {name} failed: "
                                   f"{describe(exc)}") from exc
                started.add(name)
        for name in wanted:
            item = by_name[name]
            _say(progress, config, item.role, item.index, f"{item.status.lower()} ({name})")
        pending = [by_name[n] for n in wanted if by_name[n].status != "RUNNING" or not by_name[n].network_ip]
        if not pending:
            return [by_name[n] for n in wanted]
        if time.monotonic() >= deadline:
            states = ", ".join(f"{f.name} is {f.status}" for f in pending)
            raise GCPError(
                f"cluster {config.name!r}: instances did not reach RUNNING within create_timeout "
                f"({config.options.create_timeout:.0f} s): {states}. What this run created is rolled back; "
                "check the instances in the console (serial port output), raise create_timeout if the zone is slow, "
                "and run `up` again."
            )
        time.sleep(next(pauses))
        found = None


def published_host_keys(compute: Compute, name: str) -> list[str] | None:
    """The SSH host keys the instance's guest agent published (guest attributes ``hostkeys/``), or None.

    None when it published none (yet), or when they cannot be read: the
    host-key policy then decides, as for any host.
    """
    request = compute_v1.GetGuestAttributesInstanceRequest(project=compute.project, zone=compute.zone, instance=name,
                                                           query_path="hostkeys/")
    try:
        attributes = compute.call(f"reading the host keys of {name}", compute.instances.get_guest_attributes,
                                  request=request, retry_for=10.0)
    except gexc.NotFound:
        return None
    except (gexc.GoogleAPICallError, requests.RequestException) as exc:  # only a stronger check is lost
        logger.info("reading the host keys of %s failed: %s", name, describe(exc))
        return None
    keys = [f"{item.key} {item.value}" for item in attributes.query_value.items if item.namespace == "hostkeys"]
    return keys or None


# --- deleting and rolling back


def rollback(config, compute: Compute, resources: Sequence[CreatedResource], deadline: float) -> None:
    """Undo what a run journaled in ``compute``'s zone: delete the instances it created, stop those it started.

    A journaled instance is deleted when it carries the run's label, or is
    not listed (its insert may still be in flight; gone already is fine):
    an instance of that name another client made is left alone.  A started
    instance still up is stopped again.  Waits until both are done.
    """
    found = {f.name: f for f in list_cluster(compute, config)}
    made = [r.resource_id for r in resources if r.kind == RESOURCE_KIND
            and (r.resource_id not in found or found[r.resource_id].run == r.details.get("run"))]
    started = [r.details["instance"] for r in resources if r.kind == STARTED_KIND]
    to_stop = [name for name in started if name in found and name not in made and found[name].status not in STOPPED]
    failures = []
    for name in to_stop:
        try:
            compute.call(f"stopping {name}", compute.instances.stop_unary, project=compute.project, zone=compute.zone,
                         instance=name)
        except gexc.NotFound:
            continue
        except Exception as exc:  # noqa: BLE001
            failures.append(f"{name}: {describe(exc)}")
    if failures:
        raise GCPError(
            f"cluster {config.name!r}: rolling back: stopping the instances this run started failed:\n  "
            + "\n  ".join(failures) + f"\nStop them: gcloud compute instances stop {' '.join(to_stop)} "
            f"--zone {compute.zone} --project {compute.project}"
        )
    delete(compute, config, made, "rolling back", deadline)
    _wait_until(compute, config, lambda now: [n for n in to_stop if n in now and now[n].status not in STOPPED],
                "rolling back: stopping the instances this run started", deadline)


def delete(compute: Compute, config, names: Sequence[str], what: str, deadline: float) -> None:
    """Delete ``names`` (gone already is fine) and wait until the cluster's list no longer shows them."""
    if not names:
        return
    cluster = config.name
    failures = []
    for name in names:
        request = compute_v1.DeleteInstanceRequest(project=compute.project, zone=compute.zone, instance=name,
                                                   request_id=str(uuid.uuid4()))
        try:
            compute.call(f"deleting {name}", compute.instances.delete_unary, request=request,
                         retry_if=lambda exc: "resourceNotReady" in error_reasons(exc),
                         retry_for=max(5.0, deadline - time.monotonic()))
        except gexc.NotFound:
            continue
        except Exception as exc:  # noqa: BLE001
            failures.append(f"{name}: {describe(exc)}")
    if failures:
        raise GCPError(
            f"cluster {cluster!r}: {what}: deleting instances failed:\n  " + "\n  ".join(failures)
            + f"\nRun the command again, or delete them: gcloud compute instances delete "
            f"{' '.join(n.split(':')[0] for n in failures)} --zone {compute.zone} --project {compute.project}"
        )
    _wait_until(compute, config, lambda now: [n for n in names if n in now], what, deadline)


def _wait_until(compute: Compute, config, pending: Callable[[dict[str, Found]], list[str]], what: str,
                deadline: float) -> None:
    """Poll the cluster's list (one request each) until ``pending(instances by name)`` is empty;
    raise at the deadline."""
    pauses = _pauses()
    while True:
        remaining = pending({f.name: f for f in list_cluster(compute, config)})
        if not remaining:
            return
        if time.monotonic() >= deadline:
            raise GCPError(
                f"cluster {config.name!r}: {what}: not done by the deadline for: {', '.join(sorted(remaining))}. "
                "Run the command again to wait for them, or check them in the console."
            )
        time.sleep(next(pauses))
