"""The provider face the core calls: one typed method per hook (after tox 4's ``Plugin``).

:class:`ProviderHooks` wraps the plugin manager of one cluster (its
provider plus the core's defaults, see :func:`flambe_cluster.plugins.make_plugin_manager`);
every call the core makes to a provider goes through it, so no call site
touches ``manager.hook.*``, and each hook's arguments and answer have a
type.  The contracts are those of :mod:`flambe_cluster.hookspecs`;
optional hooks a provider does not implement answer as documented there
(``None`` or nothing).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, cast

import pluggy
from attrs import frozen

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .progress import Progress
    from .records import ClusterInstances, CreatedResource, Instance, PlannedChange, TaggedCluster
    from .settings import ClusterConfig
    from .state import RunJournal

__all__ = ["ProviderHooks"]


@frozen
class ProviderHooks:
    """The hooks of the provider ``manager`` holds, as methods (see the module docstring)."""

    manager: pluggy.PluginManager

    def implements(self, hook: str) -> bool:
        """Whether the provider itself (not the core's defaults) implements ``hook`` (``"flambe_cluster_sweep"``)."""
        return any(impl.plugin_name.startswith("provider:")
                   for impl in getattr(self.manager.hook, hook).get_hookimpls())

    def options_class(self) -> type:
        return cast(type, self.manager.hook.flambe_cluster_options_class())

    def config_defaults(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        return cast("dict[str, Any]", self.manager.hook.flambe_cluster_config_defaults(raw=dict(raw)) or {})

    def validate(self, config: ClusterConfig) -> list[str]:
        """Every problem the provider finds (may ask the cloud)."""
        return [p for result in self.manager.hook.flambe_cluster_validate(config=config) for p in result or ()]

    def load_instances(self, config: ClusterConfig, journal: RunJournal, progress: Progress) -> ClusterInstances:
        return cast("ClusterInstances",
                    self.manager.hook.flambe_cluster_load_instances(config=config, journal=journal, progress=progress))

    def find_instances(self, config: ClusterConfig) -> ClusterInstances | None:
        return cast("ClusterInstances | None", self.manager.hook.flambe_cluster_find_instances(config=config))

    def rollback(self, config: ClusterConfig, created: list[CreatedResource]) -> None:
        self.manager.hook.flambe_cluster_rollback(config=config, created=created)

    def terminate(self, config: ClusterConfig, instances: ClusterInstances | None) -> None:
        self.manager.hook.flambe_cluster_terminate(config=config, instances=instances)

    def release_instances(self, config: ClusterConfig, instances: list[Instance]) -> None:
        self.manager.hook.flambe_cluster_release_instances(config=config, instances=instances)

    def idle_removed(self, config: ClusterConfig, instances: list[Instance]) -> list[Instance] | None:
        return cast("list[Instance] | None",
                    self.manager.hook.flambe_cluster_idle_removed(config=config, instances=instances))

    def configure_idle_shutdown(self, config: ClusterConfig, instances: ClusterInstances, journal: RunJournal,
                                run: Callable[[Instance, str], str], map: Callable[..., dict[Instance, Any]]) -> None:
        self.manager.hook.flambe_cluster_configure_idle_shutdown(config=config, instances=instances, journal=journal,
                                                                 run=run, map=map)

    def detect_gpus(self, config: ClusterConfig, instance: Instance, run: Callable[[str], str]) -> int | None:
        return cast("int | None",
                    self.manager.hook.flambe_cluster_detect_gpus(config=config, instance=instance, run=run))

    def promised_gpus(self, config: ClusterConfig, instance: Instance) -> int | None:
        return cast("int | None", self.manager.hook.flambe_cluster_promised_gpus(config=config, instance=instance))

    def place(self, config: ClusterConfig) -> dict[str, str] | None:
        return cast("dict[str, str] | None", self.manager.hook.flambe_cluster_place(config=config))

    def host_keys(self, config: ClusterConfig, instance: Instance) -> list[str] | None:
        return cast("list[str] | None", self.manager.hook.flambe_cluster_host_keys(config=config, instance=instance))

    def sweep(self, where: dict[str, str]) -> list[TaggedCluster] | None:
        return cast("list[TaggedCluster] | None", self.manager.hook.flambe_cluster_sweep(where=where))

    def plan(self, config: ClusterConfig) -> list[PlannedChange]:
        return list(self.manager.hook.flambe_cluster_plan(config=config) or [])
