"""Reading the user contract (YAML or a mapping) into a :class:`~flambe_cluster.settings.ClusterConfig`.

A configuration is a mapping with the common cluster fields of the seed
(``name``, ``factories_num``, ``key``, ``username``, ``setup_cmds``), a few
core settings, and the provider's own options.  The provider is named by a
``provider:`` key or by the seed's YAML tags (``!SSHCluster``,
``!AWSCluster``, ``!GCPCluster``).  Building a configuration reports every
problem at once, each naming the field, what was expected and what was given.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pluggy
import yaml

from . import plugins
from .converters import build, describe_value, init_fields, unknown_keys
from .errors import ClusterConfigurationError, UsageError
from .providerhooks import ProviderHooks
from .settings import COMMON_FIELDS, ClusterConfig

YAML_TAGS = {"!SSHCluster": "ssh", "!AWSCluster": "aws", "!GCPCluster": "gcp", "!LocalCluster": "local"}


def provider_of(raw: Mapping[str, Any], source: str | None = None) -> str:
    """The provider a raw configuration names; raises listing the ways to name one."""
    if not isinstance(raw, Mapping):
        raise ClusterConfigurationError([f"expected a mapping of fields, got {describe_value(raw)}"], source)
    name = raw.get("provider")
    if not isinstance(name, str) or not name:
        tags = ", ".join(YAML_TAGS)
        raise ClusterConfigurationError(
            [f"provider: required, expected a provider name (see `flambe-cluster providers`) or a YAML tag ({tags}), "
             f"got {name!r}"],
            source,
        )
    return name


def parse_config(
    raw: Mapping[str, Any],
    source: str | None = None,
    validate: bool = True,
    manager: pluggy.PluginManager | None = None,
) -> ClusterConfig:
    """Build a :class:`ClusterConfig` from a mapping, or raise with every problem.

    ``manager`` is the plugin manager holding the configuration's provider
    (one is made when not given; a :class:`~flambe_cluster.cluster.Cluster`
    passes its own, so it makes exactly one).  Raises
    :class:`ClusterConfigurationError` listing all problems found, and
    :class:`~flambe_cluster.errors.ProviderError` when the provider cannot be
    loaded.  With ``validate`` (for ``up``) it also runs the provider's
    ``flambe_cluster_validate`` hook, which may ask the cloud; commands on an
    existing cluster skip it.
    """
    provider_name = provider_of(raw, source)
    manager = manager or plugins.make_plugin_manager(provider_name)
    hooks = ProviderHooks(manager)
    raw = {**hooks.config_defaults(raw), **raw}
    options_class = hooks.options_class()
    own = {k: v for k, v in raw.items() if k not in COMMON_FIELDS}
    problems = unknown_keys(own, init_fields(options_class), also_known=COMMON_FIELDS)
    options = build(options_class, {k: v for k, v in own.items() if k in init_fields(options_class)}, problems)
    common = {k: v for k, v in raw.items() if k in COMMON_FIELDS}
    implied = getattr(options, "implied_factories_num", None)
    if "factories_num" not in common and implied is not None:
        common["factories_num"] = implied
    elif "factories_num" not in common and options is None:
        common["factories_num"] = 0  # the options' own problems say what is wrong; they may have implied it
    config: ClusterConfig | None = build(ClusterConfig, {**common, "options": options, "source": source}, problems)
    if config is not None and implied is not None and implied != config.factories_num:
        problems.append(
            f"factories_num: expected {implied} (the number of factories listed), got {config.factories_num}"
        )
    if problems or config is None or options is None:
        raise ClusterConfigurationError(problems, source)
    if validate:
        problems += hooks.validate(config)
    if problems:
        raise ClusterConfigurationError(problems, source)
    return config


class _Loader(yaml.SafeLoader):
    """Safe YAML loader that also understands the seed's cluster tags."""


def _tagged(provider: str) -> Callable[[yaml.SafeLoader, yaml.Node], dict[Any, Any]]:
    def construct(loader: yaml.SafeLoader, node: yaml.Node) -> dict[Any, Any]:
        if not isinstance(node, yaml.MappingNode):
            raise yaml.constructor.ConstructorError(None, None, f"expected a mapping after {node.tag}", node.start_mark)
        mapping = loader.construct_mapping(node, deep=True)
        if "provider" in mapping and mapping["provider"] != provider:
            raise yaml.constructor.ConstructorError(
                None, None, f"tag {node.tag} means provider {provider!r}, but provider: {mapping['provider']!r} is set",
                node.start_mark
            )
        return {"provider": provider, **mapping}

    return construct


for _tag, _provider in YAML_TAGS.items():
    _Loader.add_constructor(_tag, _tagged(_provider))


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
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
        raise ClusterConfigurationError(
            [f"expected a mapping of cluster fields at the top, got {describe_value(data)}"], str(path)
        )
    return data


def load_config(
    path: str | os.PathLike[str], validate: bool = True, manager: pluggy.PluginManager | None = None
) -> ClusterConfig:
    """Read and validate a YAML cluster file; see :func:`parse_config`."""
    return parse_config(read_config_file(path), source=str(path), validate=validate, manager=manager)
