"""Checking a cluster against EC2 before anything is paid for, and resolving what a launch needs.

:func:`resolve` looks everything up — credentials, subnet, security group
(same VPC), key pair, instance types offered in the subnet's zone, images
and their architecture — and returns every problem found at once, each
naming the field, what was expected and what was found.  It only reads.
A failure of AWS itself (throttling, no network) is not a problem of the
file: it raises :class:`~flambe_cluster_aws.api.AWSError` naming the step.
"""

from __future__ import annotations

import base64
import difflib
import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

from attrs import frozen

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
    from cryptography.hazmat.primitives.serialization import SSHPrivateKeyTypes

from . import api, catalog
from .options import AWSOptions

__all__ = ["LaunchPlan", "resolve"]

STEP = "validating the configuration against EC2"
ROLES = ("orchestrator", "factory")


@frozen
class LaunchPlan:
    """Where and from what the cluster's instances are launched (resolved ids)."""

    subnet_id: str
    vpc_id: str
    zone: str
    security_group_id: str
    images: dict  # role value -> catalog.Image


def _not_found(exc: BaseException, *codes: str) -> bool:
    code = api.error_code(exc)
    return any(code.startswith(c) for c in codes)


def resolve(options: AWSOptions, key: Path | None = None) -> tuple[list[str], LaunchPlan | None]:
    """Every problem that stops the cluster from launching, and the plan when there is none.

    Read-only; costs about seven API calls.  ``key``, the private key file,
    is checked against the key pair's fingerprint.  Raises ``AWSError`` when
    AWS cannot answer (the file may be fine).
    """
    if not api.has_credentials():
        return [
            "credentials: no AWS credentials found; run `aws configure`, set AWS_PROFILE, or set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
        ], None
    with api.step(STEP):
        return _resolve(options, key)


def key_fingerprints(path: Path) -> set[str] | None:
    """Every form in which EC2 may print the fingerprint of the key in ``path`` (None: unreadable here).

    Imported RSA keys: MD5 of the DER public key; keys EC2 generated: SHA-1
    of the PKCS#8 private key; ED25519: SHA-256 of the OpenSSH key blob in
    base64.  The other combinations are included too, normalised, so that a
    form EC2 (or an endpoint imitating it) prints differently does not make
    a good key look wrong.
    """
    from cryptography.hazmat.primitives import serialization

    private: SSHPrivateKeyTypes | PrivateKeyTypes
    try:
        data = path.read_bytes()
        try:
            private = serialization.load_ssh_private_key(data, password=None)
        except ValueError:
            private = serialization.load_pem_private_key(data, password=None)
    except (OSError, ValueError, TypeError):
        return None  # encrypted or not a key: SSH will say
    public = private.public_key()
    forms = [
        public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        base64.b64decode(
            public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).split()[1]
        ),
        private.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
    ]
    prints = set()
    for blob in forms:
        for algorithm in (hashlib.md5, hashlib.sha1, hashlib.sha256):
            digest = algorithm(blob).digest()
            prints.add(digest.hex())
            prints.add(base64.b64encode(digest).decode().rstrip("="))
    return prints


def key_matches(path: Path, fingerprint: str) -> bool | None:
    """Whether the private key in ``path`` is the one EC2 fingerprinted (None: cannot tell)."""
    prints = key_fingerprints(path)
    if prints is None or not fingerprint:
        return None
    text = fingerprint.strip()
    if text.upper().startswith("SHA256:"):
        text = text[7:]
    return text.replace(":", "").lower() in prints or text.rstrip("=") in prints


def _resolve(options: AWSOptions, key: Path | None) -> tuple[list[str], LaunchPlan | None]:
    ec2 = api.client("ec2", options.region_name)
    problems: list[str] = []
    subnet = _subnet(ec2, options, problems)
    vpc_id = subnet["VpcId"] if subnet else None
    zone = subnet["AvailabilityZone"] if subnet else None
    group = _security_group(ec2, options, vpc_id, problems)
    _key_pair(ec2, options, key, problems)
    types = _instance_types(ec2, options, zone, problems)
    images = _images(options, types, problems)
    if problems or subnet is None or group is None:
        return problems, None
    return [], LaunchPlan(options.subnet_id, subnet["VpcId"], subnet["AvailabilityZone"], group["GroupId"], images)


def _subnet(ec2, options: AWSOptions, problems: list[str]) -> dict | None:
    from botocore.exceptions import ClientError

    try:
        return ec2.describe_subnets(SubnetIds=[options.subnet_id])["Subnets"][0]
    except ClientError as exc:
        if not _not_found(exc, "InvalidSubnetID"):
            raise
    problems.append(f"subnet_id: expected a subnet of region {options.region_name}, "
                    f"but {options.subnet_id} does not exist there")
    return None


def _security_group(ec2, options: AWSOptions, vpc_id: str | None, problems: list[str]) -> dict | None:
    """The group, by id or by name in the subnet's VPC; it must belong to that VPC."""
    from botocore.exceptions import ClientError

    by_id = options.security_group.startswith("sg-")
    try:
        if by_id:
            groups = ec2.describe_security_groups(GroupIds=[options.security_group])["SecurityGroups"]
        else:
            filters = [{"Name": "group-name", "Values": [options.security_group]}]
            if vpc_id:
                filters.append({"Name": "vpc-id", "Values": [vpc_id]})
            groups = ec2.describe_security_groups(Filters=filters)["SecurityGroups"]
    except ClientError as exc:
        if not _not_found(exc, "InvalidGroup"):
            raise
        groups = []
    if not groups:
        where = f"VPC {vpc_id}" if vpc_id and not by_id else f"region {options.region_name}"
        problems.append(f"security_group: expected an existing security group, "
                        f"but {options.security_group!r} does not exist in {where}")
        return None
    group = groups[0]
    if vpc_id and group.get("VpcId") != vpc_id:
        problems.append(
            f"security_group: {group['GroupId']} belongs to {group.get('VpcId') or 'no VPC'}, but subnet_id "
            f"{options.subnet_id} is in {vpc_id}; choose a group of the subnet's VPC"
        )
    return group


def _key_pair(ec2, options: AWSOptions, key: Path | None, problems: list[str]) -> None:
    """The key pair exists, and ``key`` is its private key."""
    from botocore.exceptions import ClientError

    try:
        pair = ec2.describe_key_pairs(KeyNames=[options.key_name])["KeyPairs"][0]
    except ClientError as exc:
        if not _not_found(exc, "InvalidKeyPair"):
            raise
        problems.append(
            f"key_name: expected an EC2 key pair of region {options.region_name}, but {options.key_name!r} does not "
            "exist there; import the public half of `key` with `aws ec2 import-key-pair`"
        )
        return
    if key is not None and key_matches(key, pair.get("KeyFingerprint", "")) is False:
        problems.append(
            f"key: expected the private key of EC2 key pair {options.key_name!r} (fingerprint "
            f"{pair.get('KeyFingerprint')}), but {key} is another key"
        )


FIELD_OF_TYPE = {"orchestrator": "orchestrator_type", "factory": "factories_type"}
FIELD_OF_AMI = {"orchestrator": "orchestrator_ami", "factory": "factory_ami"}


def _instance_types(ec2, options: AWSOptions, zone: str | None,
                    problems: list[str]) -> dict[str, catalog.TypeInfo | None]:
    """Each role's instance type, which must exist and be offered in the subnet's zone (or the region)."""
    region = options.region_name
    names = {role: options.instance_type(role) for role in ROLES}
    known = catalog.type_info(region, names.values())
    location = ("availability-zone", zone) if zone else ("region", region)
    offered = {
        item["InstanceType"]
        for item in ec2.describe_instance_type_offerings(
            LocationType=location[0],
            Filters=[{"Name": "location", "Values": [location[1]]},
                     {"Name": "instance-type", "Values": sorted(set(names.values()))}],
        )["InstanceTypeOfferings"]
    }
    for role, name in names.items():
        if name not in known:
            close = difflib.get_close_matches(name, _all_offered(ec2, region), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"{FIELD_OF_TYPE[role]}: expected an EC2 instance type, but {name!r} does not exist{hint}")
        elif name not in offered:
            where = f"availability zone {zone} (subnet {options.subnet_id})" if zone else f"region {region}"
            problems.append(f"{FIELD_OF_TYPE[role]}: {name!r} is not offered in {where}; "
                            "choose another type or a subnet in another zone")
    return {role: known.get(name) for role, name in names.items()}


def _images(options: AWSOptions, types: dict[str, catalog.TypeInfo | None],
            problems: list[str]) -> dict[str, catalog.Image]:
    """Each role's image: the one given (it must exist) or the default for the type (see :func:`catalog.default_image`).

    A type with NVIDIA GPUs defaults to an image that carries the driver, of
    the Ubuntu version the other role's default image runs (one Python for
    the whole cluster).
    """
    region = options.region_name
    images: dict[str, catalog.Image] = {}
    defaults: dict[tuple, catalog.Image | None] = {}  # (architecture, gpus) -> default image, asked once
    for role in ROLES:  # the orchestrator first: its default image sets the Ubuntu version
        info = types[role]
        architectures = info.architectures if info else ()
        given = options.ami(role)
        if given:
            image = catalog.describe_image(region, given)
            if image is None:
                problems.append(f"{FIELD_OF_AMI[role]}: expected an image of region {region}, but {given} does not "
                                "exist there (or is not shared with this account)")
                continue
        elif not architectures:
            continue  # the instance type's own problem is reported
        else:
            gpus = bool(info and info.gpus)
            key = (architectures[0], gpus)
            if key not in defaults:
                defaults[key] = catalog.default_image(region, architectures[0], gpus, _ubuntu_of(defaults.values()))
            image = defaults[key]
            if image is None:
                kind = ("image with the NVIDIA driver (Deep Learning Base OSS Nvidia Driver GPU AMI)" if gpus
                        else "Ubuntu image")
                problems.append(f"{FIELD_OF_AMI[role]}: no default {kind} found for {architectures[0]} in region "
                                f"{region}; set it to an AMI id")
                continue
        if architectures and image.architecture not in architectures:
            problems.append(f"{FIELD_OF_AMI[role]}: image {image.image_id} is built for {image.architecture}, but "
                            f"{options.instance_type(role)} runs {'/'.join(architectures)}")
        if image.root_size > options.volume_size:
            problems.append(f"volume_size: image {image.image_id} needs a root volume of at least {image.root_size} "
                            f"GiB, got {options.volume_size}")
        images[role] = image
    return images


def _ubuntu_of(images) -> str | None:
    """The Ubuntu version (``22.04``) in the name of the first of ``images`` that tells one."""
    for image in images:
        match = re.search(r"\b(\d\d\.04)\b", image.name if image else "")
        if match:
            return match.group(1)
    return None


def _all_offered(ec2, region: str) -> list[str]:
    """Every instance type offered in the region (only asked to suggest a name for a misspelt one)."""
    names = []
    for page in ec2.get_paginator("describe_instance_type_offerings").paginate(LocationType="region"):
        names += [item["InstanceType"] for item in page["InstanceTypeOfferings"]]
    return names
