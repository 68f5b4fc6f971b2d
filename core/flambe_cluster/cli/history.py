"""``flambe-cluster history``: what the cluster's runs created and destroyed, and when, from its journal."""

from __future__ import annotations

import datetime
import json
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from ..config import load_config
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


@cli.command(short_help="Show what the cluster's runs created and destroyed, and when.")
@CONFIG
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output: the journal's entries as they are.")
def history(config: str, as_json: bool) -> int:
    """Show what the cluster's runs created and destroyed, and when, from the journal of its state folder.

    Reads only this machine's record (no host and no cloud is asked).  The
    last line counts what is still recorded as existing: what `down` would
    destroy.
    """
    parsed = load_config(config, validate=False)
    state = ClusterState.for_cluster(parsed.name, parsed.state_dir)
    entries = state.journal.entries()
    if as_json:
        out.print_json(json.dumps(entries))
        return EXIT_OK
    if not entries:
        out.print(f"cluster {parsed.name!r}: nothing recorded (no run of `up` created anything here)", markup=False)
        return EXIT_OK
    table = Table("when", "run", "event", "what")
    table.columns[-1].overflow = "fold"
    for entry in entries:
        table.add_row(*map(escape, (when(entry), entry.get("run") or "-", entry["event"], summary(entry))))
    out.print(table)
    outstanding = state.journal.outstanding()
    out.print(f"{len(outstanding)} recorded as still existing"
              + (f": {', '.join(f'{r.kind} {r.resource_id}' for r in outstanding)}" if outstanding else ""), markup=False)
    return EXIT_OK
