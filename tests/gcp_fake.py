"""A small local fake of the Compute Engine REST API (v1), for tests.

There is no Compute Engine emulator, so the GCP provider's tests point the
real ``google-cloud-compute`` client (REST transport) at this server through
its ``api_endpoint`` option.  It is a threaded ``http.server`` on a local
address (and, with :meth:`FakeComputeEngine.listen`, on more addresses, such
as a test network's bridge so that test hosts reach it too).

What it covers — exactly these calls, with the JSON shapes the client sends
and parses:

* ``zones.get``, ``zones.list``;
* ``machineTypes.get``, ``machineTypes.list``, ``machineTypes.aggregatedList``
  (``guestCpus``, ``memoryMb``, bundled ``accelerators`` of ``a2-*`` types);
* ``acceleratorTypes.get``, ``acceleratorTypes.aggregatedList``
  (``maximumCardsPerInstance``); ``diskTypes.get``;
* ``images.getFromFamily``, ``images.get``, ``images.list`` (one page;
  ``filter`` as for instances, on ``family``, ``name``, ``status``) for the
  public image projects ``ubuntu-os-cloud``, ``debian-cloud`` and
  ``deeplearning-platform-release`` (one current image per family; the
  Deep Learning VM family is one with the NVIDIA driver, named as the real
  ones are) plus images added with :meth:`add_image`;
* ``networks.get``, ``subnetworks.get`` (an auto-mode ``default`` network
  with one subnetwork per region; more with :meth:`add_network`);
* ``instances.insert`` (validates name, machine type, boot image, disk size,
  network, accelerators with ``onHostMaintenance: TERMINATE``, labels;
  honours ``requestId``: a repeated id returns the first operation and
  creates nothing; a name in use answers 409 ``alreadyExists``),
  ``instances.get``, ``instances.list`` (``filter`` terms ``FIELD = VALUE``,
  ``FIELD != VALUE``, ``FIELD eq REGEX``, ``FIELD ne REGEX`` on
  ``labels.KEY``, ``name`` and ``status``, AND-ed by ``AND`` or juxtaposition,
  optionally parenthesised — ``OR`` answers 400; ``maxResults`` and
  ``pageToken`` paginate), ``instances.aggregatedList`` (the same filter and
  paging over every zone; items keyed ``zones/ZONE``, a zone without a match
  carries the ``NO_RESULTS_ON_PAGE`` warning), ``instances.delete``
  (through an operation; 400 ``resourceNotReady`` while the instance's insert is still running, as the
  real API does), ``instances.start`` (a stopped, ``TERMINATED`` instance),
  ``instances.stop`` (``STOPPING``, then ``TERMINATED`` when its operation
  is ``DONE`` ``delete_seconds`` later),
  ``instances.getGuestAttributes`` for ``queryPath=hostkeys/`` (the SSH host
  keys a guest agent publishes, given with :meth:`publish_host_keys`; 404
  before the instance runs, without ``enable-guest-attributes: TRUE``
  metadata, or when none were given);
* ``zoneOperations.get`` and ``zoneOperations.wait`` (waits up to
  ``wait_seconds``, not the real two minutes);
* the part of the GCE metadata server a VM uses to delete itself
  (``/computeMetadata/v1/instance/name``, ``instance/zone``,
  ``project/project-id``, ``instance/service-accounts/default/token`` (404 for
  an instance created without a service account), with
  the ``Metadata-Flavor: Google`` header), answering for the instance whose
  address the request comes from.

Time runs for real but fast: an inserted instance is ``PROVISIONING``, then
``STAGING`` (its insert operation turns ``DONE``), then ``RUNNING`` after
``boot_seconds``; a deleted one is ``STOPPING`` until its operation is
``DONE`` ``delete_seconds`` later, then gone (404).  Each instance gets
``networkInterfaces[0].networkIP`` from the pool given to
:meth:`set_addresses` — the lowest address not held by a live instance, so a
test starts test hosts at exactly those addresses — and, when it asks for an
access config, a ``natIP`` equal to its ``networkIP`` (the test hosts answer
on one address).

Faults, injected per method name (``"instances.insert"``, ``"zones.get"``,
...): :meth:`fail_next` answers an HTTP error without doing anything,
:meth:`lose_next_response` does the work and then drops the connection
without an answer (the client sees a reset and retries),
:meth:`fail_operation` lets an insert's operation end ``DONE`` with an error
(and no instance), :meth:`stall` keeps matching instances from getting past a
status.  Every request is recorded in :attr:`calls`.

What it does not cover: authentication and authorisation (any token, or none,
is accepted), quotas, regional and global operations, any method not listed
above, other filter syntax (``OR``, comparisons other than equality, nested
fields other than labels), field masks, ``returnPartialSuccess``, ETags and
fingerprints (they are returned, never checked), project metadata, firewalls,
serial-port output, and any real networking (``natIP`` is ``networkIP``).
"""

from __future__ import annotations

import http.server
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

BASE = "https://www.googleapis.com/compute/v1/"
NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
LABEL_KEY_RE = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE_RE = re.compile(r"^[a-z0-9_-]{0,63}$")
PUBLIC_IMAGE_PROJECTS = {
    "ubuntu-os-cloud": {
        "ubuntu-2204-lts": "ubuntu-2204-jammy-v20240319",
        "ubuntu-2404-lts-amd64": "ubuntu-2404-noble-amd64-v20240423",
    },
    "debian-cloud": {"debian-12": "debian-12-bookworm-v20240312"},
    "deeplearning-platform-release": {
        "common-cu128-ubuntu-2204-nvidia-570": "common-cu128-ubuntu-2204-nvidia-570-v20250326",
    },
}
DEFAULT_ZONES = ("us-central1-a", "us-central1-b", "europe-west4-a")
MACHINE_TYPES = {
    "e2-small": (2, 2048),
    "e2-standard-2": (2, 8192),
    "e2-standard-4": (4, 16384),
    "n1-standard-4": (4, 15360),
    "n1-standard-8": (8, 30720),
    "n2-standard-2": (2, 8192),
    "n2-standard-4": (4, 16384),
    "n2-standard-8": (8, 32768),
    "a2-highgpu-1g": (12, 87040),
}
BUNDLED_ACCELERATORS = {"a2-highgpu-1g": ("nvidia-tesla-a100", 1)}
#: accelerator type -> (maximum cards per instance, zones offering it)
ACCELERATOR_TYPES = {
    "nvidia-tesla-t4": (4, ("us-central1-a", "europe-west4-a")),
    "nvidia-tesla-v100": (8, ("us-central1-a",)),
    "nvidia-tesla-a100": (16, ("us-central1-a", "us-central1-b")),
}
DISK_TYPES = ("pd-standard", "pd-balanced", "pd-ssd")
METHOD_NAMES = (
    "zones.get", "zones.list", "machineTypes.get", "machineTypes.list", "machineTypes.aggregatedList",
    "acceleratorTypes.get", "acceleratorTypes.aggregatedList", "diskTypes.get", "images.getFromFamily",
    "images.get", "networks.get", "subnetworks.get", "instances.insert", "instances.get", "instances.list",
    "instances.aggregatedList", "instances.delete", "instances.start", "instances.stop", "instances.getGuestAttributes",
    "zoneOperations.get", "zoneOperations.wait", "metadata",
)


class ApiError(Exception):
    """An HTTP error answer in the API's JSON error shape."""

    def __init__(self, code: int, message: str, reason: str = "invalid") -> None:
        super().__init__(message)
        self.code, self.message, self.reason = code, message, reason

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message,
                          "errors": [{"message": self.message, "domain": "global", "reason": self.reason}]}}


class _Lost(Exception):
    """Raised to drop the connection without an answer (the work is done)."""


def _not_found(what: str) -> ApiError:
    return ApiError(404, f"The resource '{what}' was not found", "notFound")


def _tail(url: str) -> str:
    """The last path element of a URL or partial resource path."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def _relative(url: str) -> str:
    """``projects/...`` from a full or partial resource URL."""
    index = url.find("projects/")
    return url[index:] if index >= 0 else url


class FakeComputeEngine:
    """An in-memory Compute Engine project served over HTTP (see the module docstring).

    Use as a context manager, or call :meth:`start` and :meth:`close`.
    ``url`` is the ``api_endpoint`` to give the client.
    """

    def __init__(self, project: str = "flambe-test", *, zones: Iterable[str] = DEFAULT_ZONES,
                 addresses: Iterable[str] = (), host: str = "127.0.0.1", boot_seconds: float = 0.4,
                 delete_seconds: float = 0.2, wait_seconds: float = 2.0) -> None:
        self.project = project
        self.zones = tuple(zones)
        self.host = host
        self.boot_seconds = boot_seconds
        self.delete_seconds = delete_seconds
        self.wait_seconds = wait_seconds
        self.lock = threading.RLock()
        self.calls: list[dict] = []
        self.instances: dict[tuple[str, str], dict] = {}  # (zone, name) -> instance state
        self.operations: dict[str, dict] = {}
        self.request_ids: dict[str, str] = {}
        self.images: dict[tuple[str, str], dict] = {}
        self.networks: dict[str, dict] = {}
        self._addresses: list[str] = list(addresses)
        self._auto_address = (f"10.128.0.{i}" for i in itertools.count(2))
        self._faults: list[dict] = []
        self._host_keys: dict[str, list[str]] = {}
        self._op_faults: list[dict] = []
        self._stalls: list[tuple[re.Pattern, str]] = []
        self._ids = itertools.count(1000000000000000000)
        self._servers: list[http.server.ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []
        for image_project, families in PUBLIC_IMAGE_PROJECTS.items():
            for family, name in families.items():
                self.add_image(image_project, name, family)
        regions = sorted({self.region_of(z) for z in self.zones})
        self.add_network("default", auto=True, subnetworks={r: ["default"] for r in regions})

    # --- lifecycle

    def start(self) -> FakeComputeEngine:
        """Listen on ``host`` (a free port); returns self."""
        self.listen(self.host)
        return self

    def listen(self, host: str, port: int | None = None) -> str:
        """Serve the same project on one more address; returns its URL (``http://host:port``)."""
        engine = self

        class Handler(_Handler):
            fake = engine

        if port is None:
            port = self._servers[0].server_port if self._servers else 0
        server = _Server((host, port), Handler)
        self._servers.append(server)
        thread = threading.Thread(target=server.serve_forever, name=f"gcp-fake-{host}", daemon=True)
        thread.start()
        self._threads.append(thread)
        return f"http://{host}:{server.server_port}"

    @property
    def url(self) -> str:
        """The first listener's URL: the client's ``api_endpoint``."""
        server = self._servers[0]
        return f"http://{server.server_address[0]}:{server.server_port}"

    def close(self) -> None:
        """Stop every listener (idempotent)."""
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        self._servers.clear()
        self._threads.clear()

    def __enter__(self) -> FakeComputeEngine:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- configuration

    def publish_host_keys(self, address: str, key_lines: Iterable[str]) -> None:
        """Host keys (``"ssh-ed25519 AAAA..."``) the guest agent of the instance at ``address`` publishes.

        They appear as guest attributes under ``hostkeys/`` once the instance
        runs, if it was created with ``enable-guest-attributes: TRUE``.
        """
        with self.lock:
            self._host_keys[address] = list(key_lines)

    def set_addresses(self, addresses: Iterable[str]) -> None:
        """The pool instances take their ``networkIP`` from (lowest free first)."""
        with self.lock:
            self._addresses = list(addresses)

    def add_image(self, project: str, name: str, family: str | None = None, disk_size_gb: int = 10,
                  deprecated: str | None = None) -> None:
        """An image (newest of its family when added last)."""
        with self.lock:
            self.images[(project, name)] = {
                "kind": "compute#image", "id": str(next(self._ids)), "name": name, "family": family,
                "status": "READY", "diskSizeGb": str(disk_size_gb), "architecture": "X86_64",
                "selfLink": f"{BASE}projects/{project}/global/images/{name}",
                "creationTimestamp": _timestamp(), "_order": len(self.images),
                **({"deprecated": {"state": deprecated}} if deprecated else {}),
            }

    def add_network(self, name: str, *, auto: bool = False, subnetworks: dict[str, list[str]] | None = None) -> None:
        """A VPC network; ``subnetworks`` maps a region to subnetwork names."""
        with self.lock:
            self.networks[name] = {"auto": auto, "subnetworks": {r: list(s) for r, s in (subnetworks or {}).items()}}

    # --- faults

    def fail_next(self, method: str, code: int = 503, message: str | None = None, *, reason: str | None = None,
                  after: int = 0, times: int = 1) -> None:
        """Answer the next ``times`` calls of ``method`` (after ``after`` more succeed) with HTTP ``code``."""
        self._add_fault(method, "fail", after, times, code=code, reason=reason,
                        message=message or f"injected failure of {method} (HTTP {code})")

    def lose_next_response(self, method: str, *, after: int = 0, times: int = 1) -> None:
        """Do the next ``times`` calls of ``method``, then drop the connection without answering."""
        self._add_fault(method, "lose", after, times)

    def fail_operation(self, code: str = "ZONE_RESOURCE_POOL_EXHAUSTED", message: str | None = None, *,
                       after: int = 0) -> None:
        """The next instance insert (after ``after`` more) is accepted, but its operation ends with an error."""
        with self.lock:
            self._op_faults.append({"after": after, "code": code, "message": message or (
                f"The zone does not have enough resources available to fulfill the request ({code}, injected)")})

    def stall(self, name_pattern: str, status: str = "STAGING") -> None:
        """Instances whose name matches the regex ``name_pattern`` never get past ``status``."""
        with self.lock:
            self._stalls.append((re.compile(name_pattern), status))

    def clear_faults(self) -> None:
        """Forget every fault not yet used (failures, lost answers, operation errors, stalls)."""
        with self.lock:
            self._faults.clear()
            self._op_faults.clear()
            self._stalls.clear()

    def _add_fault(self, method: str, kind: str, after: int, times: int, **details: Any) -> None:
        if method not in METHOD_NAMES:
            raise ValueError(f"unknown method {method!r}; known: {', '.join(METHOD_NAMES)}")
        with self.lock:
            self._faults.append({"method": method, "kind": kind, "after": after, "times": times, **details})

    def _take_fault(self, method: str) -> dict | None:
        with self.lock:
            for fault in self._faults:
                if fault["method"] != method:
                    continue
                if fault["after"] > 0:
                    fault["after"] -= 1
                    return None
                fault["times"] -= 1
                if fault["times"] <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    # --- inspection

    def count(self, method: str) -> int:
        """How many requests of ``method`` arrived (including failed and lost ones)."""
        with self.lock:
            return sum(1 for call in self.calls if call["method"] == method)

    def live_instances(self, zone: str | None = None) -> list[dict]:
        """The instances that exist now (any status), as the API shows them."""
        with self.lock:
            self._advance()
            return [self._public(i) for (z, _), i in sorted(self.instances.items()) if zone in (None, z)]

    def instance(self, name: str) -> dict | None:
        """One instance as the API shows it, or None."""
        return next((i for i in self.live_instances() if i["name"] == name), None)

    # --- the catalogue

    @staticmethod
    def region_of(zone: str) -> str:
        return zone.rsplit("-", 1)[0]

    def _zone(self, project: str, zone: str) -> None:
        self._project(project)
        if zone not in self.zones:
            raise _not_found(f"projects/{project}/zones/{zone}")

    def _project(self, project: str) -> None:
        if project != self.project:
            raise _not_found(f"projects/{project}")

    def _zone_json(self, zone: str) -> dict:
        return {"kind": "compute#zone", "id": str(abs(hash(zone)) % 10**6), "name": zone, "status": "UP",
                "region": f"{BASE}projects/{self.project}/regions/{self.region_of(zone)}",
                "selfLink": f"{BASE}projects/{self.project}/zones/{zone}"}

    def _machine_type_json(self, zone: str, name: str) -> dict:
        cpus, memory = MACHINE_TYPES[name]
        data = {"kind": "compute#machineType", "id": str(abs(hash(name)) % 10**6), "name": name, "guestCpus": cpus,
                "memoryMb": memory, "zone": zone,
                "selfLink": f"{BASE}projects/{self.project}/zones/{zone}/machineTypes/{name}"}
        if name in BUNDLED_ACCELERATORS:
            kind, count = BUNDLED_ACCELERATORS[name]
            data["accelerators"] = [{"guestAcceleratorType": kind, "guestAcceleratorCount": count}]
        return data

    def _accelerator_json(self, zone: str, name: str) -> dict:
        maximum, _ = ACCELERATOR_TYPES[name]
        return {"kind": "compute#acceleratorType", "name": name, "maximumCardsPerInstance": maximum,
                "zone": f"{BASE}projects/{self.project}/zones/{zone}",
                "selfLink": f"{BASE}projects/{self.project}/zones/{zone}/acceleratorTypes/{name}"}

    def _image(self, project: str, name: str | None = None, family: str | None = None) -> dict:
        if name is not None:
            image = self.images.get((project, name))
            if image is None:
                raise _not_found(f"projects/{project}/global/images/{name}")
            return image
        candidates = [i for (p, _), i in self.images.items() if p == project and i["family"] == family
                      and (i.get("deprecated") or {}).get("state") not in ("DEPRECATED", "OBSOLETE", "DELETED")]
        if not candidates:
            raise _not_found(f"projects/{project}/global/images/family/{family}")
        return max(candidates, key=lambda i: i["_order"])

    def _image_from_url(self, url: str) -> dict:
        match = re.match(r"^projects/([^/]+)/global/images/(family/)?([^/]+)$", _relative(url))
        if not match:
            raise ApiError(400, f"Invalid value for field 'resource.disks[0].initializeParams.sourceImage': '{url}'.")
        project, is_family, name = match.groups()
        return self._image(project, family=name) if is_family else self._image(project, name=name)

    # --- requests

    ROUTES: ClassVar[list[tuple[str, str, str]]] = [
        ("GET", r"^/compute/v1/projects/(?P<project>[^/]+)/zones$", "zones.list"),
        ("GET", r"^/compute/v1/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)$", "zones.get"),
        ("GET", r"^/compute/v1/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/machineTypes$", "machineTypes.list"),
        ("GET", r"^/compute/v1/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/machineTypes/(?P<name>[^/]+)$",
         "machineTypes.get"),
        ("GET", r"^/compute/v1/projects/(?P<project>[^/]+)/aggregated/machineTypes$", "machineTypes.aggregatedList"),
        ("GET", r"^/compute/v1/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/acceleratorTypes/(?P<name>[^/]+)$",
         "acceleratorTypes.get"),
        ("GET", r"^/compute/v1/projects/(?P<project>[^/]+)/aggregated/acceleratorTypes$",
         "acceleratorTypes.aggregatedList"),
        ("GET", r"^/compute/v1/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/diskTypes/(?P<name>[^/]+)$",
         "diskTypes.get"),
        ("GET", r"^/compute/v1/projects/(?P<project>[^/]+)/global/images/family/(?P<family>[^/]+)$",
         "images.getFromFamily"),
        ("GET", r"^/compute/v1/projects/(?P<project>[^/]+)/global/images/(?P<name>[^/]+)$", "images.get"),
        ("GET", r"^/compute/v1/projects/(?P<project>[^/]+)/global/images$", "images.list"),
        ("GET", r"^/compute/v1/projects/(?P<project>[^/]+)/global/networks/(?P<name>[^/]+)$", "networks.get"),
        ("GET", r"^/compute/v1/projects/(?P<project>[^/]+)/regions/(?P<region>[^/]+)/subnetworks/(?P<name>[^/]+)$",
         "subnetworks.get"),
        ("GET", r"^/compute/v1/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/instances$", "instances.list"),
        ("GET", r"^/compute/v1/projects/(?P<project>[^/]+)/aggregated/instances$", "instances.aggregatedList"),
        ("POST", r"^/compute/v1/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/instances$", "instances.insert"),
        ("GET", r"^/compute/v1/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/instances/(?P<name>[^/]+)$",
         "instances.get"),
        ("DELETE", r"^/compute/v1/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/instances/(?P<name>[^/]+)$",
         "instances.delete"),
        ("POST", r"^/compute/v1/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/instances/(?P<name>[^/]+)/start$",
         "instances.start"),
        ("POST", r"^/compute/v1/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/instances/(?P<name>[^/]+)/stop$",
         "instances.stop"),
        ("GET", r"^/compute/v1/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/instances/(?P<name>[^/]+)"
                r"/getGuestAttributes$",
         "instances.getGuestAttributes"),
        ("GET", r"^/compute/v1/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/operations/(?P<name>[^/]+)$",
         "zoneOperations.get"),
        ("POST", r"^/compute/v1/projects/(?P<project>[^/]+)/zones/(?P<zone>[^/]+)/operations/(?P<name>[^/]+)/wait$",
         "zoneOperations.wait"),
        ("GET", r"^/computeMetadata/v1/(?P<path>.+)$", "metadata"),
    ]

    def handle(self, verb: str, target: str, body: dict | None, client: str, headers: dict) -> tuple[int, Any]:
        """Answer one request: ``(status, JSON or text)``; raises :class:`_Lost` to drop the connection."""
        parts = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        for route_verb, pattern, method in self.ROUTES:  # noqa: B007 - method is the route matched, used after the loop
            match = re.match(pattern, parts.path)
            if route_verb == verb and match:
                break
        else:
            return 404, ApiError(404, f"fake Compute Engine: no route for {verb} {parts.path}", "notFound").body()
        with self.lock:
            self.calls.append({"method": method, "verb": verb, "path": parts.path, "query": query, "body": body,
                               "client": client, "headers": headers, "time": time.time()})
        fault = self._take_fault(method)
        if fault is not None and fault["kind"] == "fail":
            return fault["code"], ApiError(fault["code"], fault["message"], fault["reason"] or {
                503: "backendError", 429: "rateLimitExceeded", 500: "backendError"}.get(fault["code"], "invalid")
            ).body()
        try:
            if method == "zoneOperations.wait":
                result = self._wait_operation(**match.groupdict())
            else:
                with self.lock:
                    self._advance()
                    result = getattr(self, "_" + method.replace(".", "_"))(query=query, body=body, client=client,
                                                                           headers=headers, **match.groupdict())
        except ApiError as error:
            result = (error.code, error.body())
        if fault is not None and fault["kind"] == "lose":
            raise _Lost()
        return result if isinstance(result, tuple) else (200, result)

    # zones, types, images, networks

    def _zones_list(self, project, **_):
        self._project(project)
        return {"kind": "compute#zoneList", "items": [self._zone_json(z) for z in self.zones]}

    def _zones_get(self, project, zone, **_):
        self._zone(project, zone)
        return self._zone_json(zone)

    def _machineTypes_get(self, project, zone, name, **_):  # noqa: N802 - the API method name, looked up by route
        self._zone(project, zone)
        if name not in MACHINE_TYPES:
            raise _not_found(f"projects/{project}/zones/{zone}/machineTypes/{name}")
        return self._machine_type_json(zone, name)

    def _machineTypes_list(self, project, zone, query, **_):  # noqa: N802 - the API method name, looked up by route
        self._zone(project, zone)
        items = [self._machine_type_json(zone, n) for n in MACHINE_TYPES]
        return {"kind": "compute#machineTypeList", "items": _filtered(items, query.get("filter"))}

    def _machineTypes_aggregatedList(self, project, query, **_):  # noqa: N802 - the API method name, looked up by route
        self._project(project)
        items = {}
        for zone in self.zones:
            found = _filtered([self._machine_type_json(zone, n) for n in MACHINE_TYPES], query.get("filter"))
            items[f"zones/{zone}"] = {"machineTypes": found} if found else {"warning": {"code": "NO_RESULTS_ON_PAGE"}}
        return {"kind": "compute#machineTypeAggregatedList", "items": items}

    def _acceleratorTypes_get(self, project, zone, name, **_):  # noqa: N802 - the API method name, looked up by route
        self._zone(project, zone)
        if name not in ACCELERATOR_TYPES or zone not in ACCELERATOR_TYPES[name][1]:
            raise _not_found(f"projects/{project}/zones/{zone}/acceleratorTypes/{name}")
        return self._accelerator_json(zone, name)

    def _acceleratorTypes_aggregatedList(self, project, query, **_):  # noqa: N802 - the API method name, looked up by route
        self._project(project)
        items = {}
        for zone in self.zones:
            found = _filtered([self._accelerator_json(zone, n) for n, (_, zones) in ACCELERATOR_TYPES.items()
                               if zone in zones], query.get("filter"))
            items[f"zones/{zone}"] = ({"acceleratorTypes": found} if found
                                      else {"warning": {"code": "NO_RESULTS_ON_PAGE"}})
        return {"kind": "compute#acceleratorTypeAggregatedList", "items": items}

    def _diskTypes_get(self, project, zone, name, **_):  # noqa: N802 - the API method name, looked up by route
        self._zone(project, zone)
        if name not in DISK_TYPES:
            raise _not_found(f"projects/{project}/zones/{zone}/diskTypes/{name}")
        return {"kind": "compute#diskType", "name": name, "zone": zone,
                "selfLink": f"{BASE}projects/{project}/zones/{zone}/diskTypes/{name}"}

    def _images_getFromFamily(self, project, family, **_):  # noqa: N802 - the API method name, looked up by route
        return _public_image(self._image(project, family=family))

    def _images_get(self, project, name, **_):
        return _public_image(self._image(project, name=name))

    def _images_list(self, project, query, **_):
        items = [_public_image(i) for (p, _), i in sorted(self.images.items(), key=lambda kv: kv[1]["_order"])
                 if p == project]
        return {"kind": "compute#imageList", "id": f"projects/{project}/global/images",
                "items": _filtered(items, query.get("filter"))}

    def _networks_get(self, project, name, **_):
        self._project(project)
        network = self.networks.get(name)
        if network is None:
            raise _not_found(f"projects/{project}/global/networks/{name}")
        return {"kind": "compute#network", "name": name, "autoCreateSubnetworks": network["auto"],
                "selfLink": f"{BASE}projects/{project}/global/networks/{name}",
                "subnetworks": [f"{BASE}projects/{project}/regions/{r}/subnetworks/{s}"
                                for r, names in network["subnetworks"].items() for s in names]}

    def _subnetworks_get(self, project, region, name, **_):
        self._project(project)
        for network_name, network in self.networks.items():
            if name in network["subnetworks"].get(region, ()):
                return {"kind": "compute#subnetwork", "name": name,
                        "region": f"{BASE}projects/{project}/regions/{region}",
                        "network": f"{BASE}projects/{project}/global/networks/{network_name}",
                        "selfLink": f"{BASE}projects/{project}/regions/{region}/subnetworks/{name}"}
        raise _not_found(f"projects/{project}/regions/{region}/subnetworks/{name}")

    # instances

    def _instances_list(self, project, zone, query, **_):
        self._zone(project, zone)
        items = [self._public(i) for (z, _), i in sorted(self.instances.items()) if z == zone]
        items = _filtered(items, query.get("filter"))
        start = int(query.get("pageToken") or 0)
        size = int(query.get("maxResults") or 500)
        page = {"kind": "compute#instanceList", "id": f"projects/{project}/zones/{zone}/instances",
                "items": items[start:start + size]}
        if start + size < len(items):
            page["nextPageToken"] = str(start + size)
        return page

    def _instances_aggregatedList(self, project, query, **_):  # noqa: N802 - the API method name, looked up by route
        self._project(project)
        found = [(z, item) for z in self.zones for item in _filtered(
            [self._public(i) for (iz, _), i in sorted(self.instances.items()) if iz == z], query.get("filter"))]
        start = int(query.get("pageToken") or 0)
        size = int(query.get("maxResults") or 500)
        page = found[start:start + size]
        items = {}
        for zone in self.zones:
            here = [item for z, item in page if z == zone]
            items[f"zones/{zone}"] = {"instances": here} if here else {"warning": {
                "code": "NO_RESULTS_ON_PAGE", "message": f"There are no results for scope 'zones/{zone}' on this page.",
                "data": [{"key": "scope", "value": f"zones/{zone}"}]}}
        answer = {"kind": "compute#instanceAggregatedList", "id": f"projects/{project}/aggregated/instances",
                  "items": items, "selfLink": f"{BASE}projects/{project}/aggregated/instances"}
        if start + size < len(found):
            answer["nextPageToken"] = str(start + size)
        return answer

    def _instances_get(self, project, zone, name, **_):
        self._zone(project, zone)
        instance = self.instances.get((zone, name))
        if instance is None:
            raise _not_found(f"projects/{project}/zones/{zone}/instances/{name}")
        return self._public(instance)

    def _instances_insert(self, project, zone, query, body, **_):
        self._zone(project, zone)
        request_id = query.get("requestId")
        if request_id is not None:
            try:
                uuid.UUID(request_id)
            except ValueError:
                raise ApiError(400, f"Invalid value for field 'requestId': '{request_id}'. "
                                    "The request ID must be a valid UUID.") from None
            if request_id in self.request_ids:
                return self._public_operation(self.operations[self.request_ids[request_id]])
        body = body or {}
        name = body.get("name", "")
        if not NAME_RE.match(name):
            raise ApiError(400, f"Invalid value for field 'resource.name': '{name}'. Must be a match of regex "
                                "'(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)'")
        if (zone, name) in self.instances:
            raise ApiError(409, f"The resource 'projects/{project}/zones/{zone}/instances/{name}' already exists",
                           "alreadyExists")
        machine_type = _tail(body.get("machineType", ""))
        if machine_type not in MACHINE_TYPES:
            raise ApiError(400, f"Invalid value for field 'resource.machineType': '{body.get('machineType')}'. "
                                f"Machine type with name '{machine_type}' does not exist in zone '{zone}'.")
        disks = body.get("disks") or []
        boot = [d for d in disks if d.get("boot")]
        if len(boot) != 1 or not (boot[0].get("initializeParams") or {}).get("sourceImage"):
            raise ApiError(400, "Invalid value for field 'resource.disks': "
                                "exactly one boot disk with a source image is needed.")
        params = boot[0]["initializeParams"]
        image = self._image_from_url(params["sourceImage"])
        size = int(params.get("diskSizeGb") or image["diskSizeGb"])
        if size < int(image["diskSizeGb"]):
            raise ApiError(400, f"Invalid value for field 'resource.disks[0].initializeParams.diskSizeGb': '{size}'. "
                                f"Requested disk size cannot be smaller than the image size ({image['diskSizeGb']} GB)")
        if params.get("diskType") and _tail(params["diskType"]) not in DISK_TYPES:
            raise ApiError(400, "Invalid value for field 'resource.disks[0].initializeParams.diskType': "
                                f"'{params['diskType']}'.")
        interfaces = body.get("networkInterfaces") or [{}]
        network = _tail(interfaces[0].get("network") or "default")
        if network not in self.networks:
            raise ApiError(400, f"Invalid value for field 'resource.networkInterfaces[0].network': '{network}'. "
                                "The referenced network resource cannot be found.")
        for accelerator in body.get("guestAccelerators") or []:
            kind = _tail(accelerator.get("acceleratorType", ""))
            if kind not in ACCELERATOR_TYPES or zone not in ACCELERATOR_TYPES[kind][1]:
                raise ApiError(400, "Invalid value for field 'resource.guestAccelerators[0].acceleratorType': "
                                    f"'{kind}'.")
            if int(accelerator.get("acceleratorCount", 0)) > ACCELERATOR_TYPES[kind][0]:
                raise ApiError(400, "Invalid value for field 'resource.guestAccelerators[0].acceleratorCount'.")
            if (body.get("scheduling") or {}).get("onHostMaintenance") != "TERMINATE":
                raise ApiError(400, "Instances with guest accelerators do not support live migration.")
        for key, value in (body.get("labels") or {}).items():
            if not LABEL_KEY_RE.match(key) or not LABEL_VALUE_RE.match(str(value)):
                raise ApiError(400, f"Invalid value for field 'resource.labels': '{key}: {value}'.")
        now = time.monotonic()
        address = self._take_address()
        accelerators = list(body.get("guestAccelerators") or [])
        if machine_type in BUNDLED_ACCELERATORS and not accelerators:
            kind, count = BUNDLED_ACCELERATORS[machine_type]
            accelerators = [{"acceleratorType": f"{BASE}projects/{project}/zones/{zone}/acceleratorTypes/{kind}",
                             "acceleratorCount": count}]
        nic = {"name": "nic0", "network": f"{BASE}projects/{project}/global/networks/{network}",
               "networkIP": address}
        if interfaces[0].get("subnetwork"):
            nic["subnetwork"] = interfaces[0]["subnetwork"]
        if interfaces[0].get("accessConfigs"):
            nic["accessConfigs"] = [{"type": "ONE_TO_ONE_NAT", "name": "External NAT", "natIP": address,
                                     "kind": "compute#accessConfig"}]
        instance = {
            **{k: v for k, v in body.items() if k not in ("networkInterfaces", "guestAccelerators")},
            "kind": "compute#instance", "id": str(next(self._ids)), "name": name,
            "zone": f"{BASE}projects/{project}/zones/{zone}",
            "machineType": f"{BASE}projects/{project}/zones/{zone}/machineTypes/{machine_type}",
            "networkInterfaces": [nic], "guestAccelerators": accelerators,
            "selfLink": f"{BASE}projects/{project}/zones/{zone}/instances/{name}",
            "creationTimestamp": _timestamp(), "status": "PROVISIONING", "labelFingerprint": "42WmSpB8rSM=",
            "_zone": zone, "_created": now, "_stage": "booting",
        }
        if not accelerators:
            instance.pop("guestAccelerators")
        operation = self._new_operation(project, zone, "insert", instance, done_at=now + self.boot_seconds / 2)
        op_fault = self._take_op_fault()
        if op_fault is not None:
            operation["_error"] = op_fault
        instance["_insert_op"] = operation["name"]
        self.instances[(zone, name)] = instance
        if request_id is not None:
            self.request_ids[request_id] = operation["name"]
        return self._public_operation(operation)

    def _instances_delete(self, project, zone, name, query, **_):
        self._zone(project, zone)
        request_id = query.get("requestId")
        if request_id in self.request_ids:
            return self._public_operation(self.operations[self.request_ids[request_id]])
        instance = self.instances.get((zone, name))
        if instance is None:
            raise _not_found(f"projects/{project}/zones/{zone}/instances/{name}")
        if self.operations[instance["_insert_op"]]["status"] != "DONE":
            raise ApiError(400, f"The resource 'projects/{project}/zones/{zone}/instances/{name}' is not ready",
                           "resourceNotReady")
        if instance["_stage"] == "deleting":
            operation = self.operations[instance["_delete_op"]]
        else:
            operation = self._new_operation(project, zone, "delete", instance,
                                            done_at=time.monotonic() + self.delete_seconds)
            instance["_stage"] = "deleting"
            instance["_delete_op"] = operation["name"]
            instance["status"] = "STOPPING"
        if request_id is not None:
            self.request_ids[request_id] = operation["name"]
        return self._public_operation(operation)

    def _instances_start(self, project, zone, name, query, **_):
        self._zone(project, zone)
        instance = self.instances.get((zone, name))
        if instance is None:
            raise _not_found(f"projects/{project}/zones/{zone}/instances/{name}")
        now = time.monotonic()
        if instance["status"] == "TERMINATED":
            instance.update(status="STAGING", _stage="booting", _created=now - self.boot_seconds / 2)
        return self._public_operation(self._new_operation(project, zone, "start", instance, done_at=now))

    def _instances_stop(self, project, zone, name, query, **_):
        self._zone(project, zone)
        instance = self.instances.get((zone, name))
        if instance is None:
            raise _not_found(f"projects/{project}/zones/{zone}/instances/{name}")
        now = time.monotonic()
        operation = self._new_operation(project, zone, "stop", instance, done_at=now + self.delete_seconds)
        if instance["_stage"] == "booting":
            instance.update(status="STOPPING", _stage="stopping", _stop_op=operation["name"])
        return self._public_operation(operation)

    def _instances_getGuestAttributes(self, project, zone, name, query, **_):  # noqa: N802 - the API method name, looked up by route
        self._zone(project, zone)
        instance = self.instances.get((zone, name))
        if instance is None:
            raise _not_found(f"projects/{project}/zones/{zone}/instances/{name}")
        path = query.get("queryPath", "")
        keys = self._host_keys.get(instance["networkInterfaces"][0]["networkIP"])
        enabled = any(i.get("key") == "enable-guest-attributes" and str(i.get("value")).upper() == "TRUE"
                      for i in (instance.get("metadata") or {}).get("items", []))
        if path != "hostkeys/" or not keys or not enabled or instance["status"] != "RUNNING":
            raise _not_found(f"projects/{project}/zones/{zone}/instances/{name}/guestAttributes/{path}")
        items = [{"namespace": "hostkeys", "key": line.split()[0], "value": line.split()[1]} for line in keys]
        return {"kind": "compute#guestAttributes", "queryPath": path, "queryValue": {"items": items},
                "selfLink": instance["selfLink"] + "/guestAttributes/" + path}

    def stop_instance(self, name: str) -> None:
        """Turn a live instance ``TERMINATED`` (stopped), as a guest ``shutdown`` would."""
        with self.lock:
            self._advance()
            instance = next(i for (_, n), i in self.instances.items() if n == name)
            instance.update(status="TERMINATED", _stage="stopped")

    # operations

    def _new_operation(self, project: str, zone: str, kind: str, instance: dict, done_at: float) -> dict:
        name = f"operation-{int(time.time() * 1000)}-{uuid.uuid4().hex[:12]}"
        operation = {
            "kind": "compute#operation", "id": str(next(self._ids)), "name": name, "operationType": kind,
            "zone": f"{BASE}projects/{project}/zones/{zone}", "targetLink": instance["selfLink"],
            "targetId": instance["id"], "status": "RUNNING", "progress": 0, "insertTime": _timestamp(),
            "selfLink": f"{BASE}projects/{project}/zones/{zone}/operations/{name}", "user": "tests@example.com",
            "_done_at": done_at, "_zone": zone,
        }
        self.operations[name] = operation
        return operation

    def _take_op_fault(self) -> dict | None:
        for fault in self._op_faults:
            if fault["after"] > 0:
                fault["after"] -= 1
                return None
            self._op_faults.remove(fault)
            return fault
        return None

    def _zoneOperations_get(self, project, zone, name, **_):  # noqa: N802 - the API method name, looked up by route
        self._zone(project, zone)
        operation = self.operations.get(name)
        if operation is None or operation["_zone"] != zone:
            raise _not_found(f"projects/{project}/zones/{zone}/operations/{name}")
        return self._public_operation(operation)

    def _wait_operation(self, project, zone, name):
        deadline = time.monotonic() + self.wait_seconds
        while True:
            with self.lock:
                self._advance()
                operation = self._zoneOperations_get(project=project, zone=zone, name=name)
            if operation["status"] == "DONE" or time.monotonic() >= deadline:
                return operation
            time.sleep(0.02)

    def _public_operation(self, operation: dict) -> dict:
        return {k: v for k, v in operation.items() if not k.startswith("_")}

    # metadata server

    def _metadata(self, path, client, headers, **_):
        if headers.get("metadata-flavor") != "Google":
            return 403, "Missing Metadata-Flavor:Google header."
        instance = next((i for i in self.instances.values() if i["networkInterfaces"][0]["networkIP"] == client
                         and i["_stage"] != "deleting"), None)
        if instance is None:
            return 404, f"no instance at {client}"
        answers = {
            "instance/name": instance["name"],
            "instance/zone": f"projects/{abs(hash(self.project)) % 10**12}/zones/{instance['_zone']}",
            "project/project-id": self.project,
            "instance/service-accounts/default/token": {"access_token": "fake-token-" + instance["name"],
                                                        "expires_in": 3599, "token_type": "Bearer"},
        }
        if path not in answers:
            return 404, f"fake metadata server: {path} is not covered"
        if path.startswith("instance/service-accounts/") and not instance.get("serviceAccounts"):
            return 404, "the instance has no service account"  # as the real metadata server answers
        return 200, answers[path]

    # time

    def _advance(self) -> None:
        """Move operations and instances along their timelines (called under the lock)."""
        now = time.monotonic()
        for operation in self.operations.values():
            if operation["status"] != "DONE" and now >= operation["_done_at"]:
                operation.update(status="DONE", progress=100, endTime=_timestamp())
                if operation.get("_error"):
                    error = operation["_error"]
                    operation["error"] = {"errors": [{"code": error["code"], "message": error["message"]}]}
                    operation["httpErrorStatusCode"] = 503
                    operation["httpErrorMessage"] = "SERVICE UNAVAILABLE"
        for key, instance in list(self.instances.items()):
            stage = instance["_stage"]
            if stage == "booting":
                insert = self.operations[instance["_insert_op"]]
                if insert["status"] == "DONE" and insert.get("error"):
                    del self.instances[key]
                    continue
                elapsed = now - instance["_created"]
                status = "PROVISIONING" if elapsed < self.boot_seconds / 2 else (
                    "STAGING" if elapsed < self.boot_seconds else "RUNNING")
                for pattern, stalled in self._stalls:
                    if pattern.search(instance["name"]) and _STATUS_ORDER.index(status) > _STATUS_ORDER.index(stalled):
                        status = stalled
                instance["status"] = status
            elif stage == "deleting" and self.operations[instance["_delete_op"]]["status"] == "DONE":
                del self.instances[key]
            elif stage == "stopping" and self.operations[instance["_stop_op"]]["status"] == "DONE":
                instance.update(status="TERMINATED", _stage="stopped")

    def _take_address(self) -> str:
        used = {i["networkInterfaces"][0]["networkIP"] for i in self.instances.values()}
        for address in self._addresses:
            if address not in used:
                return address
        if self._addresses:
            raise ApiError(503, "IP_SPACE_EXHAUSTED: the fake's address pool is used up", "backendError")
        return next(self._auto_address)

    def _public(self, instance: dict) -> dict:
        return json.loads(json.dumps({k: v for k, v in instance.items() if not k.startswith("_")}))


_STATUS_ORDER = ["PROVISIONING", "STAGING", "RUNNING"]


def _timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000-00:00", time.gmtime())


def _public_image(image: dict) -> dict:
    return {k: v for k, v in image.items() if not k.startswith("_") and v is not None}


_TERM = re.compile(r'\s*(\()?\s*([A-Za-z][\w.-]*)\s*(=|!=|\beq\b|\bne\b)\s*("(?:[^"\\]|\\.)*"|[^\s()]+)\s*(\))?\s*')


def parse_filter(text: str) -> list[tuple[str, str, str]]:
    """``[(field, op, value)]`` of an AND-ed list filter; raises ApiError(400) on what the fake does not cover."""
    terms, position = [], 0
    text = text.strip()
    while position < len(text):
        match = _TERM.match(text, position)
        if not match:
            raise ApiError(400, f"Invalid list filter expression: {text!r} (the fake covers AND-ed equality terms)")
        _, field, op, value, _ = match.groups()
        if value.startswith('"'):
            value = json.loads(value)
        terms.append((field, op, value))
        position = match.end()
        rest = text[position:]
        if rest.startswith("AND "):
            position += 4
        elif rest.startswith("OR "):
            raise ApiError(400, "OR in list filters is not covered by the fake")
    return terms


def _field(item: dict, field: str) -> str | None:
    if field.startswith("labels."):
        return (item.get("labels") or {}).get(field[len("labels."):])
    value = item.get(field)
    return None if value is None else str(value)


def _matches(item: dict, terms: list[tuple[str, str, str]]) -> bool:
    for field, op, value in terms:
        actual = _field(item, field)
        if op == "=" and actual != value:
            return False
        if op == "!=" and actual == value:
            return False
        if op == "eq" and (actual is None or not re.fullmatch(value, actual)):
            return False
        if op == "ne" and actual is not None and re.fullmatch(value, actual):
            return False
    return True


def _filtered(items: list[dict], text: str | None) -> list[dict]:
    if not text:
        return items
    terms = parse_filter(text)
    return [item for item in items if _matches(item, terms)]


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeComputeEngine

    def log_message(self, *args: object) -> None:  # quiet
        pass

    def _serve(self, verb: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            self._answer(400, ApiError(400, "Invalid JSON payload received.").body())
            return
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            status, payload = self.fake.handle(verb, self.path, body, self.client_address[0], headers)
        except _Lost:
            self.close_connection = True
            return
        self._answer(status, payload)

    def _answer(self, status: int, payload: Any) -> None:
        if isinstance(payload, str):
            data, kind = payload.encode(), "text/plain"
        else:
            data, kind = json.dumps(payload).encode(), "application/json; charset=UTF-8"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        if kind == "text/plain":
            self.send_header("Metadata-Flavor", "Google")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")


def on_test_hosts(network) -> FakeComputeEngine:
    """A started fake that hands out ``network``'s hosts, each one's host key published as its guest agent would."""
    fake = FakeComputeEngine(host=network.gateway, addresses=[h.address for h in network.hosts]).start()
    for host in network.hosts:  # checked on first contact
        fake.publish_host_keys(host.address, [host.host_key_line()])
    return fake


def write_cluster_file(path, fake: FakeComputeEngine, name: str, username: str, key, more: str = ""):
    """A ``!GCPCluster`` file of 1 + 2 factories on ``fake`` (private addresses), with ``more`` YAML lines."""
    path.write_text(
        "!GCPCluster\n"
        f"name: {name}\n"
        f"username: {username}\n"
        f"key: {key}\n"
        "factories_num: 2\n"
        f"project: {fake.project}\n"
        "zone: us-central1-a\n"
        "orchestrator_type: e2-standard-2\n"
        "factories_type: n1-standard-4\n"
        "use_public: false\n"
        f"api_endpoint: {fake.url}\n" + more)
    return path
