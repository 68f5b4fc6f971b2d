"""The commands of a cluster's life: ``providers``, ``up``, ``status``, ``down``."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from .. import costs, environment, hostfiles, jobs, plugins, raycluster, setupsteps
from ..cluster import Cluster
from ..errors import FlambeClusterError, RayHeadSlowError, UsageError
from ..progress import Display
from ..records import Instance, PlannedChange
from .common import CONFIG, EXIT_FAILED, EXIT_OK, LOCK_WAIT, cli, close, err, load, never_brought_up, note, opened, out

#: Seconds between two looks of `up --watch` given without a value.
WATCH_INTERVAL = 30.0


@cli.command(short_help="List the installed providers and whether each is ready.")
def providers() -> int:
    """List the installed providers and whether each is ready (nothing is imported)."""
    table = Table("provider", "distribution", "version", "module", "ready")
    hints = []
    for info in plugins.installed_providers():
        missing = plugins.missing_requirements(info)
        if missing:  # the command to copy goes below the table, whole: a table cell would cut it
            hints.append(f"{info.name}: {plugins.install_hint(info, missing)}")
        table.add_row(*map(escape, (info.name, info.distribution, info.version, info.target,
                                    "no (see below)" if missing else "yes")))
    out.print(table)
    for hint in hints:
        out.print(hint, markup=False, soft_wrap=True, overflow="ignore", crop=False)
    return EXIT_OK


@cli.command(short_help="Create or reuse the hosts, prepare the software and start Ray.")
@CONFIG
@click.option("--force", is_flag=True, help="Stop a running job.")
@LOCK_WAIT
@click.option("--watch", type=click.FloatRange(min=0.5), is_flag=False, flag_value=WATCH_INTERVAL, default=None,
              metavar="[SECONDS]",
              help=f"Then keep the cluster whole, looking every SECONDS (default {WATCH_INTERVAL:g}): "
                   "replace lost factories and join them to Ray, until Ctrl-C.")
@click.option("--lost-after", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="With --watch: a factory that does not answer this long is lost (default: connect_timeout).")
@click.option("-y", "--yes", is_flag=True,
              help="Do not ask before launching or terminating paid machines, nor before removing factories while a "
                   "job runs.")
@click.option("--dry-run", is_flag=True, help="Print what up would launch and terminate, with prices; change nothing.")
@click.option("--rerun-setup", is_flag=True,
              help="Run every setup command on every host again (by default a host runs only the commands it has "
                   "not completed as they read now).")
def up(config: str, force: bool, lock_wait: float, watch: float | None, lost_after: float | None,
       yes: bool, dry_run: bool, rerun_setup: bool) -> int:
    """Create or reuse the cluster's hosts, distribute keys, run the setup commands, install the software and
    start Ray (idempotent).  Each host runs only the setup commands it has not completed as they read now
    (a changed command runs again, with those after it; `--rerun-setup` runs them all).

    A failure or an interrupt rolls back what this run created (once, under
    the cluster's lock) before the command exits.  The cluster's state
    folder remembers this file, for `flambe-cluster list`.  Lost factories
    (terminated, interrupted) are replaced.  With `--watch` it then looks
    at the cluster every SECONDS and replaces a factory lost while a job
    runs (one line per action); Ctrl-C stops watching, leaves the cluster as
    it is and exits 0 (during a repair it undoes that repair and exits 130).
    Before it launches or terminates paid machines (a cloud provider), it
    prints one line per change with the price per hour; on a terminal it
    asks first, as it does before removing factories while a job runs
    (`-y` skips the questions; without a terminal it does not ask).
    `--dry-run` prints the plan and changes nothing.  With `max_cost` in
    the file, it refuses once the cluster's recorded cost reaches it.
    """
    cluster = load(config, validate=True)
    asks = not yes and sys.stdin.isatty()
    if dry_run:
        try:
            cluster.refuse_past_max_cost()
            print_plan(cluster, cluster.plan(), dry_run=True)
        finally:
            close(cluster)
        return EXIT_OK
    cluster.state.remember_config(config)
    began = time.time()  # a `down` from another shell after this ends the watch (it waited for this up's lock)
    try:
        cluster.up(force=force, lock_wait=lock_wait, rerun_setup=rerun_setup,
                   confirm=(lambda question: click.confirm(question, default=False, err=True)) if asks else None,
                   approve=lambda changes: print_plan(cluster, changes) and (
                       not asks or click.confirm("Go ahead?", default=False, err=True)))
    finally:
        close(cluster)
    display = cluster.on_step
    assert isinstance(display, Display)  # `load` made it
    note.print(f"cluster {cluster.name!r} is up: 1 orchestrator, {len(cluster.factories)} factories "
               f"({time.monotonic() - display.started:.1f}s)")
    if not note.quiet:
        print_hosts(cluster, bought=costs.bought(cluster.state.journal.entries()))
    if watch is not None:
        try:
            cluster.watch(watch, lost_after, since=began)
        finally:
            cluster.close()
    return EXIT_OK


def print_plan(cluster: Cluster, changes: list[PlannedChange], dry_run: bool = False) -> bool:
    """Print the changes to paid machines ``up`` will (``dry_run``: would) make, one line each with its price per
    hour, and their sum; returns True.  Without changes only ``--dry-run`` says so."""
    if not changes:
        if dry_run:
            out.print(f"up would launch and terminate no paid machine of cluster {cluster.name!r}", markup=False)
        return True
    hourly = [c.offer.usd_per_hour * c.count * (1 if c.action == "launch" else -1)
              for c in changes if c.offer and c.offer.usd_per_hour is not None]
    out.print(f"up {'would change' if dry_run else 'will change'} the paid machines of cluster {cluster.name!r}:",
              markup=False)
    for change in changes:
        out.print(f"  {change.line()}", markup=False, soft_wrap=True)
    if hourly:
        out.print(f"  {sum(hourly):+.4g} USD per hour in all"
                  + ("" if len(hourly) == len(changes) else " (for the changes of known price)"), markup=False)
    return True


def print_hosts(cluster: Cluster, reachable: dict[Instance, str] | None = None,
                bought: dict[str, costs.Bought] | None = None) -> None:
    """The hosts' table; on a narrow terminal every cell is folded onto more lines, never cut.  Hosts ``bought``
    names (:func:`flambe_cluster.costs.bought`: cloud instances) show their type, market, age and price per hour."""
    bought = bought or {}
    priced = any(h.instance_id in bought for h in cluster.all_hosts())
    table = Table()
    for column in ("role", "name", "address", "private address", *(["ssh"] if reachable is not None else []),
                   *(["type", "market", "age", "USD/h"] if priced else [])):
        table.add_column(column, overflow="fold")
    for instance in cluster.all_hosts():
        row = [instance.role.value, instance.name, str(instance.endpoint), str(instance.private)]
        if reachable is not None:
            row.append(reachable[instance])
        if priced:
            machine = bought.get(instance.instance_id or "")
            row += ([machine.offer.instance_type, machine.offer.market, machine.age(),
                     "?" if machine.offer.usd_per_hour is None else f"{machine.offer.usd_per_hour:.4g}"]
                    if machine else ["-"] * 4)
        table.add_row(*map(escape, row))
    out.print(table)


def bought_json(machine: costs.Bought | None) -> dict[str, Any] | None:
    """What the journal records of a host bought in a cloud (type, market, USD/h, since), for ``--json``."""
    return None if machine is None else {**machine.offer.details(), "since": machine.since}


def probe(cluster: Cluster, instance: Instance, running: dict[Instance, bool | None]) -> str:
    """``"ok"`` when ``instance`` runs a command over SSH, else ``"error: ..."``; records in ``running`` whether
    this cluster's Ray node runs there (None: the host could not tell)."""
    try:
        running[instance] = environment.runs_ray_node(cluster.session, instance, timeout=10)
        return "ok"
    except FlambeClusterError as exc:
        return f"error: {exc}"


def probe_all(cluster: Cluster) -> tuple[dict[Instance, str], dict[Instance, bool | None]]:
    """``({instance: probe}, {instance: runs its Ray node})`` for every host of a found cluster, each connection
    given at most 10 s (see :func:`probe`)."""
    running: dict[Instance, bool | None] = {}
    with cluster.pool.connect_within(10.0):
        return cluster.pool.map(cluster.all_hosts(), lambda h: probe(cluster, h, running)), running


def ray_and_job(cluster: Cluster, running: dict[Instance, bool | None]) -> dict[str, Any]:
    """Ray nodes and job state, when the orchestrator has the cluster's environment.

    A worker counts as alive only when the head lists it alive and its node
    runs on the factory (``running``, from :func:`probe_all`); where the two
    disagree, ``ray["disagreements"]`` says so, one line per factory.
    """
    orchestrator = cluster.session.require_orchestrator()
    if not hostfiles.has_environment(cluster.session, [orchestrator])[orchestrator]:
        return {"ray": None, "job": {"state": "none", "exit_code": None}, "services": {}}
    slow = None
    try:
        known = raycluster.nodes(cluster.session)
    except RayHeadSlowError as exc:  # alive but not answering: said, counted as no worker alive
        known, slow = [], str(exc)
    job = jobs.status(cluster.session)
    ray = None
    if known is not None:
        confirmed, disagreements = raycluster.confirmed_workers(cluster.session, known, running)
        ray = {"head": cluster.session.ray_head_address, "alive_workers": len(confirmed),
               "disagreements": [slow] if slow else disagreements, "nodes": known}
    handle = cluster.orchestrator
    assert handle is not None  # required above
    return {"ray": ray, "job": {"state": job.state, "exit_code": job.exit_code},
            "services": handle.service_addresses()}


@cli.command(short_help="Show the hosts, the Ray nodes alive and the job.")
@CONFIG
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(config: str, as_json: bool) -> int:
    """Show the hosts (roles, addresses, SSH), the Ray nodes alive and the job.

    Exits 1 when the cluster exists but a host does not answer or Ray is
    not fully up.  A worker counts as alive only when the Ray head lists it
    alive and its node runs on the factory (checked over SSH); where the
    two disagree (the head notices a node that went away only seconds
    later), a line says which factory and which account.  A cluster never
    brought up from this state folder is said to not exist (exit 0), and
    nothing is created for it.
    """
    unknown = never_brought_up(config)
    if unknown is not None:  # nothing loaded, nothing connected: no state folder made for it
        if as_json:
            out.print_json(json.dumps({"name": unknown.name, "provider": unknown.provider, "exists": False,
                                       "hosts": [], "ray": None, "job": None, "services": {}, "setup": None}))
        else:
            out.print(str(unknown), markup=False)
        return EXIT_OK
    with opened(config, must_exist=False) as cluster:
        exists = cluster.find_instances()
        hosts = cluster.all_hosts() if exists else []
        reachable, running = probe_all(cluster) if hosts else ({}, {})
        reached = hosts and reachable[cluster.session.require_orchestrator()] == "ok"  # set: `hosts` has it first
        extra = ray_and_job(cluster, running) if reached else {"ray": None, "job": None, "services": {}}
        setup_done = setup_of(cluster, [h for h in hosts if reachable[h] == "ok"])
        if as_json:
            bought = costs.bought(cluster.state.journal.entries())
            payload = {
                "name": cluster.name,
                "provider": cluster.config.provider,
                "exists": exists,
                "hosts": [
                    {"name": h.name, "role": h.role.value, "address": str(h.endpoint), "public": str(h.public),
                     "private": str(h.private), "instance_id": h.instance_id, "ssh": reachable[h],
                     "bought": bought_json(bought.get(h.instance_id or ""))}
                    for h in hosts
                ],
                **extra,
                "setup": {"commands": len(cluster.setup_cmds),
                          "done": {h.name: setup_done.get(h) for h in hosts}} if exists else None,
            }
            out.print_json(json.dumps(payload))
        elif not exists:
            out.print(f"cluster {cluster.name!r} does not exist")
        else:
            print_hosts(cluster, reachable, costs.bought(cluster.state.journal.entries()))
            ray = extra["ray"]
            if ray is None:
                out.print("ray: not running")
            else:
                out.print(f"ray: head {ray['head']}, {ray['alive_workers']}/{cluster.factories_num} workers alive")
                for line in ray["disagreements"]:
                    out.print(f"ray: {escape(line)}")
            if extra["job"] is not None:
                out.print(f"job: {jobs.JobStatus(extra['job']['state'], extra['job']['exit_code']).describe()}")
            for name, address in extra["services"].items():
                out.print(f"{name.replace('_', ' ')}: {address}")
            print_setup(len(cluster.setup_cmds), {h: setup_done.get(h) for h in hosts})
        ray_up = extra["ray"] is not None and extra["ray"]["alive_workers"] == cluster.factories_num
        healthy = not exists or (ray_up and all(v == "ok" for v in reachable.values()))
        return EXIT_OK if healthy else EXIT_FAILED


def setup_of(cluster: Cluster, answering: list[Instance]) -> dict[Instance, int]:
    """How many setup commands each of the ``answering`` hosts has completed as they read now (a host that does
    not show its record within :data:`~flambe_cluster.setupsteps.LOOK_TIMEOUT` is left out: unknown)."""
    if not cluster.setup_cmds or not answering:
        return {}
    try:
        records = setupsteps.recorded(cluster.session, answering, timeout=setupsteps.LOOK_TIMEOUT)
    except FlambeClusterError:  # a host that answered the probe went away since: unknown, as for the others
        return {}
    return {h: setupsteps.completed(r, cluster.setup_cmds) for h, r in records.items() if r is not None}


def print_setup(commands: int, done: dict[Instance, int | None]) -> None:
    """One line on the setup commands (:mod:`flambe_cluster.setupsteps`): done on every host, or the hosts
    behind (with how many they have done) and those whose record is unknown."""
    if not commands:
        return
    behind = [f"{h.name} ({n}/{commands} done)" for h, n in done.items() if n is not None and n < commands]
    unknown = [h.name for h, n in done.items() if n is None]
    parts = ([f"behind on {', '.join(behind)}; `up` runs the rest there"] if behind else []) + (
        [f"unknown on {', '.join(unknown)} (not answering)"] if unknown else [])
    out.print("setup: " + ("; ".join(parts) if parts else f"all {commands} commands done on every host"),
              markup=False)


@cli.command(short_help="Stop the job and Ray, then release the machines.")
@CONFIG
@click.option("-y", "--yes", is_flag=True, help="Do not ask before destroying machines.")
@LOCK_WAIT
def down(config: str, yes: bool, lock_wait: float) -> int:
    """Stop the job and Ray on every host, then release the machines the provider manages.

    When the provider destroys machines (cloud instances, local hosts: those
    with an instance id) and the input is a terminal, asks first; `-y`
    skips the question.  Answering no does nothing and exits 1.  Without a
    terminal (scripts, CI) it does not ask.
    """
    with opened(config, must_exist=False) as cluster:
        if not yes and sys.stdin.isatty() and not _confirm_down(cluster):
            err.print(f"cluster {cluster.name!r} was left as it is")
            return EXIT_FAILED
        if not cluster.down(wait=lock_wait):
            note.print(f"cluster {cluster.name!r} does not exist; nothing to do")
        else:
            note.print(f"cluster {cluster.name!r} is down")
        return EXIT_OK


def _confirm_down(cluster: Cluster) -> bool:
    """Ask whether to destroy the machines ``down`` would destroy; True at once when it destroys none."""
    try:
        exists = cluster.find_instances()
    except UsageError:  # another place (see Cluster.down): said as it is, nothing asked
        raise
    except FlambeClusterError as incomplete:
        question = f"cluster {cluster.name!r} is incomplete ({incomplete}).\nDestroy what is left of it?"
    else:
        doomed = [h.name for h in cluster.all_hosts() if h.instance_id is not None] if exists else []
        if not doomed:
            return True
        question = (f"Destroy the {len(doomed)} machines of cluster {cluster.name!r} "
                    f"({cluster.config.provider}: {', '.join(doomed)})?")
    return click.confirm(question, default=False, err=True)
