"""The commands of a cluster's life: ``providers``, ``up``, ``status``, ``down``."""

from __future__ import annotations

import json
import sys
import time
from typing import Optional

import click
from rich.markup import escape
from rich.table import Table

from .. import environment, jobs, plugins, raycluster
from ..cluster import Cluster
from ..errors import FlambeClusterError, RayHeadSlowError, UsageError
from ..records import Instance
from .common import CONFIG, EXIT_FAILED, EXIT_OK, LOCK_WAIT, cli, close, err, load, note, opened, out

#: Seconds between two looks of `up --watch` given without a value.
WATCH_INTERVAL = 30.0


@cli.command()
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


@cli.command()
@CONFIG
@click.option("--force", is_flag=True, help="Stop a running job.")
@LOCK_WAIT
@click.option("--watch", type=click.FloatRange(min=0.5), is_flag=False, flag_value=WATCH_INTERVAL, default=None,
              metavar="[SECONDS]", help=f"Then keep the cluster whole, looking every SECONDS (default {WATCH_INTERVAL:g}): "
                                        "replace lost factories and join them to Ray, until Ctrl-C.")
@click.option("--lost-after", type=click.FloatRange(min=0), default=None, metavar="SECONDS",
              help="With --watch: a factory that does not answer this long is lost (default: connect_timeout).")
@click.option("-y", "--yes", is_flag=True, help="Do not ask before removing factories while a job runs.")
def up(config: str, force: bool, lock_wait: float, watch: Optional[float], lost_after: Optional[float],
       yes: bool) -> int:
    """Create or reuse the cluster's hosts, distribute keys and run the setup commands (idempotent).

    A failure or an interrupt rolls back what this run created (once, under
    the cluster's lock) before the command exits.  The cluster's state
    folder remembers this file, for `flambe-cluster list`.  Lost factories
    (terminated, interrupted) are replaced.  With `--watch` it then looks
    at the cluster every SECONDS and replaces a factory lost while a job
    runs (one line per action); Ctrl-C stops watching, leaves the cluster as
    it is and exits 0 (during a repair it undoes that repair and exits 130).
    On a terminal it asks before removing factories while a job runs
    (`-y` skips the question; without a terminal it does not ask).
    """
    cluster = load(config, validate=True)
    cluster.state.remember_config(config)
    asks = not yes and sys.stdin.isatty()
    began = time.time()  # a `down` from another shell after this ends the watch (it waited for this up's lock)
    try:
        cluster.up(force=force, lock_wait=lock_wait,
                   confirm=(lambda question: click.confirm(question, default=False, err=True)) if asks else None)
    finally:
        close(cluster)
    note.print(f"cluster {cluster.name!r} is up: 1 orchestrator, {len(cluster.factories)} factories "
               f"({time.monotonic() - cluster.on_step.started:.1f}s)")
    if not note.quiet:
        print_hosts(cluster)
    if watch is not None:
        try:
            cluster.watch(watch, lost_after, since=began)
        finally:
            cluster.close()
    return EXIT_OK


def print_hosts(cluster: Cluster, reachable: Optional[dict] = None) -> None:
    """The hosts' table; on a narrow terminal every cell is folded onto more lines, never cut."""
    table = Table()
    for column in ("role", "name", "address", "private address", *(["ssh"] if reachable is not None else [])):
        table.add_column(column, overflow="fold")
    for instance in cluster.all_hosts():
        row = [instance.role.value, instance.name, str(instance.endpoint), str(instance.private)]
        if reachable is not None:
            row.append(reachable[instance])
        table.add_row(*map(escape, row))
    out.print(table)


def probe(cluster: Cluster, instance: Instance, running: dict) -> str:
    """``"ok"`` when ``instance`` runs a command over SSH, else ``"error: ..."``; records in ``running`` whether
    this cluster's Ray node runs there (None: the host could not tell)."""
    try:
        running[instance] = environment.runs_ray_node(cluster.session, instance, timeout=10)
        return "ok"
    except FlambeClusterError as exc:
        return f"error: {exc}"


def probe_all(cluster: Cluster) -> tuple[dict, dict]:
    """``({instance: probe}, {instance: runs its Ray node})`` for every host of a found cluster, each connection
    given at most 10 s (see :func:`probe`)."""
    running: dict = {}
    with cluster.pool.connect_within(10.0):
        return cluster.pool.map(cluster.all_hosts(), lambda h: probe(cluster, h, running)), running


def ray_and_job(cluster: Cluster, running: dict) -> dict:
    """Ray nodes and job state, when the orchestrator has the cluster's environment.

    A worker counts as alive only when the head lists it alive and its node
    runs on the factory (``running``, from :func:`probe_all`); where the two
    disagree, ``ray["disagreements"]`` says so, one line per factory.
    """
    orchestrator = cluster.session.require_orchestrator()
    if not cluster.session.has_environment([orchestrator])[orchestrator]:
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
    return {"ray": ray, "job": {"state": job.state, "exit_code": job.exit_code},
            "services": cluster.orchestrator.service_addresses()}


@cli.command()
@CONFIG
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(config: str, as_json: bool) -> int:
    """Show the hosts (roles, addresses, SSH), the Ray nodes alive and the job.

    Exits 1 when the cluster exists but a host does not answer or Ray is
    not fully up.  A worker counts as alive only when the Ray head lists it
    alive and its node runs on the factory (checked over SSH); where the
    two disagree (the head notices a node that went away only seconds
    later), a line says which factory and which account.
    """
    with opened(config, must_exist=False) as cluster:
        exists = cluster.find_instances()
        hosts = cluster.all_hosts() if exists else []
        reachable, running = probe_all(cluster) if hosts else ({}, {})
        reached = hosts and reachable[cluster.session.orchestrator] == "ok"
        extra = ray_and_job(cluster, running) if reached else {"ray": None, "job": None, "services": {}}
        if as_json:
            payload = {
                "name": cluster.name,
                "provider": cluster.config.provider,
                "exists": exists,
                "hosts": [
                    {"name": h.name, "role": h.role.value, "address": str(h.endpoint), "public": str(h.public),
                     "private": str(h.private), "instance_id": h.instance_id, "ssh": reachable[h]}
                    for h in hosts
                ],
                **extra,
            }
            out.print_json(json.dumps(payload))
        elif not exists:
            out.print(f"cluster {cluster.name!r} does not exist")
        else:
            print_hosts(cluster, reachable)
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
        ray_up = extra["ray"] is not None and extra["ray"]["alive_workers"] == cluster.factories_num
        healthy = not exists or (ray_up and all(v == "ok" for v in reachable.values()))
        return EXIT_OK if healthy else EXIT_FAILED


@cli.command()
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
