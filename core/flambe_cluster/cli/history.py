"""Views of a cluster's record (its journal), no host or cloud asked: ``history`` (what each run created and
destroyed, and when) and ``cost`` (what its machines have cost so far)."""

from __future__ import annotations

import datetime
import json
from typing import Any

import attrs
import click
from rich.markup import escape
from rich.table import Table

from .. import costs
from ..config import read_config_file
from ..converters import to_optional_path, to_optional_usd, to_safe_name
from ..errors import ClusterConfigurationError
from ..state import ClusterState
from .common import CONFIG, EXIT_OK, cli, out

#: Details of a journal entry worth a column's room, in this order (others are in ``--json``).
_SHOWN = ("role", "index", "count", "instance_ids", "instance_id", "region", "zone", "refused")


def summary(entry: dict[str, Any]) -> str:
    """One line of what a journal entry says: the resource, then its notable details."""
    details = entry.get("details") or {}
    parts = [f"{entry['kind']} {entry['id']}" if entry["event"] != "down" else "the cluster is taken down"]
    for key in _SHOWN:
        value = details.get(key)
        if value in (None, [], ""):
            continue
        parts.append(f"{key}={','.join(map(str, value)) if isinstance(value, list) else value}")
    return " ".join(parts)


def when(entry: dict[str, Any]) -> str:
    """The entry's time in this machine's zone, to the second ("?" for entries written before times were kept)."""
    stamp = entry.get("time")
    if not isinstance(stamp, (int, float)):
        return "?"
    return datetime.datetime.fromtimestamp(stamp).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


@attrs.frozen
class Record:
    """What the record views need of a cluster file: its name, its state folder and its ``max_cost``."""

    name: str
    state: ClusterState
    max_cost: float | None


def recorded(config: str) -> Record:
    """The cluster a file names, read from the file alone: no provider is loaded (so nothing is created, not
    even a provider's default key), no host or cloud asked."""
    raw = read_config_file(config)
    problems: list[str] = []
    fields: dict[str, Any] = {}
    for field, convert in (("name", to_safe_name), ("state_dir", to_optional_path), ("max_cost", to_optional_usd)):
        try:
            fields[field] = convert(raw.get(field))
        except ValueError as exc:
            problems.append(f"{field}: {exc}")
    if problems:
        raise ClusterConfigurationError(problems, config)
    return Record(fields["name"], ClusterState.for_cluster(fields["name"], fields["state_dir"]), fields["max_cost"])


@cli.command(short_help="Show what the cluster's runs created and destroyed, and when.")
@CONFIG
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output: the journal's entries as they are.")
def history(config: str, as_json: bool) -> int:
    """Show what the cluster's runs created and destroyed, and when, from the journal of its state folder.

    Reads only this machine's record (no host and no cloud is asked).  The
    last line counts what is still recorded as existing: what `down` would
    destroy.
    """
    record = recorded(config)
    entries = record.state.journal.entries()
    if as_json:
        out.print_json(json.dumps(entries))
        return EXIT_OK
    if not entries:
        out.print(f"cluster {record.name!r}: nothing recorded (no run of `up` created anything here)", markup=False)
        return EXIT_OK
    table = Table("when", "run", "event", "what")
    table.columns[-1].overflow = "fold"
    for entry in entries:
        table.add_row(*map(escape, (when(entry), entry.get("run") or "-", entry["event"], summary(entry))))
    out.print(table)
    outstanding = record.state.journal.outstanding()
    out.print(f"{len(outstanding)} recorded as still existing"
              + (f": {', '.join(f'{r.kind} {r.resource_id}' for r in outstanding)}" if outstanding else ""),
              markup=False)
    return EXIT_OK


@cli.command(short_help="Show what the cluster's machines have cost so far, run by run.")
@CONFIG
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def cost(config: str, as_json: bool) -> int:
    """Show what the cluster's machines have cost so far, run by run, and what it costs per hour now.

    Computed from the journal alone: each machine's price per hour, as the
    provider recorded it when the machine was created, times how long the
    record says it lived (until now for those still recorded).  A machine
    that ended without flambe-cluster seeing it counts until a later `up`
    or `down` records it gone.  Hours of unknown price are counted apart.
    """
    record = recorded(config)
    runs = costs.run_costs(record.state.journal.entries())
    total = sum(r.usd for r in runs)
    now = sum(r.usd_per_hour_now for r in runs)
    if as_json:
        out.print_json(json.dumps({"runs": [attrs.asdict(r) for r in runs], "usd": total, "usd_per_hour_now": now,
                                   "running": sum(r.running for r in runs), "max_cost": record.max_cost}))
        return EXIT_OK
    if not runs:
        out.print(f"cluster {record.name!r}: no machine recorded (no run of `up` created one here)", markup=False)
        return EXIT_OK
    table = Table("run", "started", "machines now", "machine-hours", "USD")
    for run in runs:
        table.add_row(*map(escape, (run.run, when({"time": run.started}), str(run.running),
                                    f"{run.machine_hours:.3f}", f"{run.usd:.4f}")))
    out.print(table)
    unpriced = sum(r.unpriced_hours for r in runs)
    out.print(f"total ${total:.4f} so far; ${now:.4f} per hour now "
              f"({sum(r.running for r in runs)} machines recorded running)"
              + (f"; max_cost ${record.max_cost:.2f}" if record.max_cost is not None else "")
              + (f"; {unpriced:.3f} machine-hours of unknown price not included" if unpriced else ""), markup=False)
    return EXIT_OK
