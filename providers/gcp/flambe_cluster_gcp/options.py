"""The GCP provider's options: what a user may write besides the common cluster fields.

Each converter parses one value or raises ``ValueError`` saying what was
expected and what was given (the core reports every problem at once).
Converters accept their own output.  Whether a zone, machine type, image or
network really exists is checked against the API by validation, not here.
"""

from __future__ import annotations

import getpass
import math
import re
from collections.abc import Mapping

import attrs
from attrs import field, frozen
from flambe_cluster.provider import Role, config_class, describe_value, to_bool, to_int, to_seconds, to_str

LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
#: Label keys the provider sets itself (users may not set them).
RESERVED_LABEL_PREFIX = "flambe-"
#: The Ubuntu LTS of the default images (CPU and GPU alike: one Python for the whole cluster).
UBUNTU = "2204"
DEFAULT_IMAGE = f"ubuntu-os-cloud/ubuntu-{UBUNTU}-lts"
_IMAGE_PATH = re.compile(r"^projects/([a-z][-a-z0-9.:]*[a-z0-9])/global/images/(family/)?([a-z]([-a-z0-9]*[a-z0-9])?)$")
_IMAGE_SHORT = re.compile(r"^([a-z][-a-z0-9.:]*[a-z0-9])/([a-z]([-a-z0-9]*[a-z0-9])?)$")


@frozen
class ImageRef:
    """An image named by family (resolved to the family's newest image) or by exact name."""

    project: str
    name: str
    is_family: bool

    @property
    def path(self) -> str:
        """``projects/P/global/images/family/F`` or ``projects/P/global/images/NAME``."""
        return f"projects/{self.project}/global/images/{'family/' if self.is_family else ''}{self.name}"

    def __str__(self) -> str:
        return f"image family {self.name!r} of project {self.project!r}" if self.is_family else (
            f"image {self.name!r} of project {self.project!r}")


def parse_image(value: str) -> ImageRef:
    """Parse ``PROJECT/FAMILY``, ``projects/P/global/images/family/F`` or ``projects/P/global/images/NAME``."""
    text = value.strip()
    if "projects/" in text:
        text = text[text.index("projects/"):]
    match = _IMAGE_PATH.fullmatch(text)
    if match:
        return ImageRef(match.group(1), match.group(3), bool(match.group(2)))
    match = _IMAGE_SHORT.fullmatch(text)
    if match:
        return ImageRef(match.group(1), match.group(2), True)
    raise ValueError(
        "expected an image family as PROJECT/FAMILY (e.g. 'ubuntu-os-cloud/ubuntu-2204-lts'), or "
        f"'projects/PROJECT/global/images/NAME' for one exact image, got {value!r}"
    )


def to_image(value: object) -> str:
    """Converter: an image reference (see :func:`parse_image`), kept as written."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected an image family as PROJECT/FAMILY, got {describe_value(value)}")
    parse_image(value)
    return value.strip()


def to_optional_str(value: object) -> str | None:
    return None if value is None else to_str(value)


def to_hours(value: object) -> float:
    """Converter: hours of idleness before release; ``-1`` never, ``0`` as soon as idle after work."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
        value < 0 and value != -1
    ):
        raise ValueError(f"expected a number of hours >= 0, or -1 for never, got {describe_value(value)}")
    return float(value)


def to_labels(value: object) -> dict[str, str]:
    """Converter: extra labels for every instance (GCP label rules; ``flambe-*`` keys are reserved)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping of label keys to values, got {describe_value(value)}")
    labels: dict[str, str] = {}
    for key, item in value.items():
        if isinstance(item, bool) or not isinstance(item, (str, int)):
            raise ValueError(f"label {key!r}: expected a string value, got {describe_value(item)}")
        item = str(item)
        if not isinstance(key, str) or not LABEL_KEY.fullmatch(key):
            raise ValueError(
                f"label key {key!r}: expected 1-63 lowercase letters, digits, '_' or '-', starting with a letter"
            )
        if key.startswith(RESERVED_LABEL_PREFIX):
            raise ValueError(f"label key {key!r}: keys starting with {RESERVED_LABEL_PREFIX!r} "
                             "are set by flambe-cluster")
        if not LABEL_VALUE.fullmatch(item):
            raise ValueError(f"label {key!r}: expected up to 63 lowercase letters, digits, '_' or '-', got {item!r}")
        labels[key] = item
    if len(labels) > 59:
        raise ValueError(f"expected at most 59 labels (GCP allows 64, flambe-cluster sets 5), got {len(labels)}")
    return labels


def default_creator() -> str:
    """The local user name, made a label value (lowercase letters, digits, '_' and '-'; 'unknown' without one)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"
    return re.sub(r"[^a-z0-9_-]", "-", user.lower())[:63].strip("-") or "unknown"


def to_creator(value: object) -> str:
    """Converter: the cluster's owner, a label value of 1-63 lowercase letters, digits, '_' or '-'."""
    if not isinstance(value, str) or not value or not LABEL_VALUE.fullmatch(value):
        raise ValueError(f"expected 1-63 lowercase letters, digits, '_' or '-' (it is a label value), "
                         f"got {describe_value(value)}")
    return value


def to_api_endpoint(value: object) -> str | None:
    """Converter: ``None`` or an ``http(s)://host[:port]`` URL."""
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"https?://[^/\s]+/?", value.strip()):
        raise ValueError("expected a URL like 'https://compute.example.com' or 'http://127.0.0.1:8080', "
                         f"got {describe_value(value)}")
    return value.strip().rstrip("/")


@config_class
class GCPOptions:
    """The GCP provider's options (see the package docstring for their meaning)."""

    zone: str = field(converter=to_str, metadata={"help": "the zone of every instance, e.g. 'us-central1-a'"})
    project: str | None = field(default=None, converter=to_optional_str)
    orchestrator_type: str = field(default="n2-standard-2", converter=to_str)
    factories_type: str = field(default="n2-standard-8", converter=to_str)
    factories_gpu_type: str | None = field(default=None, converter=to_optional_str)
    factories_gpu_count: int | None = field(default=None, converter=attrs.converters.optional(to_int(minimum=1)))
    orchestrator_image: str = field(default=DEFAULT_IMAGE, converter=to_image)
    factories_image: str | None = field(default=None, converter=attrs.converters.optional(to_image))
    disk_type: str = field(default="pd-balanced", converter=to_str)
    disk_size: int = field(default=100, converter=to_int(minimum=10))
    network: str = field(default="default", converter=to_str)
    subnetwork: str | None = field(default=None, converter=to_optional_str)
    labels: dict = field(factory=dict, converter=to_labels)
    service_account: str = field(default="default", converter=to_str)
    creator: str = field(factory=default_creator, converter=to_creator)
    preemptible: bool = field(default=False, converter=to_bool)
    spot: bool = field(default=False, converter=to_bool)
    orchestrator_timeout: float = field(default=-1.0, converter=to_hours)
    factories_timeout: float = field(default=1.0, converter=to_hours)
    use_public: bool = field(default=True, converter=to_bool)
    create_timeout: float = field(default=600.0, converter=to_seconds)
    api_endpoint: str | None = field(default=None, converter=to_api_endpoint)

    @property
    def gpu_count(self) -> int:
        """GPUs per factory asked for: ``factories_gpu_count``, or 1 when only a GPU type is given."""
        if self.factories_gpu_type is None:
            return 0
        return self.factories_gpu_count or 1

    def timeout_of(self, role: Role) -> float:
        """The idle timeout of ``role``'s instances in hours (-1: never)."""
        return self.orchestrator_timeout if role is Role.ORCHESTRATOR else self.factories_timeout

    def idle_shutdown(self, role: Role) -> bool:
        """Whether ``role``'s instances delete themselves when idle (their watchdog then needs the Compute API)."""
        return self.timeout_of(role) != -1

    @property
    def region(self) -> str:
        """The zone's region (``us-central1`` of ``us-central1-a``)."""
        return self.zone.rsplit("-", 1)[0]
