"""Provider discovery and selection.

Providers are found through the entry-point group ``flambe_cluster.providers``
without importing them; only the selected one is imported.  Whether one is
ready is read from its distribution's metadata (the requirements of the
extra named after it, such as ``flambe-cluster[aws]``), still without
importing anything.  Selecting checks readiness and the contract up front so
a broken or missing provider fails with a one-line message that says what to
do, not deep inside a run.
"""

from __future__ import annotations

import difflib
from importlib import metadata
from types import ModuleType

import pluggy
from attrs import frozen
from packaging.requirements import Requirement

from . import defaults, hookspecs
from .converters import is_config_class
from .errors import ProviderError
from .providerhooks import ProviderHooks

ENTRY_POINT_GROUP = "flambe_cluster.providers"
DISTRIBUTION = "flambe-cluster"
REQUIRED_HOOKS = (
    "flambe_cluster_options_class",
    "flambe_cluster_validate",
    "flambe_cluster_load_instances",
    "flambe_cluster_find_instances",
)
HOOK_NAMES = tuple(
    name for name in dir(hookspecs) if name.startswith("flambe_cluster_")
)


@frozen
class ProviderInfo:
    """An installed provider, as its entry point declares it (nothing imported)."""

    name: str
    target: str
    distribution: str
    version: str


def _entry_points() -> list[metadata.EntryPoint]:
    return list(metadata.entry_points(group=ENTRY_POINT_GROUP))


def _info(entry_point: metadata.EntryPoint) -> ProviderInfo:
    dist = entry_point.dist
    return ProviderInfo(
        name=entry_point.name,
        target=entry_point.value,
        distribution=dist.name if dist else "?",
        version=dist.version if dist else "?",
    )


def installed_providers() -> list[ProviderInfo]:
    """Every provider registered in the entry-point group, sorted by name.

    Imports nothing; a name claimed by several distributions appears once per
    distribution.
    """
    return sorted((_info(ep) for ep in _entry_points()), key=lambda p: (p.name, p.distribution))


def missing_requirements(info: ProviderInfo) -> list[str]:
    """The requirements of the extra named after the provider (``flambe-cluster[aws]`` for ``aws``) that are
    not installed, or not in a matching version; imports nothing.

    Only requirements the extra adds count (those whose markers hold with
    that extra and not without it): a distribution's unconditional
    requirements come with it, and one missing anyway shows as an import
    error when the provider is loaded.
    """
    try:
        requires = metadata.distribution(info.distribution).requires or []
    except metadata.PackageNotFoundError:
        return []
    missing = []
    for line in requires:
        requirement = Requirement(line)
        marker = requirement.marker
        if marker is None or not marker.evaluate({"extra": info.name}) or marker.evaluate({"extra": ""}):
            continue
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            missing.append(str(requirement.name))
            continue
        if not requirement.specifier.contains(version, prereleases=True):
            missing.append(f"{requirement.name}{requirement.specifier} (found {version})")
    return missing


def install_hint(info: ProviderInfo, missing: list[str] | str | None) -> str:
    """The pip command that installs what the provider ``info`` misses (names, or one module's name)."""
    if info.distribution == DISTRIBUTION:
        return f"install its extra: pip install '{DISTRIBUTION}[{info.name}]'"
    names = [missing] if isinstance(missing, str) else missing
    what = ", ".join(names) if names else "its dependencies"
    return f"reinstall {info.distribution} ({what} missing): pip install --force-reinstall {info.distribution}"


def load_provider(name: str) -> ModuleType | object:
    """Import the provider registered as ``name`` and check it honours the contract.

    Raises :class:`ProviderError` when the name is unknown (listing the
    installed ones), claimed by two distributions, misses requirements or
    fails to import (with the
    pip command that installs what is missing), implements a hook that does
    not exist (with the closest hook name) or misses a required hook.
    """
    matches = [ep for ep in _entry_points() if ep.name == name]
    if not matches:
        known = sorted({ep.name for ep in _entry_points()})
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        cloud = (
            f" The {name!r} provider ships with flambe-cluster as an extra: pip install '{DISTRIBUTION}[{name}]'."
            if name in ("aws", "gcp")
            else " A third-party provider is a pip package; install it first."
        )
        raise ProviderError(
            f"unknown provider {name!r}; installed providers: {', '.join(known) or 'none'}.{hint}{cloud}"
        )
    if len({_info(ep).distribution for ep in matches}) > 1:
        owners = ", ".join(f"{i.distribution} {i.version} ({i.target})" for i in map(_info, matches))
        raise ProviderError(
            f"provider name {name!r} is claimed by several distributions: {owners}. "
            "Uninstall all but one of them (pip uninstall NAME)."
        )
    entry_point = matches[0]
    info = _info(entry_point)
    missing = missing_requirements(info)
    if missing:
        raise ProviderError(f"provider {name!r} needs {', '.join(missing)}, which is not installed; "
                            f"to fix it, {install_hint(info, missing)}.")
    try:
        provider: ModuleType | object = entry_point.load()
    except ImportError as exc:
        raise ProviderError(
            f"provider {name!r} ({info.target}, from {info.distribution}) cannot be imported: {exc}. "
            f"To fix it, {install_hint(info, exc.name)}."
        ) from exc
    check_provider(name, provider)
    return provider


def _hook_attributes(provider: object) -> dict[str, object]:
    return {
        attr: getattr(provider, attr)
        for attr in dir(provider)
        if attr.startswith("flambe_cluster_") and callable(getattr(provider, attr, None))
    }


def check_provider(name: str, provider: object) -> None:
    """Raise :class:`ProviderError` if ``provider`` implements an unknown hook or misses a required one."""
    hooks = _hook_attributes(provider)
    unknown = sorted(set(hooks) - set(HOOK_NAMES))
    if unknown:
        details = []
        for attr in unknown:
            close = difflib.get_close_matches(attr, HOOK_NAMES, n=1)
            details.append(f"{attr!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ProviderError(
            f"provider {name!r} implements unknown hook(s) {', '.join(details)}; "
            "rename them to hooks listed in flambe_cluster.hookspecs."
        )
    missing = [hook for hook in REQUIRED_HOOKS if hook not in hooks]
    if missing:
        raise ProviderError(
            f"provider {name!r} lacks required hook(s) {', '.join(missing)}; "
            "see flambe_cluster.hookspecs for their contracts."
        )


def make_plugin_manager(name: str) -> pluggy.PluginManager:
    """A fresh plugin manager holding the provider ``name`` and the core defaults."""
    provider = load_provider(name)
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    manager.register(defaults, name="flambe_cluster.defaults")
    plugin = manager.register(provider, name=f"provider:{name}")
    manager.check_pending()
    unmarked = [hook for hook in REQUIRED_HOOKS
                if not any(impl.plugin_name == plugin for impl in getattr(manager.hook, hook).get_hookimpls())]
    if unmarked:
        raise ProviderError(
            f"provider {name!r} defines {', '.join(unmarked)} without the @flambe_cluster.hookimpl marker; "
            "decorate each hook implementation with it."
        )
    options_class = ProviderHooks(manager).options_class()
    if not is_config_class(options_class):
        raise ProviderError(
            f"provider {name!r}: its options class {getattr(options_class, '__qualname__', options_class)!r} is not "
            "declared with @flambe_cluster.provider.config_class, which reports every bad field at once; decorate it."
        )
    return manager
