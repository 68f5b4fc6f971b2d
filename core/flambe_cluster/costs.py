"""What a cluster has cost, from its journal alone: each machine's recorded offer × how long it was recorded alive.

A provider that creates machines records, in the journal entry of each
launch, the machine's :class:`~flambe_cluster.records.Offer` (type, market,
USD per hour) and how many machines the entry stands for
(``instance_ids``, else ``count``, else one).  A later entry for the same
resource (more or fewer instances) starts a new span; ``destroyed`` ends
it; a machine still recorded alive is counted until now.  The figure is
what the record says: a machine that ended without flambe-cluster seeing it
(an idle alarm, a spot interruption) counts until a later ``up`` or
``down`` records it gone, and a stopped instance counts as running.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from attrs import define

from .records import MARKETS, Offer

__all__ = ["Bought", "RunCost", "bought", "listed_price", "offer_of", "run_costs", "since_last_down", "total_usd",
           "warn_never_idle"]

logger = logging.getLogger(__name__)
_warned_never_idle: set[str] = set()


def listed_price(prices: dict[str, float], instance_type: str, market: str) -> float | None:
    """The ``prices:`` entry of ``instance_type`` on ``market`` (``"TYPE spot"``; ``"TYPE"`` or
    ``"TYPE on-demand"``)."""
    if market == "spot":
        return prices.get(f"{instance_type} spot")
    return prices.get(f"{instance_type} on-demand", prices.get(instance_type))


def warn_never_idle(cluster: str, orchestrator: Offer) -> None:
    """Warn that the cluster's orchestrator never ends itself when idle, and what that costs: for providers whose
    orchestrator idle timeout is "never" (the default, so that results on it are kept).  Once per process and
    cluster: an ``up`` says it, the repairs of its ``--watch`` do not again."""
    if cluster in _warned_never_idle:
        return
    _warned_never_idle.add(cluster)
    price = f" at ${orchestrator.usd_per_hour:.4g}/h" if orchestrator.usd_per_hour is not None else ""
    logger.warning("cluster %r: its orchestrator (%s%s) never shuts itself down when idle "
                   "(orchestrator_timeout: -1): it costs until `flambe-cluster down`; set orchestrator_timeout: "
                   "HOURS to have it end itself once idle that long", cluster, orchestrator.instance_type, price)


def offer_of(details: dict[str, Any]) -> Offer | None:
    """The offer a journal entry's details record, or None (not a machine, or recorded before offers were)."""
    if not isinstance(details.get("instance_type"), str) or details.get("market") not in MARKETS:
        return None
    price = details.get("usd_per_hour")
    return Offer(details["instance_type"], details["market"], float(price) if isinstance(price, (int, float)) else None)


def _machines(details: dict[str, Any]) -> int:
    """How many machines an entry stands for: its ``instance_ids`` once known; before (the answer not yet, or
    never, journaled) the ``count`` asked for, erring high; none when the cloud refused the launch."""
    if details.get("refused"):
        return 0
    if details.get("instance_ids"):
        return len(details["instance_ids"])
    return int(details.get("count", 1))


@define
class RunCost:
    """What the machines one run created have cost so far."""

    run: str
    started: float
    """When the run created its first machine (a :func:`time.time` value)."""
    machine_hours: float = 0.0
    usd: float = 0.0
    unpriced_hours: float = 0.0
    """Machine-hours whose price is unknown (not in ``usd``)."""
    running: int = 0
    """Machines of this run still recorded alive."""
    usd_per_hour_now: float = 0.0
    """What those cost per hour (those of unknown price not included)."""


def run_costs(entries: Iterable[dict[str, Any]], now: float | None = None) -> list[RunCost]:
    """The cost of each run that created machines, oldest first, from the journal's ``entries`` (see the module)."""
    now = time.time() if now is None else now
    runs: dict[str, RunCost] = {}
    live: dict[tuple[str | None, str | None], tuple[RunCost, float, int, Offer]] = {}  # by (kind, id)

    def close(key: tuple[str | None, str | None], until: float) -> None:
        cost, since, machines, offer = live.pop(key)
        hours = max(0.0, until - since) / 3600 * machines
        cost.machine_hours += hours
        if offer.usd_per_hour is None:
            cost.unpriced_hours += hours
        else:
            cost.usd += hours * offer.usd_per_hour

    for entry in entries:
        key, at = (entry.get("kind"), entry.get("id")), entry.get("time")
        if not isinstance(at, (int, float)):
            continue
        if entry.get("event") == "destroyed" and key in live:
            close(key, at)
        elif entry.get("event") == "created":
            offer = offer_of(entry.get("details") or {})
            if offer is None:
                continue
            if key in live:
                close(key, at)
            cost = runs.setdefault(entry["run"], RunCost(entry["run"], at))
            live[key] = (cost, at, _machines(entry["details"]), offer)
    for key, (cost, _since, machines, offer) in list(live.items()):
        cost.running += machines
        cost.usd_per_hour_now += machines * (offer.usd_per_hour or 0.0)
        close(key, now)
    return sorted(runs.values(), key=lambda c: c.started)


def total_usd(entries: Iterable[dict[str, Any]], now: float | None = None) -> float:
    """What every machine the journal records has cost so far (those of unknown price not included)."""
    return sum(c.usd for c in run_costs(entries, now))


def since_last_down(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The entries after the last ``down`` (all when there was none): the current bring-up of the cluster, which
    ``max_cost`` limits (what a ``down`` destroyed is spent and over)."""
    entries = list(entries)
    downs = [i for i, e in enumerate(entries) if e.get("event") == "down"]
    return entries[downs[-1] + 1:] if downs else entries


@define
class Bought:
    """A machine the record knows: what it is and costs (its offer) and since when it exists (a time.time value)."""

    offer: Offer
    since: float

    def age(self, now: float | None = None) -> str:
        """How long it has existed, in the largest whole unit: ``"3 d"``, ``"5 h"``, ``"12 min"``, ``"40 s"``."""
        seconds = max(0.0, (time.time() if now is None else now) - self.since)
        for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
            if seconds >= size:
                return f"{int(seconds // size)} {unit}"
        return f"{int(seconds)} s"


def bought(entries: Iterable[dict[str, Any]]) -> dict[str, Bought]:
    """Each machine still recorded alive, by instance id (a launch's ``instance_ids``, or the entry's own id):
    its offer and the time of the first record that named it."""
    machines: dict[str, Bought] = {}
    named: dict[tuple[str | None, str | None], list[str]] = {}  # each resource's instance ids, by its latest record
    for entry in entries:
        key, details = (entry.get("kind"), entry.get("id")), entry.get("details") or {}
        offer = offer_of(details) if entry.get("event") == "created" else None
        if entry.get("event") == "destroyed" or offer is not None:
            ids = details.get("instance_ids", [entry["id"]]) if offer is not None else []
            for gone in set(named.pop(key, [])) - set(ids):
                machines.pop(gone, None)
            if offer is not None and isinstance(entry.get("time"), (int, float)):
                fresh = "instance_ids" not in details  # a record of one machine, made again: a new machine
                named[key] = list(ids)
                for instance_id in ids:
                    if fresh or instance_id not in machines:
                        machines[instance_id] = Bought(offer, entry["time"])
    return machines
