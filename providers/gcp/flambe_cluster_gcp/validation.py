"""Checking a GCP cluster against the API before anything is created or paid for.

:func:`problems` returns every problem at once, each naming the field, what
was expected and what was found: the zone, the machine types and accelerator
type (offered in the zone — when the zone itself is wrong, whether they exist
in any zone), the images (they resolve and are not obsolete; the disk is
large enough for them), the disk type, the network and subnetwork, plus the
rules GCP puts on names.  Only read requests are made; independent lookups
run concurrently.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flambe_cluster.provider import Role, public_key_line
from google.api_core import exceptions as gexc
from google.cloud import compute_v1

from .api import Compute, CredentialsMissing, GCPError, connect, describe
from .options import GCPOptions, parse_image
from .provision import instance_name

#: The longest cluster name whose instance names stay within GCP's 63 characters.
MAX_NAME = 63 - len("-orchestrator-") - 8
GCP_NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


def static_problems(config) -> list[str]:
    """Problems found without asking the API."""
    options: GCPOptions = config.options
    problems = []
    if not GCP_NAME.fullmatch(config.name) or len(config.name) > MAX_NAME:
        problems.append(
            f"name: GCP instance names and labels need 1-{MAX_NAME} lowercase letters, digits and '-', starting with "
            f"a letter and not ending with '-', got {config.name!r}"
        )
    elif len(instance_name(config.name, Role.FACTORY, max(config.factories_num - 1, 0), "x")) > 63:
        problems.append(f"name: {config.name!r} is too long for {config.factories_num} factories' instance names")
    if options.preemptible and options.spot:
        problems.append("spot: choose either preemptible: true or spot: true, not both")
    if options.factories_gpu_count is not None and options.factories_gpu_type is None:
        problems.append(
            f"factories_gpu_count: {options.factories_gpu_count} GPUs asked for without factories_gpu_type "
            "(e.g. 'nvidia-tesla-t4')"
        )
    try:
        public_key_line(config.key)
    except (OSError, ValueError) as exc:
        problems.append(f"key: {exc}")
    return problems


def problems(config) -> list[str]:
    """Every problem that stops this cluster from being created (see the module docstring)."""
    found = static_problems(config)
    options: GCPOptions = config.options
    try:
        compute = connect(options)
    except CredentialsMissing as exc:
        return found + [f"credentials: {exc}"]
    except GCPError as exc:
        return found + [f"project: {exc}"]
    try:
        zones = [z.name for z in compute.call("listing zones", compute.client("ZonesClient").list,
                                               project=compute.project)]
    except gexc.GoogleAPICallError as exc:
        return found + [
            f"project: cannot use Compute Engine in project {compute.project!r}: {describe(exc)}. Check the project "
            "id, that the Compute Engine API is enabled, and that your account may use it "
            "(roles/compute.instanceAdmin.v1)"
        ]
    except Exception as exc:  # noqa: BLE001 - connection problems and the like
        return found + [f"project: cannot reach the Compute Engine API: {describe(exc)}"]
    zone_ok = options.zone in zones
    checks: list[Callable[[], list[str]]] = []
    if not zone_ok:
        close = difflib.get_close_matches(options.zone, zones, n=3)
        hint = (f"; did you mean {' or '.join(map(repr, close))}?" if close
                else f"; zones: {', '.join(sorted(zones)[:12])}")
        found.append(f"zone: {options.zone!r} is not a zone of project {compute.project!r}{hint}")
    machine_types: dict[str, list[str]] = {options.orchestrator_type: ["orchestrator_type"]}
    if config.factories_num:
        machine_types.setdefault(options.factories_type, []).append("factories_type")
    for machine_type, fields in machine_types.items():
        checks.append(functools.partial(_machine_type, compute, options, " and ".join(fields), machine_type, zone_ok))
    if options.factories_gpu_type is not None and config.factories_num:
        checks.append(lambda: _accelerator(compute, options, zone_ok))
    checks.append(lambda: _images(compute, options))
    if zone_ok:
        checks.append(lambda: _disk_type(compute, options))
    checks.append(lambda: _network(compute, options))
    with ThreadPoolExecutor(max_workers=len(checks)) as pool:
        for result in pool.map(lambda check: check(), checks):
            found.extend(result)
    return found


def _lookup_failed(field_name: str, what: str, exc: BaseException) -> list[str]:
    return [f"{field_name}: could not check {what} with the Compute Engine API: {describe(exc)}"]


def _elsewhere(compute: Compute, client: str, attribute: str, name: str) -> list[str]:
    """The zones of the project offering ``name`` (an aggregated list filtered by name)."""
    listing = compute.call(f"finding {name}", compute.client(client).aggregated_list,
                           request=getattr(compute_v1, f"AggregatedList{client[:-6]}Request")(
                               project=compute.project, filter=f'name = "{name}"'))
    zones = []
    for scope, scoped in listing:
        if any(item.name == name for item in getattr(scoped, attribute)):
            zones.append(scope.rsplit("/", 1)[-1])
    return sorted(zones)


def _offered(compute: Compute, client: str, attribute: str, name: str, zone_ok: bool) -> tuple[Any, list[str]]:
    """``(the zone's resource or None, zones offering it)``; the aggregated list is asked only when not in the zone."""
    if zone_ok:
        by_name: dict[str, Any] = {attribute[:-1]: name}
        try:
            item = compute.call(f"reading {name}", compute.client(client).get, project=compute.project,
                                zone=compute.zone, **by_name)
            return item, [compute.zone]
        except gexc.NotFound:
            pass
    return None, _elsewhere(compute, client, attribute, name)


def _machine_type(compute: Compute, options: GCPOptions, field_name: str, machine_type: str,
                  zone_ok: bool) -> list[str]:
    try:
        here, zones = _offered(compute, "MachineTypesClient", "machine_types", machine_type, zone_ok)
    except Exception as exc:  # noqa: BLE001
        return _lookup_failed(field_name, f"machine type {machine_type!r}", exc)
    if here is not None or (zones and not zone_ok):
        return []  # offered (a wrong zone is its own problem)
    if zones:
        return [f"{field_name}: machine type {machine_type!r} is not offered in zone {options.zone!r}; "
                f"zones offering it: {', '.join(zones[:8])}"]
    return [f"{field_name}: {machine_type!r} is not a machine type offered in any zone of project "
            f"{compute.project!r} (e.g. 'n2-standard-8', 'e2-standard-4')"]


def _accelerator(compute: Compute, options: GCPOptions, zone_ok: bool) -> list[str]:
    kind = options.factories_gpu_type
    assert kind is not None  # checked only when a GPU type is set
    try:
        accelerator, zones = _offered(compute, "AcceleratorTypesClient", "accelerator_types", kind, zone_ok)
    except Exception as exc:  # noqa: BLE001
        return _lookup_failed("factories_gpu_type", f"accelerator type {kind!r}", exc)
    if accelerator is not None:
        if options.gpu_count > accelerator.maximum_cards_per_instance:
            return [f"factories_gpu_count: at most {accelerator.maximum_cards_per_instance} {kind} per instance, "
                    f"got {options.gpu_count}"]
        return []
    if zones and not zone_ok:
        return []
    if zones:
        return [f"factories_gpu_type: {kind!r} is not offered in zone {options.zone!r}; zones offering it: "
                f"{', '.join(zones[:8])}"]
    return [f"factories_gpu_type: {kind!r} is not an accelerator type of any zone of project {compute.project!r} "
            "(e.g. 'nvidia-tesla-t4', 'nvidia-l4')"]


def _images(compute: Compute, options: GCPOptions) -> list[str]:
    """Each role's image (see :func:`.provision.image_spec`) resolves, is not obsolete, and fits the disk."""
    from .provision import image_spec, resolve_image

    problems = []
    seen: dict[str, list[str]] = {}
    for role, field_name in ((Role.ORCHESTRATOR, "orchestrator_image"), (Role.FACTORY, "factories_image")):
        try:
            seen.setdefault(image_spec(compute, options, role), []).append(field_name)
        except GCPError as exc:
            problems.append(f"{field_name}: {exc}")
    for spec, fields in seen.items():
        ref = parse_image(spec)
        where = " and ".join(fields)
        try:
            image = resolve_image(compute, spec)
        except gexc.NotFound:
            problems.append(f"{where}: {ref} does not exist (or has no image that is not deprecated); "
                            "e.g. 'ubuntu-os-cloud/ubuntu-2204-lts' or 'debian-cloud/debian-12'")
            continue
        except Exception as exc:  # noqa: BLE001
            problems.extend(_lookup_failed(where, str(ref), exc))
            continue
        state = image.deprecated.state if image.deprecated else ""
        if state in ("OBSOLETE", "DELETED"):
            problems.append(f"{where}: image {image.name!r} is {state}; use its family instead")
        if image.disk_size_gb and options.disk_size < image.disk_size_gb:
            problems.append(f"disk_size: image {image.name!r} needs a disk of at least {image.disk_size_gb} GB, "
                            f"got {options.disk_size}")
    return problems


def _disk_type(compute: Compute, options: GCPOptions) -> list[str]:
    try:
        compute.call(f"reading disk type {options.disk_type}", compute.client("DiskTypesClient").get,
                     project=compute.project, zone=compute.zone, disk_type=options.disk_type)
        return []
    except gexc.NotFound:
        return [f"disk_type: {options.disk_type!r} is not a disk type of zone {options.zone!r} "
                "(e.g. 'pd-balanced', 'pd-ssd', 'pd-standard')"]
    except Exception as exc:  # noqa: BLE001
        return _lookup_failed("disk_type", f"disk type {options.disk_type!r}", exc)


def _split(path: str, default_project: str, kind: str) -> tuple[str, str]:
    """``(project, name)`` of a network or subnetwork given by name or by ``projects/P/.../NAME`` path."""
    if "/" not in path:
        return default_project, path
    match = re.search(r"projects/([^/]+)/.*" + kind + r"/([^/]+)$", path)
    return (match.group(1), match.group(2)) if match else (default_project, path.rsplit("/", 1)[-1])


def _network(compute: Compute, options: GCPOptions) -> list[str]:
    project, name = _split(options.network, compute.project, "networks")
    try:
        network = compute.call(f"reading network {name}", compute.client("NetworksClient").get,
                               project=project, network=name)
    except gexc.NotFound:
        return [f"network: there is no network {name!r} in project {project!r}"]
    except Exception as exc:  # noqa: BLE001
        return _lookup_failed("network", f"network {name!r}", exc)
    if options.subnetwork is None:
        if not network.auto_create_subnetworks:
            return [f"subnetwork: network {name!r} has custom subnetworks; name the one of region "
                    f"{compute.region!r} to use (subnetwork: NAME)"]
        return []
    sub_project, sub_name = _split(options.subnetwork, project, "subnetworks")
    region = compute.region
    if "/regions/" in options.subnetwork:
        region = options.subnetwork.split("/regions/", 1)[1].split("/", 1)[0]
    try:
        subnet = compute.call(f"reading subnetwork {sub_name}", compute.client("SubnetworksClient").get,
                              project=sub_project, region=region, subnetwork=sub_name)
    except gexc.NotFound:
        return [f"subnetwork: there is no subnetwork {sub_name!r} in region {region!r} of project {sub_project!r}"]
    except Exception as exc:  # noqa: BLE001
        return _lookup_failed("subnetwork", f"subnetwork {sub_name!r}", exc)
    if subnet.network.rsplit("/", 1)[-1] != name:
        return [f"subnetwork: {sub_name!r} belongs to network {subnet.network.rsplit('/', 1)[-1]!r}, not {name!r}"]
    return []
