"""The GCP provider: a cluster of Compute Engine instances (``pip install 'flambe-cluster[gcp]'``).

``provider: gcp`` (or the seed's ``!GCPCluster`` tag) with, besides the
common fields (``name``, ``factories_num``, ``username``, ``key``,
``setup_cmds``, ...)::

    zone: us-central1-a                  # required; every instance lives there
    project: my-project                  # default: the project of your Application Default Credentials
    orchestrator_type: n2-standard-2     # machine types
    factories_type: n2-standard-8
    factories_gpu_type: nvidia-tesla-t4  # guest accelerators of each factory (optional)
    factories_gpu_count: 1               # default 1 when a GPU type is given
    orchestrator_image: ubuntu-os-cloud/ubuntu-2204-lts   # PROJECT/FAMILY: newest image of the family,
    factories_image: ubuntu-os-cloud/ubuntu-2204-lts      # or projects/P/global/images/NAME; with GPUs the
                                         # default is the newest Deep Learning VM family with the NVIDIA driver
                                         # (deeplearning-platform-release/common-cuNNN-ubuntu-2204-nvidia-NNN)
    disk_type: pd-balanced               # boot disk type and size (GB)
    disk_size: 100
    network: default                     # name, or projects/P/global/networks/N (shared VPC)
    subnetwork: null                     # needed for custom-mode networks
    labels: {team: nlp}                  # extra labels on every instance (flambe-* keys are reserved)
    service_account: default             # the service account of instances whose idle watchdog deletes them
                                         #   (compute scope only); instances without idle shutdown get none
    creator: alice                       # the cluster's owner (a label; default: the local user): another
                                         #   owner's cluster of the same name is never reused or deleted
    preemptible: false                   # preemptible VMs, or
    spot: false                          # Spot VMs (deleted when preempted)
    orchestrator_timeout: -1             # hours idle before an instance deletes itself;
    factories_timeout: 1                 #   -1 never, 0 as soon as it is idle after having worked
    use_public: true                     # connect to the external address (false: the VPC address)
    create_timeout: 600                  # seconds to wait for instances to run (and to be deleted)
    api_endpoint: null                   # Compute Engine API URL; also $FLAMBE_GCP_API_ENDPOINT

Credentials are Application Default Credentials (``gcloud auth
application-default login``); see :mod:`.api` (a plain-HTTP ``api_endpoint``
is a test double and gets anonymous credentials).  The public half of
``key`` goes into each instance's ``ssh-keys`` metadata for ``username``.
Stock Ubuntu and Debian images lack ``python3-venv``, which the cluster's
environment needs: add ``setup_cmds: ["sudo apt-get install -y python3-venv"]``
(hosts with internet access) or use an image that has it.

Guarantees (see :mod:`.provision`, :mod:`.idle`):

- validation, before anything is created, reports every problem at once:
  zone, machine types, accelerator type, images, disk, network;
- a cluster is its name and its owner (``creator``); two clients creating
  it at once (two state folders) end with one set of instances: names are
  fixed per cluster, and the zone admits one instance per name;
- ``up`` finds the cluster's instances by label and reuses them; it creates
  only what is missing, each instance journaled before its insert is sent,
  each insert with a request id that makes retries harmless; it waits for
  RUNNING (one list request per poll) within ``create_timeout``;
- a failed ``up`` deletes exactly the instances this run created, stops
  again the stopped ones it started, and waits for both; ``down`` deletes every instance of the cluster and
  waits;
- idle hosts delete themselves through an on-host watchdog (no client
  needed), with the instance's service account (compute scope), given at
  creation only to the roles with idle shutdown; an instance created
  without it powers itself off instead;
- GPU factories boot an image with the NVIDIA driver by default (and get
  the ``install-nvidia-driver: True`` metadata Deep Learning VM images
  read); Ray is told about the GPUs ``nvidia-smi`` sees, and ``up`` fails
  naming a factory whose accelerators it does not see;
- the SSH host keys the guest agent publishes (``enable-guest-attributes``)
  must match on first contact; without them the host-key policy decides.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict

from flambe_cluster import hookimpl
from flambe_cluster.provider import ClusterError, Role, warn_never_idle

from . import idle, planning, pricing, provision, validation
from .api import GCPError, connect
from .options import GCPOptions

__all__ = ["GCPError", "GCPOptions"]

logger = logging.getLogger(__name__)


@hookimpl
def flambe_cluster_options_class() -> type:
    return GCPOptions


@hookimpl
def flambe_cluster_validate(config) -> list[str]:
    """Every problem at once (see :mod:`.validation`); only read requests are made."""
    return validation.problems(config)


def _deadline(config) -> float:
    return time.monotonic() + config.options.create_timeout


@hookimpl
def flambe_cluster_place(config) -> dict:
    """The project, zone and owner: one name in two zones, projects or owners' hands is two clusters."""
    return {"project": config.options.project or "(the credentials' project)", "zone": config.options.zone,
            "creator": config.options.creator}


@hookimpl
def flambe_cluster_sweep(where):
    """The clusters with instances labelled by flambe-cluster, per name and zone (see :mod:`.sweep`): lists only."""
    from . import sweep

    return sweep.sweep(where)


@hookimpl
def flambe_cluster_load_instances(config, journal, progress):
    """Reuse the cluster's instances, create what is missing (journaled first), wait until all run (each one's
    state shown through ``progress``)."""
    compute = connect(config.options)
    found = provision.list_cluster(compute, config)
    selection = provision.select(found, config.factories_num)
    if selection.surplus:
        logger.warning("cluster %r: instances not part of it (left alone until `down`): %s", config.name,
                       ", ".join(f.name for f in selection.surplus))
    missing = selection.missing(config.factories_num)
    deadline = _deadline(config)
    created = provision.create(config, compute, journal, missing, progress) if missing else {}
    provision.wait_operations(config, compute, created, deadline, progress)
    wanted = [f.name for f in selection.chosen()] + list(created)
    running = provision.wait_running(config, compute, journal, wanted, deadline, first=None if created else found,
                                     progress=progress)
    return provision.cluster_instances(config.name, config.options,
                                       provision.select(running, config.factories_num))


@hookimpl
def flambe_cluster_plan(config):
    """The instances ``up`` would create and the surplus factories it may delete, with their prices."""
    return planning.plan(config, connect(config.options))


@hookimpl
def flambe_cluster_find_instances(config):
    """The cluster's instances, or None when it has none; raises for a partial cluster, saying what to do."""
    compute = connect(config.options)
    selection = provision.select(provision.list_cluster(compute, config), config.factories_num)
    if selection.orchestrator is None and not selection.factories:
        return None
    missing = selection.missing(config.factories_num)
    if missing:
        present = ", ".join(f.name for f in selection.chosen()) or "none"
        absent = ", ".join("the orchestrator" if role is Role.ORCHESTRATOR else f"factory {i}" for role, i in missing)
        raise ClusterError(
            f"cluster {config.name!r} is incomplete: it lacks {absent} (instances: {present}). Run "
            f"`flambe-cluster up` to complete it, then `down` if you want it gone; or delete them: gcloud compute "
            f"instances delete {present.replace(', ', ' ')} --zone {compute.zone} --project {compute.project}"
        )
    return provision.cluster_instances(config.name, config.options, selection)


@hookimpl
def flambe_cluster_rollback(config, created) -> None:
    """Undo exactly what this run did (see :func:`.provision.rollback`): delete the instances it created (not another
    client's of the same name), stop again those it started; wait for both."""
    by_place = defaultdict(list)
    for resource in created:
        if resource.kind in (provision.RESOURCE_KIND, provision.STARTED_KIND):
            by_place[(resource.details.get("project"), resource.details.get("zone"))].append(resource)
    for (project, zone), resources in by_place.items():
        provision.rollback(config, connect(config.options, project=project, zone=zone), resources, _deadline(config))


@hookimpl
def flambe_cluster_terminate(config, instances) -> None:
    """Delete every instance labelled as this cluster's (surplus ones too) and wait until they are gone."""
    compute = connect(config.options)
    names = [f.name for f in provision.list_cluster(compute, config)]
    provision.delete(compute, config, names, "down", _deadline(config))


@hookimpl
def flambe_cluster_release_instances(config, instances) -> None:
    """Delete the factories a resize removed (their names) and wait until they are gone."""
    names = sorted({i.instance_id for i in instances if i.instance_id})
    provision.delete(connect(config.options), config, names, "releasing removed factories", _deadline(config))


@hookimpl
def flambe_cluster_configure_idle_shutdown(config, instances, journal, run, map) -> None:
    """Ensure each host's idle watchdog matches its role's timeout (see :mod:`.idle`); idempotent.  A warning when
    the orchestrator has none."""
    idle.configure(config, instances, run, at_once=map)
    if not config.options.idle_shutdown(Role.ORCHESTRATOR):
        warn_never_idle(config.name, pricing.offer(config, Role.ORCHESTRATOR))


@hookimpl
def flambe_cluster_host_keys(config, instance):
    """The host keys the instance's guest agent published (guest attributes), checked on first contact."""
    if instance.instance_id is None:
        return None
    return provision.published_host_keys(connect(config.options), instance.instance_id)


@hookimpl
def flambe_cluster_promised_gpus(config, instance):
    """The GPUs of the instance's accelerator configuration (read from the API when it was loaded), no SSH."""
    if instance.instance_id is not None and instance.gpus is not None:
        return instance.gpus
    return None
