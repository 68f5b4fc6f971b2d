"""Cluster configuration: the user contract (YAML or Python) and its validation.

A configuration is a mapping with the common cluster fields of the seed
(``name``, ``factories_num``, ``key``, ``username``, ``setup_cmds``), a few
core settings, and the provider's own options.  The provider is named by a
``provider:`` key or by the seed's YAML tags (``!SSHCluster``,
``!AWSCluster``, ``!GCPCluster``).  Building a configuration reports every
problem at once, each naming the field, what was expected and what was given.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping

import attrs
import yaml
from attrs import field, frozen

from .errors import ClusterConfigurationError, UsageError
from . import plugins

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")
SAFE_USERNAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
YAML_TAGS = {"!SSHCluster": "ssh", "!AWSCluster": "aws", "!GCPCluster": "gcp", "!LocalCluster": "local"}
HOST_KEY_POLICIES = ("accept-new", "strict")


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


def matching(pattern: "re.Pattern[str]", expected: str) -> Callable[[object], str]:
    """Converter factory: a string matching ``pattern``; otherwise "expected <expected>, got ..."."""

    def convert(value: object) -> str:
        if not isinstance(value, str) or not pattern.match(value):
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
    """Converter: the path of a readable private key file (``~`` expanded)."""
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
    return path.absolute()


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
        return value  # type: ignore[return-value]

    return convert


# --- building attrs classes field by field, collecting every problem


def build_fields(
    cls: type, data: Mapping[str, Any], problems: list[str], also_known: frozenset[str] = frozenset()
) -> Any | None:
    """Build ``cls`` from ``data``, appending every problem found to ``problems``.

    Unknown keys (with the closest field name), missing required fields,
    converter and validator errors are all reported; returns ``None`` if any
    was found.  Field metadata ``help`` describes the expected value in the
    "missing" message; ``also_known`` are names valid elsewhere in the same
    file, offered as suggestions for misspelt keys.
    """
    fields = {f.name: f for f in attrs.fields(cls) if f.init}
    found = len(problems)
    for key in data:
        if key not in fields:
            close = difflib.get_close_matches(str(key), [*fields, *also_known], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known fields: {', '.join(sorted(fields))}"
            problems.append(f"{key}: unknown field{hint}")
    values: dict[str, Any] = {}
    for name, attribute in fields.items():
        if name not in data:
            if attribute.default is attrs.NOTHING:
                expected = attribute.metadata.get("help", "a value")
                problems.append(f"{name}: required, expected {expected}")
            continue
        value = data[name]
        try:
            if attribute.converter is not None:
                value = attribute.converter(value)
            if attribute.validator is not None:
                attribute.validator(None, attribute, value)
        except (ValueError, TypeError) as exc:
            problems.append(f"{name}: {exc}")
            continue
        values[name] = value
    if len(problems) > found:
        return None
    return cls(**values)


@frozen
class CommonFields:
    """The fields every cluster has, whatever the provider (the seed's parameters)."""

    name: str = field(converter=to_safe_name, metadata={"help": "the cluster's name"})
    key: Path = field(converter=to_private_key_path, metadata={"help": "the path of the SSH private key for all hosts"})
    username: str = field(converter=to_username, metadata={"help": "the user name on all hosts"})
    factories_num: int | None = field(default=None, converter=attrs.converters.optional(to_int(minimum=0)))
    setup_cmds: tuple[str, ...] = field(default=(), converter=to_str_tuple)
    host_key_policy: str = field(default="accept-new", converter=one_of(*HOST_KEY_POLICIES))
    connect_timeout: float = field(default=60.0, converter=to_seconds)
    command_timeout: float = field(default=1800.0, converter=to_seconds)
    state_dir: Path | None = field(default=None, converter=to_optional_path)
    python: str = field(default="python3", converter=to_str)
    ray_port: int = field(default=6379, converter=to_int(minimum=1, maximum=65535))
    ray_timeout: float = field(default=120.0, converter=to_seconds)
    secrets: Path | None = field(default=None, converter=to_optional_path)


COMMON_FIELDS = frozenset(f.name for f in attrs.fields(CommonFields)) | {"provider"}


@frozen
class ClusterConfig:
    """A validated cluster description.

    ``options`` is the provider's options object (see
    ``flambe_cluster_options_class``); ``source`` names the file it came from.
    """

    provider: str
    name: str
    key: Path
    username: str
    factories_num: int
    options: Any
    setup_cmds: tuple[str, ...] = ()
    host_key_policy: str = "accept-new"
    connect_timeout: float = 60.0
    command_timeout: float = 1800.0
    state_dir: Path | None = None
    python: str = "python3"
    ray_port: int = 6379
    ray_timeout: float = 120.0
    secrets: Path | None = None
    source: str | None = None


def parse_config(raw: Mapping[str, Any], source: str | None = None, validate: bool = True) -> ClusterConfig:
    """Build a :class:`ClusterConfig` from a mapping, or raise with every problem.

    Raises :class:`ClusterConfigurationError` listing all problems found, and
    :class:`~flambe_cluster.errors.ProviderError` when the provider cannot be
    loaded.  With ``validate`` (for ``up``) it also runs the provider's
    ``flambe_cluster_validate`` hook, which may ask the cloud; commands on an
    existing cluster skip it.
    """
    if not isinstance(raw, Mapping):
        raise ClusterConfigurationError([f"expected a mapping of fields, got {describe_value(raw)}"], source)
    provider_name = raw.get("provider")
    if not isinstance(provider_name, str) or not provider_name:
        tags = ", ".join(YAML_TAGS)
        raise ClusterConfigurationError(
            [f"provider: required, expected a provider name (see `flambe-cluster providers`) or a YAML tag ({tags}), got {provider_name!r}"],
            source,
        )
    manager = plugins.make_plugin_manager(provider_name)
    raw = {**(manager.hook.flambe_cluster_config_defaults(raw=dict(raw)) or {}), **raw}
    problems: list[str] = []
    common = build_fields(CommonFields, {k: v for k, v in raw.items() if k in COMMON_FIELDS - {"provider"}}, problems)
    options_class = manager.hook.flambe_cluster_options_class()
    options = build_fields(
        options_class, {k: v for k, v in raw.items() if k not in COMMON_FIELDS}, problems, also_known=COMMON_FIELDS
    )
    if common is None or options is None:
        raise ClusterConfigurationError(problems, source)
    factories_num = common.factories_num
    implied = getattr(options, "implied_factories_num", None)
    if factories_num is None:
        factories_num = implied
    if factories_num is None:
        raise ClusterConfigurationError(["factories_num: required, expected the number of factories"], source)
    if implied is not None and implied != factories_num:
        problems.append(f"factories_num: expected {implied} (the number of factories listed), got {factories_num}")
    config = ClusterConfig(
        provider=provider_name,
        options=options,
        source=source,
        **{**attrs.asdict(common, recurse=False), "factories_num": factories_num},
    )
    if validate:
        problems += provider_problems(manager.hook, config)
    if problems:
        raise ClusterConfigurationError(problems, source)
    return config


def provider_problems(hooks: Any, config: ClusterConfig) -> list[str]:
    """Every problem the provider's ``flambe_cluster_validate`` finds (may ask the cloud)."""
    return [p for result in hooks.flambe_cluster_validate(config=config) for p in result or ()]


class _Loader(yaml.SafeLoader):
    """Safe YAML loader that also understands the seed's cluster tags."""


def _tagged(provider: str) -> Callable[[yaml.SafeLoader, yaml.Node], dict]:
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> dict:
        if not isinstance(node, yaml.MappingNode):
            raise yaml.constructor.ConstructorError(None, None, f"expected a mapping after {node.tag}", node.start_mark)
        mapping = loader.construct_mapping(node, deep=True)
        if "provider" in mapping and mapping["provider"] != provider:
            raise yaml.constructor.ConstructorError(
                None, None, f"tag {node.tag} means provider {provider!r}, but provider: {mapping['provider']!r} is set", node.start_mark
            )
        return {"provider": provider, **mapping}

    return construct


for _tag, _provider in YAML_TAGS.items():
    _Loader.add_constructor(_tag, _tagged(_provider))


def read_config_file(path: str | os.PathLike[str]) -> dict:
    """Read a YAML cluster file into a mapping; syntax errors name line and column."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(f"cannot read the cluster file {str(path)!r}: {exc.strerror}") from exc
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        detail = f"{problem} ({context})" if context else problem
        raise ClusterConfigurationError([f"invalid YAML{where}: {detail}"], str(path)) from exc
    if not isinstance(data, dict):
        raise ClusterConfigurationError([f"expected a mapping of cluster fields at the top, got {describe_value(data)}"], str(path))
    return data


def load_config(path: str | os.PathLike[str], validate: bool = True) -> ClusterConfig:
    """Read and validate a YAML cluster file; see :func:`parse_config`."""
    return parse_config(read_config_file(path), source=str(path), validate=validate)
