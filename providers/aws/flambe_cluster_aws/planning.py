"""What ``up`` would launch and terminate on EC2 now, with prices (``flambe_cluster_plan``); looks only."""

from __future__ import annotations

from flambe_cluster.provider import PlannedChange, Role

from . import api, pricing
from . import instances as fleet


def plan(config) -> list[PlannedChange]:
    """The launches ``load_instances`` would make (a missing orchestrator, missing or lost factories) and the
    factories beyond ``factories_num`` that ``up`` may terminate (the core keeps those it recorded as members)."""
    with api.step("finding the cluster's instances"):
        machines = fleet.describe(config.options.region_name, fleet.cluster_filters(config))
    live = {m.instance_id for m in machines if m.state in fleet.LIVE}
    selection = fleet.select(machines, config.factories_num, live)
    changes = []
    if selection.orchestrator is None:
        changes.append(PlannedChange("launch", Role.ORCHESTRATOR, 1, pricing.offer(config, "orchestrator")))
    missing = config.factories_num - len(selection.factories)
    if missing > 0:
        changes.append(PlannedChange("launch", Role.FACTORY, missing, pricing.offer(config, "factory")))
    surplus = [m.instance_id for m in selection.surplus if m.role == Role.FACTORY.value]
    if surplus:
        changes.append(PlannedChange("terminate", Role.FACTORY, len(surplus), pricing.offer(config, "factory"),
                                     surplus))
    return changes
