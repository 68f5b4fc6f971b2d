"""Test support for the AWS provider: moto in server mode, the faults moto does not make, hosts that follow instances.

:class:`FaultyMotoServer` is moto's ``ThreadedMotoServer`` with a thin WSGI
layer in front, so everything still travels over HTTP as between a user's
boto3 and EC2.  The layer

- records every call (service, action, parameters, whether it came from the
  provider — its User-Agent carries ``flambe-cluster-aws``);
- answers chosen calls with an AWS error instead of moto (:class:`Fault`:
  capacity, throttling, ...), optionally *after* moto acted (a response
  lost on the way back, which boto3 retries);
- keeps EC2's ClientToken promise, which moto does not: a RunInstances call
  whose token was seen gets the first call's answer again (EC2 documents
  this; without it a retried call would launch twice here and nowhere else);
- tells observers about successful calls;
- answers GetConsoleOutput for chosen instances with a console text the
  test gives (:attr:`FaultyMotoServer.consoles`: moto's console never
  carries the host keys cloud-init prints).

:class:`MotoCloud` uses that to make EC2 instances real: each instance moto
launches in the test subnet gets a real OpenSSH test host at the private
address moto gave it (moto hands out 10.x.y.4, .5, ... in order and never
reuses one by itself), stopped or terminated instances stop their host,
started ones start it again.  An instance launched at the address of a
terminated one (``PrivateIpAddress``) is a replacement: the same host comes
back with a new host key.  An instance marked "unanswering" gets a host cut off the
network: it never answers SSH.  New factory hosts get a stand-in
``nvidia-smi`` listing ``factory_gpus`` GPUs when that is set.  moto's image
catalogue holds no Deep Learning Base AMI with the NVIDIA driver, so one is
registered (:data:`DLAMI_NAME`, owner ``amazon``).
"""

from __future__ import annotations

import contextlib
import io
import ipaddress
import logging
import os
import re
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml
from attrs import define
from helpers import install_nvidia_smi, run_cli
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from moto.server import ThreadedMotoServer
from werkzeug.serving import make_server

REGION = "us-east-1"
ZONE = "us-east-1a"
KEY_NAME = "flambe-test"
PROVIDER_AGENT = "flambe-cluster-aws"
TAG_ROLE = "flambe-cluster:role"
#: An AWS Deep Learning Base AMI with the OSS NVIDIA driver, named as EC2 names them (moto's catalogue has none).
DLAMI_NAME = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) 20250101"
#: /24s tried for the test subnet (outside the test hosts' automatic pool, 10.213.100-199).
SUBNET_THIRD_OCTETS = range(40, 100)
#: Environment variables that would point boto3 elsewhere; removed for the tests.
FOREIGN_ENV = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_ENDPOINT_URL_EC2", "AWS_ENDPOINT_URL_CLOUDWATCH",
               "AWS_ENDPOINT_URL_SSM", "AWS_ENDPOINT_URL_STS", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")

logging.getLogger("werkzeug").setLevel(logging.ERROR)


@define
class Call:
    """One request that reached the server."""

    service: str
    action: str
    params: dict[str, list[str]]
    user_agent: str

    def param(self, name: str) -> str | None:
        values = self.params.get(name)
        return values[0] if values else None

    @property
    def from_provider(self) -> bool:
        return PROVIDER_AGENT in self.user_agent

    @property
    def tags(self) -> dict[str, str]:
        """Instance tags of a RunInstances call (TagSpecification.N.Tag.M.Key/Value)."""
        tags = {}
        for key, values in self.params.items():
            match = re.fullmatch(r"TagSpecification\.(\d+)\.Tag\.(\d+)\.Key", key)
            if match:
                spec, index = match.groups()
                if self.param(f"TagSpecification.{spec}.ResourceType") in (None, "instance"):
                    tags[values[0]] = self.param(f"TagSpecification.{spec}.Tag.{index}.Value")
        return tags

    @property
    def role(self) -> str | None:
        return self.tags.get(TAG_ROLE)

    def instance_ids(self) -> list[str]:
        return [v[0] for k, v in sorted(self.params.items()) if re.fullmatch(r"InstanceId\.\d+", k)]


@define
class Fault:
    """Answer matching calls with an AWS error instead of moto's answer.

    ``when`` narrows the match; ``times`` is how many calls it hits (None:
    all); ``lost_response`` lets moto act first, then answers with the
    error, like a response lost on the way back.  ``status`` 500 and 503
    are retried by boto3 (as EC2's own 5xx answers are).
    """

    action: str
    code: str
    status: int = 400
    message: str = "injected by the test"
    when: Callable[[Call], bool] = lambda call: True
    times: int | None = None
    lost_response: bool = False
    hits: int = 0

    def matches(self, call: Call) -> bool:
        return call.action == self.action and (self.times is None or self.hits < self.times) and self.when(call)


class FaultyMotoServer(ThreadedMotoServer):
    """moto's threaded server with the fault and observation layer described in the module docstring."""

    def __init__(self) -> None:
        super().__init__(ip_address="127.0.0.1", port=0, verbose=False)
        self.faults: list[Fault] = []
        self.calls: list[Call] = []
        self.observers: list[Callable[[Call, bytes], None]] = []
        self.holds: list[tuple[Callable[[Call], bool], threading.Barrier]] = []
        #: Console text (as the instance printed it) GetConsoleOutput returns for an instance id, instead of moto's.
        self.consoles: dict[str, str] = {}
        self._tokens: dict[str, tuple[str, list, bytes]] = {}
        self._lock = threading.RLock()  # a fault's `when` may count calls

    def _server_entry(self) -> None:
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(self._ip_address, self._port, self._layer(app), threaded=True)
        self._server_ready_event.set()
        self._server.serve_forever()

    @property
    def endpoint(self) -> str:
        host, port = self.get_host_and_port()
        return f"http://{host}:{port}"

    def reset(self) -> None:
        """Forget everything moto and this layer know (moto's state is per process, shared by all servers)."""
        request = urllib.request.Request(f"{self.endpoint}/moto-api/reset", method="POST")
        urllib.request.urlopen(request, timeout=30).read()
        with self._lock:
            self.faults.clear()
            self.calls.clear()
            self.holds.clear()
            self._tokens.clear()

    def count(self, action: str, provider_only: bool = True, when: Callable[[Call], bool] = lambda c: True) -> int:
        with self._lock:
            return sum(1 for c in self.calls
                       if c.action == action and (c.from_provider or not provider_only) and when(c))

    def calls_of(self, action: str) -> list[Call]:
        with self._lock:
            return [c for c in self.calls if c.action == action]

    # --- the WSGI layer

    @staticmethod
    def _parse(environ: dict, body: bytes) -> Call:
        auth = environ.get("HTTP_AUTHORIZATION", "")
        match = re.search(r"Credential=[^/]+/[^/]+/[^/]+/([^/]+)/", auth)
        service = match.group(1) if match else "?"
        params: dict[str, list[str]] = {}
        if "x-www-form-urlencoded" in environ.get("CONTENT_TYPE", ""):
            params = urllib.parse.parse_qs(body.decode(), keep_blank_values=True)
        action = (params.get("Action") or [""])[0]
        if not action:
            target = environ.get("HTTP_X_AMZ_TARGET", "")
            path = environ.get("PATH_INFO", "")
            action = target.rpartition(".")[2] or path.rpartition("/operation/")[2]
        return Call(service, action, params, environ.get("HTTP_USER_AGENT", ""))

    @staticmethod
    def _error(start_response, fault: Fault) -> list[bytes]:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
            f"<Code>{fault.code}</Code><Message>{fault.message}</Message>"
            "</Error></Errors><RequestID>injected-fault</RequestID></Response>"
        ).encode()
        reason = {400: "Bad Request", 500: "Internal Server Error",
                  503: "Service Unavailable"}.get(fault.status, "Error")
        start_response(f"{fault.status} {reason}", [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))])
        return [body]

    @staticmethod
    def _console(start_response, instance_id: str, text: str) -> list[bytes]:
        import base64

        output = base64.b64encode(text.encode()).decode()
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n<GetConsoleOutputResponse '
            'xmlns="http://ec2.amazonaws.com/doc/2016-11-15/"><requestId>console</requestId>'
            f"<instanceId>{instance_id}</instanceId><timestamp>2026-01-01T00:00:00.000Z</timestamp>"
            f"<output>{output}</output></GetConsoleOutputResponse>"
        ).encode()
        start_response("200 OK", [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))])
        return [body]

    def _layer(self, app):
        def layer(environ, start_response):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            body = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(body)
            call = self._parse(environ, body)
            with self._lock:
                self.calls.append(call)
                fault = next((f for f in self.faults if f.matches(call)), None)
                if fault is not None:
                    fault.hits += 1
                holds = [barrier for when, barrier in self.holds if call.action and when(call)]
            if fault is not None and not fault.lost_response:
                return self._error(start_response, fault)
            console = self.consoles.get(call.param("InstanceId") or "") if call.action == "GetConsoleOutput" else None
            if console is not None:
                return self._console(start_response, call.param("InstanceId"), console)
            token = call.param("ClientToken") if call.action == "RunInstances" else None
            with self._lock:
                replay = self._tokens.get(token) if token else None
            if replay is not None:
                status, headers, payload = replay
            else:
                status, headers, payload = self._forward(app, environ)
                if status.startswith("200"):
                    if token:
                        with self._lock:
                            self._tokens[token] = (status, headers, payload)
                    for observer in list(self.observers):
                        observer(call, payload)
            for barrier in holds:
                with contextlib.suppress(threading.BrokenBarrierError):
                    barrier.wait(timeout=30)
            if fault is not None:
                return self._error(start_response, fault)
            start_response(status, headers)
            return [payload]

        return layer

    @staticmethod
    def _forward(app, environ) -> tuple[str, list, bytes]:
        captured: dict[str, Any] = {}
        chunks: list[bytes] = []

        def start_response(status, headers, exc_info=None):
            captured["status"], captured["headers"] = status, headers
            return chunks.append

        result = app(environ, start_response)
        try:
            chunks.extend(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        return captured["status"], captured["headers"], b"".join(chunks)


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def launched(payload: bytes) -> list[tuple[str, str]]:
    """(instance id, private address) of each instance in a RunInstances answer, in order."""
    root = ET.fromstring(payload)
    found = []
    for child in root:
        if _local(child.tag) == "instancesSet":
            for item in child:
                values = {_local(e.tag): (e.text or "") for e in item}
                found.append((values["instanceId"], values.get("privateIpAddress", "")))
    return found


class MotoCloud:
    """A moto server with a VPC, subnet, security group and key pair — and, with ``hosts``, hosts that follow
    instances."""

    def __init__(self, client_key, make_network: Callable[..., Any] | None = None) -> None:
        self.client_key = client_key
        self.server = FaultyMotoServer()
        self.server.start()
        self.network = None
        self.hosts_by_id: dict[str, Any] = {}
        self.unanswering: dict[str, int] = {"orchestrator": 0, "factory": 0}
        #: GPUs the stand-in nvidia-smi of each new factory host lists (None: the host has no nvidia-smi).
        self.factory_gpus: int | None = None
        self._added = 0
        self._hosts_lock = threading.Lock()
        try:
            self.server.reset()
            self.endpoint = self.server.endpoint
            self.env = {
                "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": REGION,
                "AWS_MAX_ATTEMPTS": "2",
                "AWS_RETRY_MODE": "standard",
                "AWS_CONFIG_FILE": "/nonexistent/aws-config",
                "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
                "AWS_EC2_METADATA_DISABLED": "true",
            }
            kwargs = {"endpoint_url": self.endpoint, "region_name": REGION,
                      "aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
            self.ec2 = boto3.client("ec2", **kwargs)
            self.cloudwatch = boto3.client("cloudwatch", **kwargs)
            self.subnet_cidr = self._make_network(make_network) if make_network else "10.213.40.0/24"
            self.vpc_id = self.ec2.create_vpc(CidrBlock="10.213.0.0/16")["Vpc"]["VpcId"]
            self.subnet_id = self.ec2.create_subnet(VpcId=self.vpc_id, CidrBlock=self.subnet_cidr,
                                                    AvailabilityZone=ZONE)["Subnet"]["SubnetId"]
            self.security_group_id = self.ec2.create_security_group(
                GroupName="flambe-test", Description="flambe-cluster tests", VpcId=self.vpc_id)["GroupId"]
            self.ec2.import_key_pair(KeyName=KEY_NAME, PublicKeyMaterial=client_key.public_line.encode())
            self.gpu_image_id = self.amazon_image(DLAMI_NAME)
            if self.network is not None:
                self.server.observers.append(self._follow)
        except BaseException:
            self.close()
            raise

    # --- hosts that follow instances

    def _make_network(self, make_network) -> str:
        last: Exception | None = None
        for third in SUBNET_THIRD_OCTETS:
            cidr = f"10.213.{third}.0/24"
            try:
                self.network = make_network(0, subnet=cidr, first_host_octet=4)
                return cidr
            except RuntimeError as exc:  # overlaps a network of this machine: try the next
                last = exc
        raise RuntimeError(f"no free /24 for the test subnet: {last}")

    def _host_at(self, address: str):
        reused = [h for h in self.hosts_by_id.values() if h.address == address]
        if reused:  # a replacement at a terminated instance's address: the host comes back with a new key
            (host, *_) = reused
            if host.is_running():
                raise RuntimeError(f"moto launched an instance at {address}, whose host still runs")
            host.replace_host_key()
            return host
        target = ipaddress.ip_address(address)
        base = ipaddress.ip_network(self.subnet_cidr).network_address + 4
        while True:
            expected = base + self._added
            if expected > target:
                passed_over = [h for h in self.network.hosts if h.address == address and not h.is_running()]
                if passed_over:  # two launches at once, the later answered first: this one's address was skipped
                    passed_over[0].start()
                    return passed_over[0]
                raise RuntimeError(f"moto handed out {address}, below the next test host address {expected}")
            host = self.network.add_host()
            self._added += 1
            if host.address == address:
                return host
            host.stop()  # an address moto skipped

    def _follow(self, call: Call, payload: bytes) -> None:
        with self._hosts_lock:
            if call.action == "RunInstances":
                role = call.role
                for instance_id, address in launched(payload):
                    if not address or ipaddress.ip_address(address) not in ipaddress.ip_network(self.subnet_cidr):
                        continue
                    host = self._host_at(address)
                    if role in self.unanswering and self.unanswering[role] > 0:
                        self.unanswering[role] -= 1
                        host.partition()
                    if role == "factory" and self.factory_gpus is not None:
                        install_nvidia_smi(host, self.factory_gpus)
                    self.hosts_by_id[instance_id] = host
            elif call.action in ("TerminateInstances", "StopInstances"):
                for instance_id in call.instance_ids():
                    host = self.hosts_by_id.get(instance_id)
                    if host is not None:
                        host.stop()
            elif call.action == "StartInstances":
                for instance_id in call.instance_ids():
                    host = self.hosts_by_id.get(instance_id)
                    if host is not None:
                        host.start()

    def host_of(self, instance_id: str):
        return self.hosts_by_id[instance_id]

    # --- faults

    def fault(self, action: str, code: str, **kwargs: Any) -> Fault:
        fault = Fault(action, code, **kwargs)
        with self.server._lock:
            self.server.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self.server._lock:
            self.server.faults.clear()
        self.unanswering = {"orchestrator": 0, "factory": 0}

    # --- looking at the cloud (the test's own clients, not counted as the provider's)

    def instances(self, name: str | None = None, states=("pending", "running", "stopping", "stopped")) -> list[dict]:
        filters = [{"Name": "instance-state-name", "Values": list(states)}]
        if name is not None:
            filters.append({"Name": "tag:flambe-cluster:cluster", "Values": [name]})
        pages = self.ec2.get_paginator("describe_instances").paginate(Filters=filters)
        return [i for page in pages for r in page["Reservations"] for i in r["Instances"]]

    def state_of(self, instance_id: str) -> str:
        reservations = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        return reservations[0]["Instances"][0]["State"]["Name"]

    def alarms(self, prefix: str = "flambe-cluster/") -> list[dict]:
        return self.cloudwatch.describe_alarms(AlarmNamePrefix=prefix)["MetricAlarms"]

    def image_id(self) -> str:
        return self.ec2.describe_images(Owners=["099720109477"])["Images"][0]["ImageId"]

    def amazon_image(self, name: str, architecture: str = "x86_64", created: str | None = None) -> str:
        """Register an image named ``name`` for ``architecture``, owned by ``amazon`` as AWS's own images are.

        ``created`` (ISO 8601) is its CreationDate (default: now).  moto's
        RegisterImage keeps only the name (for this account), so the owner
        alias, architecture and date are set in moto's backend, which runs
        in this process.
        """
        import datetime

        from moto.backends import get_backend
        from moto.core import DEFAULT_ACCOUNT_ID

        image_id = self.ec2.register_image(Name=name, Architecture=architecture, RootDeviceName="/dev/sda1",
                                           VirtualizationType="hvm")["ImageId"]
        image = get_backend("ec2")[DEFAULT_ACCOUNT_ID][REGION].amis[image_id]
        image.owner_alias, image.architecture = "amazon", architecture
        if created is not None:
            image.creation_date = datetime.datetime.fromisoformat(created)
        return image_id

    def release_address(self, address: str) -> None:
        """Let a new instance take ``address``: EC2 frees a terminated instance's private address, moto keeps it.

        (moto's backend runs in this process; its subnet holds the addresses in use.)
        """
        from moto.backends import get_backend
        from moto.core import DEFAULT_ACCOUNT_ID

        subnet = get_backend("ec2")[DEFAULT_ACCOUNT_ID][REGION].subnets[ZONE][self.subnet_id]
        subnet._subnet_ips.pop(address, None)

    def make_instance(self, tags: dict[str, str] | None = None, count: int = 1) -> list[str]:
        """Instances made outside the provider (by the test), in the test subnet."""
        spec = [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in (tags or {}).items()]}]
        response = self.ec2.run_instances(
            ImageId=self.image_id(), InstanceType="t3.micro", MinCount=count, MaxCount=count, SubnetId=self.subnet_id,
            KeyName=KEY_NAME, **({"TagSpecifications": spec} if tags else {}),
        )
        return [i["InstanceId"] for i in response["Instances"]]

    # --- cluster files and the command line

    def config(self, name: str, **overrides: Any) -> dict:
        return {
            "provider": "aws",
            "name": name,
            "factories_num": 2,
            "factories_type": "t3.micro",
            "orchestrator_type": "t3.micro",
            "key_name": KEY_NAME,
            "key": str(self.client_key.path),
            "username": "flambe",
            "security_group": self.security_group_id,
            "subnet_id": self.subnet_id,
            "region_name": REGION,
            "use_public": False,
            "connect_timeout": 60,
            **overrides,
        }

    def write_config(self, path: Path, name: str, tag: bool = False, **overrides: Any) -> Path:
        body = self.config(name, **overrides)
        if tag:
            body.pop("provider")
            path.write_text("!AWSCluster\n" + yaml.safe_dump(body, sort_keys=False))
        else:
            path.write_text(yaml.safe_dump(body, sort_keys=False))
        return path

    def cli_env(self, home: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
        return {**env, **self.env, "FLAMBE_CLUSTER_HOME": str(home), "COLUMNS": "200"}

    def cli(self, *args: str, home: Path, timeout: float = 300,
            check: int | None = None) -> subprocess.CompletedProcess:
        return run_cli(*args, state_home=home, timeout=timeout, check=check, env=self.cli_env(home))

    def popen(self, *args: str, home: Path) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "flambe_cluster", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.cli_env(home))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.server.stop()
        if self.network is not None:
            self.network.close()


@contextlib.contextmanager
def cloud_environment(cloud: MotoCloud):
    """Point this process's boto3 (so the provider in-process) at the cloud."""
    with pytest.MonkeyPatch.context() as patch:
        for name in FOREIGN_ENV:
            patch.delenv(name, raising=False)
        for name, value in cloud.env.items():
            patch.setenv(name, value)
        yield


@pytest.fixture(scope="module")
def moto_cloud(flambe_client_key):
    """moto over HTTP with a VPC, subnet, security group and key pair; no test hosts (no root needed)."""
    cloud = MotoCloud(flambe_client_key)
    try:
        with cloud_environment(cloud):
            yield cloud
    finally:
        cloud.close()


@pytest.fixture(scope="module")
def aws_cloud(flambe_test_hosts, flambe_client_key):
    """moto over HTTP whose instances in the test subnet are real OpenSSH test hosts (root needed)."""
    cloud = MotoCloud(flambe_client_key, make_network=flambe_test_hosts)
    try:
        with cloud_environment(cloud):
            yield cloud
    finally:
        cloud.close()


def provider_calls(cloud: MotoCloud) -> dict[str, int]:
    """How many calls of each action the provider made so far."""
    counts: dict[str, int] = {}
    for call in list(cloud.server.calls):
        if call.from_provider:
            counts[call.action] = counts.get(call.action, 0) + 1
    return counts


def dump(done: subprocess.CompletedProcess) -> str:
    return f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
