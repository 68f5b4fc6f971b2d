"""Converters for configuration fields, and classes that report every bad field at once.

A converter parses one value or raises ``ValueError``/``TypeError`` whose
message says what was expected and what was given.  Configuration classes
(the core's :class:`~flambe_cluster.settings.ClusterConfig` and every
provider's options class) are declared with :func:`config_class`: an attrs
frozen class whose converters and validators attrs runs exactly once, as
usual, but which — inside :func:`build` — records each field's problem
instead of stopping at the first, so the user sees every problem of a file
in one error.
"""

from __future__ import annotations

import contextlib
import contextvars
import difflib
import math
import os
import re
import shlex
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar, cast

import attrs
import paramiko
from paramiko.pkey import UnknownKeyType

SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
SAFE_USERNAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")

C = TypeVar("C", bound=type)


# --- converters: each parses one value or raises ValueError saying what was expected


def describe_value(value: object) -> str:
    """``type value``, for messages saying what was given."""
    return f"{type(value).__name__} {value!r}"


def to_int(minimum: int | None = None, maximum: int | None = None) -> Callable[[object], int]:
    """Converter: an integer (not a bool, not a string) within ``minimum`` and ``maximum``."""

    def convert(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {describe_value(value)}")
        if minimum is not None and value < minimum:
            raise ValueError(f"expected an integer >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise ValueError(f"expected an integer <= {maximum}, got {value}")
        return value

    return convert


def to_seconds(value: object) -> float:
    """Converter: a positive, finite number of seconds."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"expected a positive number of seconds, got {describe_value(value)}")
    return float(value)


def to_usd(value: object) -> float:
    """Converter: an amount of US dollars, a finite number ≥ 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"expected an amount of US dollars (a number, 0 or more), got {describe_value(value)}")
    return float(value)


def to_optional_usd(value: object) -> float | None:
    """Converter: None, or :func:`to_usd`."""
    return None if value is None else to_usd(value)


def to_prices(value: object) -> dict[str, float]:
    """Converter: the price per hour in USD of machine types, ``{"g4dn.xlarge": 0.526, "g4dn.xlarge spot": 0.16}``.

    A key is an instance or machine type, alone (on-demand) or followed by a
    space and ``spot``; a value is USD per hour.  Empty by default.
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of machine types to USD per hour, got {describe_value(value)}")
    prices = {}
    for key, price in value.items():
        words = key.split() if isinstance(key, str) else []
        if not (len(words) == 1 or (len(words) == 2 and words[1] in ("spot", "on-demand"))):
            raise ValueError(f"{describe_value(key)}: expected a machine type, optionally followed by ' spot'")
        try:
            prices[" ".join(words)] = to_usd(price)
        except ValueError as exc:
            raise ValueError(f"{key}: {exc}") from None
    return prices


def to_bool(value: object) -> bool:
    """Converter: a YAML boolean."""
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {describe_value(value)}")
    return value


def to_str(value: object) -> str:
    """Converter: a non-empty string."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {describe_value(value)}")
    return value


def to_str_tuple(value: object) -> tuple[str, ...]:
    """Converter: a list of strings (``None`` means empty)."""
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ValueError(f"expected a list of strings, got {describe_value(value)}")
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise ValueError(f"expected a list of strings, item {index} is {describe_value(item)}")
    return tuple(value)


def matching(pattern: re.Pattern[str], expected: str) -> Callable[[object], str]:
    """Converter factory: a string ``pattern`` matches whole (no trailing newline slips through)."""

    def convert(value: object) -> str:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise ValueError(f"expected {expected}, got {describe_value(value)}")
        return value

    return convert


to_safe_name = matching(
    SAFE_NAME,
    "1-63 characters of letters, digits, '-' and '_', starting with a letter or digit "
    "(it is used in file names, tags and commands)",
)
to_username = matching(SAFE_USERNAME, "a POSIX user name (lowercase letters, digits, '-', '_')")


def to_private_key_path(value: object) -> Path:
    """Converter: the path of a readable private key file (``~`` expanded) that OpenSSH accepts.

    A key of this user that others may read or write is refused, as OpenSSH
    refuses it; the message gives the ``chmod 600`` line that fixes it.
    """
    if isinstance(value, Path):
        path = value
    elif isinstance(value, str) and value.strip():
        path = Path(value).expanduser()
    else:
        raise ValueError(f"expected the path of an SSH private key file, got {describe_value(value)}")
    if not path.is_file():
        raise ValueError(f"expected the path of an SSH private key file, but {str(path)!r} does not exist")
    if not os.access(path, os.R_OK):
        raise ValueError(f"the key file {str(path)!r} is not readable by this user")
    info = path.stat()
    if info.st_uid == os.getuid() and info.st_mode & 0o077:  # OpenSSH's own rule: it refuses such a key
        raise ValueError(f"the key file {str(path)!r} is readable by others (mode {info.st_mode & 0o777:o}) and "
                         f"OpenSSH refuses it; restrict it with: chmod 600 {shlex.quote(str(path.absolute()))}")
    return path.absolute()


def to_optional_private_key_path(value: object) -> Path | None:
    """Converter: ``None`` (keys from ssh-agent) or a key as :func:`to_private_key_path` accepts it.

    A passphrase-protected key is accepted only while ssh-agent holds it
    (nothing may prompt); otherwise the message names the file and says how
    to load it.
    """
    if value is None:
        return None
    path = to_private_key_path(value)
    if key_is_encrypted(path) and not agent_holds(path):
        raise ValueError(f"the key file {str(path)!r} is protected by a passphrase and no ssh-agent holds it; "
                         f"load it with `ssh-add {shlex.quote(str(path))}` (with SSH_AUTH_SOCK set), or leave "
                         "`key` out to use the agent's keys")
    return path


def key_is_encrypted(path: Path) -> bool:
    """Whether the private key at ``path`` needs a passphrase to be read."""
    try:
        paramiko.PKey.from_path(path)
    except (paramiko.PasswordRequiredException, TypeError):  # TypeError: cryptography's "password-protected"
        return True
    except (paramiko.SSHException, UnknownKeyType, ValueError, OSError):  # not a key paramiko reads: OpenSSH will say
        return False
    return False


def agent_holds(path: Path) -> bool:
    """Whether the ssh-agent of ``SSH_AUTH_SOCK`` holds the key at ``path``.

    Compared by the public half in ``<path>.pub``; without that file, any key
    the agent holds counts (the agent is tried and the server decides).
    """
    try:
        agent = paramiko.Agent()
    except paramiko.SSHException:
        return False
    try:
        held = {key.get_base64() for key in agent.get_keys()}
    finally:
        agent.close()
    public = path.with_name(path.name + ".pub")
    fields = public.read_text().split() if public.is_file() else []
    return fields[1] in held if len(fields) >= 2 else bool(held)


def to_ssh_config(value: object) -> Path | None:
    """Converter: the OpenSSH client configuration to honour: a path, ``true`` (``~/.ssh/config``) or ``false`` (none).

    A given path must exist; the default ``~/.ssh/config`` is honoured only
    when it exists.  ``None`` means "ignore any configuration".
    """
    if value is True:
        default = Path("~/.ssh/config").expanduser()
        return default if default.is_file() else None
    if value is False or value is None:
        return None
    if isinstance(value, (str, Path)) and str(value).strip():
        path = Path(value).expanduser().absolute()
        if not path.is_file():
            raise ValueError(f"expected an OpenSSH client configuration file, but {str(path)!r} does not exist")
        return path
    raise ValueError(
        f"expected true, false or the path of an OpenSSH client configuration, got {describe_value(value)}"
    )


JUMP_HOP = re.compile(r"(?:(?P<user>[^@\s,:]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^@\s,:\[\]]+)(?::(?P<port>[0-9]{1,5}))?")


def parse_jump(hop: str) -> tuple[str | None, str, int | None]:
    """``[user@]host[:port]`` (IPv6 in brackets) as ``(user, host, port)``; raises ValueError naming the hop."""
    found = JUMP_HOP.fullmatch(hop.strip())
    port = int(found["port"]) if found and found["port"] else None
    if found is None or (port is not None and not 1 <= port <= 65535):
        raise ValueError(f"expected a jump host as 'user@host:port' (user and port optional), got {hop!r}")
    return found["user"], found["host"].strip("[]"), port


def to_proxy_jump(value: object) -> str | None:
    """Converter: ``None`` or OpenSSH's ProxyJump: ``[user@]host[:port]``, several separated by commas
    (first reached first)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected 'user@bastion:port' (a comma-separated chain allowed), got {describe_value(value)}")
    for hop in value.split(","):
        parse_jump(hop)
    return ",".join(hop.strip() for hop in value.split(","))


def to_optional_str(value: object) -> str | None:
    """Converter: ``None`` or a non-empty string."""
    return None if value is None else to_str(value)


def to_optional_path(value: object) -> Path | None:
    """Converter: ``None`` or a path (``~`` expanded)."""
    if value is None or isinstance(value, Path):
        return value
    if isinstance(value, str) and value.strip():
        return Path(value).expanduser().absolute()
    raise ValueError(f"expected a folder path, got {describe_value(value)}")


def one_of(*choices: str) -> Callable[[object], str]:
    """Converter: one of ``choices``."""

    def convert(value: object) -> str:
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(map(repr, choices))}, got {value!r}")
        return value

    return convert


# --- configuration classes that report every problem


class _Required:
    """Stands for a required field the user left out (see :func:`build`)."""

    def __repr__(self) -> str:
        return "<required>"


REQUIRED = _Required()


@attrs.define
class _Report:
    problems: list[str] = attrs.field(factory=list)
    failed: set[str] = attrs.field(factory=set)

    def add(self, name: str, message: str) -> None:
        self.failed.add(name)
        self.problems.append(f"{name}: {message}")


_report: contextvars.ContextVar[_Report | None] = contextvars.ContextVar("flambe_cluster_report", default=None)


@contextlib.contextmanager
def _reporting() -> Iterator[_Report]:
    report = _Report()
    token = _report.set(report)
    try:
        yield report
    finally:
        _report.reset(token)


def _reporting_converter(attribute: attrs.Attribute[Any]) -> Callable[[object], object]:
    # attrs' stubs say a Converter, but a field's converter is the callable it was given
    convert = cast("Callable[[object], object] | None", attribute.converter)
    expected = attribute.metadata.get("help", "a value")

    def run(value: object) -> object:
        report = _report.get()
        if value is REQUIRED:
            if report is None:
                raise TypeError(f"{attribute.name}: required, expected {expected}")
            report.add(attribute.name, f"required, expected {expected}")
            return None
        if convert is None:
            return value
        if report is None:
            return convert(value)
        try:
            return convert(value)
        except (ValueError, TypeError) as exc:
            report.add(attribute.name, str(exc))
            return None

    return run


def _reporting_validator(
    validator: Callable[[Any, attrs.Attribute[Any], Any], None],
) -> Callable[[Any, attrs.Attribute[Any], Any], None]:
    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        report = _report.get()
        if report is None:
            validator(instance, attribute, value)
        elif attribute.name not in report.failed:
            try:
                validator(instance, attribute, value)
            except (ValueError, TypeError) as exc:
                report.add(attribute.name, str(exc))

    return check


def _transform(cls: type, attributes: list[attrs.Attribute[Any]]) -> list[attrs.Attribute[Any]]:
    return [
        a.evolve(
            converter=_reporting_converter(a),
            validator=_reporting_validator(a.validator) if a.validator is not None else None,
        ) if a.init else a
        for a in attributes
    ]


def config_class(cls: C) -> C:
    """Declare a configuration class: ``attrs.frozen`` whose fields :func:`build` checks all at once.

    Fields are ordinary attrs fields; a converter raises ``ValueError`` or
    ``TypeError`` saying what was expected and what came, and field metadata
    ``help`` describes the value a missing required field expects.  Built
    directly (``Options(...)``) the class behaves like any frozen attrs class.
    """
    built = attrs.frozen(cls, field_transformer=_transform)
    cast(Any, built).__flambe_config_class__ = True  # a mark of its own, which no type declares
    return built


def is_config_class(cls: object) -> bool:
    """Whether ``cls`` was declared with :func:`config_class`."""
    return getattr(cls, "__flambe_config_class__", False) is True


def init_fields(cls: type) -> dict[str, attrs.Attribute[Any]]:
    """The fields a user may set, by name."""
    return {a.name: a for a in attrs.fields(cls) if a.init}


def unknown_keys(data: Mapping[str, Any], known: Mapping[str, Any],
                 also_known: frozenset[str] = frozenset()) -> list[str]:
    """A problem per key of ``data`` that is no field, with the closest field name as a hint."""
    problems = []
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), [*known, *also_known], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known fields: {', '.join(sorted(known))}"
            problems.append(f"{key}: unknown field{hint}")
    return problems


def build(cls: type, values: Mapping[str, Any], problems: list[str]) -> Any | None:
    """Build the :func:`config_class` ``cls`` from ``values``, appending every problem to ``problems``.

    Missing required fields, converter and validator errors are all
    reported; each converter runs once (attrs runs it).  Returns ``None``
    when anything was wrong.  Keys that are no field of ``cls`` must have
    been removed (see :func:`unknown_keys`).
    """
    if not is_config_class(cls):
        raise TypeError(f"{cls.__qualname__} is not declared with flambe_cluster.provider.config_class")
    fields = init_fields(cls)
    arguments = {
        **{name: REQUIRED for name, a in fields.items() if a.default is attrs.NOTHING},
        **values,
    }
    with _reporting() as report:
        built = cls(**arguments)
    problems.extend(report.problems)
    return None if report.problems else built
