"""What ``up`` would create and delete on Compute Engine now, with prices (``flambe_cluster_plan``); looks only."""

from __future__ import annotations

from flambe_cluster.provider import PlannedChange, Role

from . import provision
from .api import Compute
from .pricing import offer


def plan(config, compute: Compute) -> list[PlannedChange]:
    """The instances ``load_instances`` would create (missing or lost ones) and the factories beyond
    ``factories_num`` that ``up`` may delete (the core keeps those it recorded as members)."""
    selection = provision.select(provision.list_cluster(compute, config), config.factories_num)
    missing = selection.missing(config.factories_num)
    changes = []
    for role in (Role.ORCHESTRATOR, Role.FACTORY):
        count = sum(1 for r, _ in missing if r is role)
        if count:
            changes.append(PlannedChange("launch", role, count, offer(config, role)))
    surplus = [f.name for f in selection.surplus if f.role == Role.FACTORY.value]
    if surplus:
        changes.append(PlannedChange("terminate", Role.FACTORY, len(surplus), offer(config, Role.FACTORY), surplus))
    return changes
