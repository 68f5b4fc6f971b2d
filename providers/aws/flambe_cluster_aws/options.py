"""The AWS provider's options: the seed's ``AWSCluster`` parameters, parsed field by field.

Each converter raises ``ValueError`` saying what was expected and what was
given; the core collects every problem of a file at once.  Converters accept
their own output (the core may run them twice).  Nothing here talks to AWS:
whether the instance types, key pair, subnet, security group and images exist
is checked by :mod:`flambe_cluster_aws.validation`.
"""

from __future__ import annotations

import getpass
import re
from collections.abc import Mapping
from decimal import Decimal

import boto3  # the [aws] extra: without it the provider fails to import, and the core names the extra
from attrs import field
from flambe_cluster.provider import config_class, describe_value, matching, one_of, to_bool, to_int, to_seconds, to_str

__all__ = ["DEFAULT_REGION", "MAX_TIMEOUT_HOURS", "AWSOptions", "default_region"]

DEFAULT_REGION = "us-east-1"
#: CloudWatch evaluates an alarm over at most 7 days (periods of one hour).
MAX_TIMEOUT_HOURS = 168
#: Tag keys the provider owns: a user tag may not start with them.
RESERVED_TAG_PREFIXES = ("aws:", "flambe-cluster:")

_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
_AMI = re.compile(r"^ami-[0-9a-f]{8,17}$")
_SUBNET = re.compile(r"^subnet-[0-9a-f]{8,17}$")
_INSTANCE_TYPE = re.compile(r"^[a-z0-9-]+\.[a-z0-9-]+$")
_CREATOR = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+=-]{0,127}$")


def default_region() -> str:
    """The region boto3 is configured with (``AWS_REGION``/``AWS_DEFAULT_REGION``, ``~/.aws/config``),
    else us-east-1."""
    return boto3.session.Session().region_name or DEFAULT_REGION


def default_creator() -> str:
    """The local user name, made safe for a tag value and an alarm name."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers)
        return "unknown"
    cleaned = re.sub(r"[^A-Za-z0-9_.@+=-]", "-", user).lstrip("-_.@+=") or "unknown"
    return cleaned[:128]


to_region = matching(_REGION, "an AWS region name such as 'us-east-1'")
to_instance_type = matching(_INSTANCE_TYPE, "an EC2 instance type such as 'm5.xlarge'")
to_subnet_id = matching(_SUBNET, "a subnet id such as 'subnet-0123456789abcdef0'")
_to_ami = matching(_AMI, "an AMI id such as 'ami-0123456789abcdef0' (or leave it out for the default Ubuntu image)")
to_creator = matching(
    _CREATOR, "1-128 characters of letters, digits and '_.@+=-' (it is a tag value and part of alarm names)"
)


def to_optional_ami(value: object) -> str | None:
    return None if value is None else _to_ami(value)


def to_timeout_hours(value: object) -> int:
    """-1 (never), 0 (as soon as the host is idle, i.e. when the job ends) or N hours idle."""
    if isinstance(value, bool) or not isinstance(value, int) or not -1 <= value <= MAX_TIMEOUT_HOURS:
        raise ValueError(
            f"expected -1 (never), 0 (when the job ends) or a number of idle hours up to {MAX_TIMEOUT_HOURS}, "
            f"got {describe_value(value)}"
        )
    return value


def to_max_price(value: object) -> str | None:
    """None, or a positive price in USD per hour (a number or a numeric string), kept as EC2's decimal string."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a price in USD per hour such as 0.35, got {describe_value(value)}")
    try:
        price = Decimal(str(value).strip())
    except ArithmeticError:
        price = Decimal("NaN")
    if not price.is_finite() or price <= 0:
        raise ValueError(f"expected a positive price in USD per hour such as 0.35, got {describe_value(value)}")
    return format(price.normalize(), "f")


def _spot_only(options: AWSOptions, attribute, value: str | None) -> None:
    """Validator: a maximum spot price only makes sense for spot factories."""
    if value is not None and not options.factories_spot:
        raise ValueError(f"a maximum spot price ({value}) was given without factories_spot: true; "
                         "set factories_spot: true, or leave the price out")


def to_tags(value: object) -> Mapping[str, str]:
    """A mapping of tag keys to values (numbers and booleans become strings)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping of tag names to values, got {describe_value(value)}")
    tags: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not key.strip() or len(key) > 128:
            raise ValueError(f"expected tag names of 1-128 characters, got {key!r}")
        if key.lower().startswith(RESERVED_TAG_PREFIXES):
            raise ValueError(f"tag {key!r}: names starting with {' or '.join(RESERVED_TAG_PREFIXES)} are reserved")
        if key == "Name":
            raise ValueError("tag 'Name' is set by flambe-cluster (<name>_orchestrator, <name>_factory); leave it out")
        if isinstance(item, (bool, int, float)):
            item = str(item).lower() if isinstance(item, bool) else str(item)
        if not isinstance(item, str) or len(item) > 256:
            raise ValueError(f"tag {key!r}: expected a value of at most 256 characters, got {describe_value(item)}")
        tags[key] = item
    return tags


@config_class
class AWSOptions:
    """The AWS provider's options (the seed's ``AWSCluster`` parameters, plus ``launch_timeout`` and spot factories).

    ``name``, ``factories_num``, ``key``, ``username`` (default ``ubuntu``) and
    ``setup_cmds`` are common fields.  ``key`` is the private key of the EC2
    key pair ``key_name``.
    """

    factories_type: str = field(converter=to_instance_type,
                                metadata={"help": "the factories' EC2 instance type (e.g. 'g4dn.xlarge')"})
    orchestrator_type: str = field(converter=to_instance_type,
                                   metadata={"help": "the orchestrator's EC2 instance type (e.g. 'm5.large')"})
    key_name: str = field(converter=to_str,
                          metadata={"help": "the name of the EC2 key pair whose private key is `key`"})
    security_group: str = field(converter=to_str,
                                metadata={"help": "a security group id (sg-...) or name in the subnet's VPC"})
    subnet_id: str = field(converter=to_subnet_id, metadata={"help": "the subnet to launch into (subnet-...)"})
    creator: str = field(factory=default_creator, converter=to_creator)
    volume_type: str = field(default="gp2", converter=one_of("gp2", "gp3", "io1"))
    volume_size: int = field(default=100, converter=to_int(minimum=8))
    region_name: str = field(factory=default_region, converter=to_region)
    tags: Mapping[str, str] = field(factory=dict, converter=to_tags)
    orchestrator_ami: str | None = field(default=None, converter=to_optional_ami)
    factory_ami: str | None = field(default=None, converter=to_optional_ami)
    dedicated: bool = field(default=False, converter=to_bool)
    orchestrator_timeout: int = field(default=-1, converter=to_timeout_hours)
    factories_timeout: int = field(default=1, converter=to_timeout_hours)
    use_public: bool = field(default=True, converter=to_bool)
    launch_timeout: float = field(default=600.0, converter=to_seconds)
    factories_spot: bool = field(default=False, converter=to_bool)
    factories_spot_max_price: str | None = field(default=None, converter=to_max_price, validator=_spot_only)

    def instance_type(self, role_value: str) -> str:
        """The instance type of a role (``"orchestrator"`` or ``"factory"``)."""
        return self.orchestrator_type if role_value == "orchestrator" else self.factories_type

    def ami(self, role_value: str) -> str | None:
        """The AMI the user gave for a role, or None for the default image."""
        return self.orchestrator_ami if role_value == "orchestrator" else self.factory_ami

    def timeout(self, role_value: str) -> int:
        """The idle timeout of a role, in hours (-1 never, 0 when the job ends)."""
        return self.orchestrator_timeout if role_value == "orchestrator" else self.factories_timeout


