"""What EC2 says about instance types and images: architectures, GPUs, default AMIs.

Instance-type facts never change, so they are cached per process (keyed by
region and endpoint); everything else is asked when needed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from typing import Any

from attrs import frozen

from . import api

__all__ = ["Image", "TypeInfo", "default_image", "describe_image", "gpu_image", "type_info"]

CANONICAL_OWNER = "099720109477"
#: Canonical's public SSM parameters for the current Ubuntu LTS images, newest first.
UBUNTU_SSM = (
    "/aws/service/canonical/ubuntu/server/24.04/stable/current/{arch}/hvm/ebs-gp3/ami-id",
    "/aws/service/canonical/ubuntu/server/22.04/stable/current/{arch}/hvm/ebs-gp2/ami-id",
)
UBUNTU_NAME = "ubuntu/images/hvm-ssd*/ubuntu-*-{arch}-server-*"
AMAZON_OWNER = "amazon"
#: The AWS Deep Learning Base AMIs with the OSS NVIDIA driver, by architecture
#: (names as the DLAMI release notes give them).
DLAMI_NAME = {
    "x86_64": "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu {version}) *",
    "arm64": "Deep Learning ARM64 Base OSS Nvidia Driver GPU AMI (Ubuntu {version}) *",
}
#: Ubuntu LTS versions of the GPU images, newest first (as for the Ubuntu images above).
UBUNTU_VERSIONS = ("24.04", "22.04")
_UBUNTU_ARCH = {"x86_64": "amd64", "arm64": "arm64"}


@frozen
class TypeInfo:
    """An instance type's architectures and NVIDIA GPUs (``None``: accelerators nvidia-smi must count)."""

    name: str
    architectures: tuple[str, ...]
    gpus: int | None


@frozen
class Image:
    """An AMI: its id, name, architecture, root device and the root volume size it needs (GiB)."""

    image_id: str
    name: str
    architecture: str
    root_device: str
    root_size: int


_types: dict[tuple, TypeInfo] = {}
_types_lock = threading.Lock()


def _cache_key(region: str, name: str) -> tuple:
    return (region, os.environ.get("AWS_ENDPOINT_URL_EC2") or os.environ.get("AWS_ENDPOINT_URL"), name)


def _parse_type(item: dict) -> TypeInfo:
    gpus = item.get("GpuInfo", {}).get("Gpus", [])
    nvidia = sum(g.get("Count", 0) for g in gpus if str(g.get("Manufacturer", "")).upper() == "NVIDIA")
    other = any(str(g.get("Manufacturer", "")).upper() != "NVIDIA" for g in gpus)
    return TypeInfo(
        name=item["InstanceType"],
        architectures=tuple(item.get("ProcessorInfo", {}).get("SupportedArchitectures", ())),
        gpus=None if other and not nvidia else nvidia,
    )


def type_info(region: str, names: Iterable[str]) -> dict[str, TypeInfo]:
    """Facts about existing instance types (one DescribeInstanceTypes call for those not cached).

    Types that do not exist are left out of the result.  Raises botocore
    errors other than ``InvalidInstanceType``.
    """
    from botocore.exceptions import ClientError

    names = sorted(set(names))
    with _types_lock:
        found = {n: _types[_cache_key(region, n)] for n in names if _cache_key(region, n) in _types}
    missing = [n for n in names if n not in found]
    if missing:
        ec2 = api.client("ec2", region)
        try:
            items = ec2.describe_instance_types(InstanceTypes=missing)["InstanceTypes"]
        except ClientError as exc:
            if api.error_code(exc) != "InvalidInstanceType":
                raise
            items = []  # at least one does not exist: ask one by one to learn which
            for name in missing:
                try:
                    items += ec2.describe_instance_types(InstanceTypes=[name])["InstanceTypes"]
                except ClientError as inner:
                    if api.error_code(inner) != "InvalidInstanceType":
                        raise
        with _types_lock:
            for item in items:
                info = _parse_type(item)
                _types[_cache_key(region, info.name)] = info
                found[info.name] = info
    return found


def _image(item: dict) -> Image:
    root = item.get("RootDeviceName") or "/dev/sda1"
    size = 0
    for mapping in item.get("BlockDeviceMappings", []):
        if mapping.get("DeviceName") == root:
            size = int(mapping.get("Ebs", {}).get("VolumeSize") or 0)
    return Image(item["ImageId"], item.get("Name", ""), item.get("Architecture", "x86_64"), root, size)


def describe_image(region: str, image_id: str) -> Image | None:
    """The image ``image_id``, or None when it does not exist (or is not visible to this account)."""
    from botocore.exceptions import ClientError

    try:
        items = api.client("ec2", region).describe_images(ImageIds=[image_id])["Images"]
    except ClientError as exc:
        if api.error_code(exc) in ("InvalidAMIID.NotFound", "InvalidAMIID.Malformed", "InvalidAMIID.Unavailable"):
            return None
        raise
    return _image(items[0]) if items else None


def default_image(region: str, architecture: str, gpus: bool = False, ubuntu: str | None = None) -> Image | None:
    """The default image for ``architecture`` (x86_64 or arm64), looked up, never hard-coded.

    Without ``gpus``: the newest Ubuntu LTS server image.  Canonical's public
    SSM parameters are asked first; when they are not there (or not
    readable), the newest image Canonical owns whose name matches
    ``ubuntu/images/hvm-ssd*/ubuntu-*-<arch>-server-*``.

    With ``gpus`` (an NVIDIA GPU type): the newest AWS Deep Learning Base
    AMI with the OSS NVIDIA driver for Ubuntu ``ubuntu`` (e.g. ``22.04``),
    else (or when it has none) for the newest Ubuntu LTS of
    :data:`UBUNTU_VERSIONS` that has one (see :func:`gpu_image`).
    """
    if gpus:
        others = tuple(v for v in UBUNTU_VERSIONS if v != ubuntu)
        return gpu_image(region, architecture, (ubuntu, *others) if ubuntu else UBUNTU_VERSIONS)
    from botocore.exceptions import ClientError

    arch = _UBUNTU_ARCH.get(architecture)
    if arch is None:
        return None
    names = [template.format(arch=arch) for template in UBUNTU_SSM]
    try:
        parameters = api.client("ssm", region).get_parameters(Names=names).get("Parameters", [])
    except ClientError:
        parameters = []  # no SSM access: fall back to the image list
    by_name = {p["Name"]: p["Value"] for p in parameters}
    for name in names:
        if name in by_name:
            image = describe_image(region, by_name[name])
            if image is not None:
                return image
    return _newest(region, CANONICAL_OWNER, UBUNTU_NAME.format(arch=arch), architecture)


def gpu_image(region: str, architecture: str, versions: Iterable[str] = UBUNTU_VERSIONS) -> Image | None:
    """The newest image Amazon owns named ``Deep Learning [ARM64 ]Base OSS Nvidia Driver GPU AMI (Ubuntu V) *``.

    Ubuntu ``versions`` are tried in order; None when none has one for
    ``architecture``.
    """
    template = DLAMI_NAME.get(architecture)
    if template is None:
        return None
    for version in versions:
        image = _newest(region, AMAZON_OWNER, template.format(version=version), architecture)
        if image is not None:
            return image
    return None


def _newest(region: str, owner: str, name: str, architecture: str) -> Image | None:
    """The newest available image of ``owner`` whose name matches ``name`` (DescribeImages wildcards)."""
    items: list[dict[str, Any]] = api.client("ec2", region).describe_images(
        Owners=[owner],
        Filters=[
            {"Name": "name", "Values": [name]},
            {"Name": "architecture", "Values": [architecture]},
            {"Name": "state", "Values": ["available"]},
        ],
    )["Images"]
    if not items:
        return None
    return _image(max(items, key=lambda item: (item.get("CreationDate", ""), item.get("Name", ""))))
