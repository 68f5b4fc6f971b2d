"""``flambe-cluster list``: every cluster of the state folder, and a provider's sweep for clusters none knows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from .. import costs, jobs, plugins
from ..cluster import Cluster
from ..errors import FlambeClusterError, UsageError
from ..providerhooks import ProviderHooks
from ..records import TaggedCluster
from ..state import ClusterState
from .common import EXIT_OK, cli, out
from .lifecycle import probe_all, ray_and_job


@cli.command(name="list", short_help="List the state folder's clusters: hosts, Ray and job.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--provider", metavar="NAME", help="Sweep this provider's cloud for clusters no state folder knows.")
@click.option("--region", metavar="REGION", help="With --provider: where to look (default: the provider's own).")
def list_(as_json: bool, provider: str | None, region: str | None) -> int:
    """List every cluster of the state folder: provider, hosts, Ray, job, and cost (per hour now, so far).

    Each cluster is read from the configuration file its last `up` used (a
    cluster that sets `state_dir` keeps its state elsewhere and is not
    listed).  With --provider, lists instead the clusters whose machines
    carry flambe-cluster's tags in that provider's cloud and that no state
    folder knows (leaked, or their state folder was lost), each with the
    command that removes them.
    """
    if provider is None:
        if region is not None:
            raise UsageError("--region only applies with --provider NAME")
        clusters = [describe(state) for state in ClusterState.every_cluster()]
        if as_json:
            out.print_json(json.dumps({"clusters": clusters}))
        else:
            _print_clusters(clusters)
        return EXIT_OK
    untracked = sweep(provider, region)
    if as_json:
        out.print_json(json.dumps({"provider": provider, "untracked": [
            {"name": c.name, "place": c.place, "machines": list(c.machines), "remove": c.remove} for c in untracked]}))
    elif not untracked:
        out.print(f"no {provider} machines of clusters unknown to this state folder")
    else:
        for cluster in untracked:
            where = ", ".join(f"{k} {v}" for k, v in sorted(cluster.place.items()))
            out.print(f"cluster {cluster.name!r}{f' ({where})' if where else ''}: {', '.join(cluster.machines)}\n"
                      f"  remove with: {cluster.remove}", markup=False)
    return EXIT_OK


def sweep(provider: str, region: str | None) -> list[TaggedCluster]:
    """The provider's tagged clusters whose name no state folder of the state home holds."""
    found = ProviderHooks(plugins.make_plugin_manager(provider)).sweep({"region": region} if region else {})
    if found is None:
        raise UsageError(f"provider {provider!r} cannot look for machines by tags (it does not implement "
                         "flambe_cluster_sweep); its machines are the ones you brought")
    known = list(_known_places())
    return [cluster for cluster in found if not any(is_known(cluster, name, place) for name, place in known)]


def is_known(cluster: TaggedCluster, name: str, place: dict[str, str] | None) -> bool:
    """Whether a swept cluster is the state folder's cluster ``name`` recorded at ``place``: the same name, and
    each value of its place the same, unless the recorded one is unknown (None, or in parentheses: left to the
    environment, such as GCP's "(the credentials' project)"). In doubt a cluster is known: never listed as a leak."""
    def same(key: str, value: str) -> bool:
        recorded = (place or {}).get(key)
        return recorded is None or recorded == value or (recorded.startswith("(") and recorded.endswith(")"))
    return name == cluster.name and all(same(k, v) for k, v in cluster.place.items())


def _known_places() -> Iterator[tuple[str, dict[str, str] | None]]:
    """(name, place) of every cluster of the state home: the place recorded by its `up`, else the one its
    remembered file names, else None (known by name alone)."""
    for state in ClusterState.every_cluster():
        place = state.recorded_place()
        if place is None and state.config_path is not None:
            try:
                cluster = Cluster.from_yaml(state.config_path, validate=False)
            except FlambeClusterError:
                cluster = None
            if cluster is not None:
                try:
                    place = cluster.place()
                except FlambeClusterError:
                    place = None
                finally:
                    cluster.close()
        yield state.root.name, place


def describe(state: ClusterState) -> dict[str, Any]:
    """One cluster of the state folder: its file, provider, hosts (with SSH), Ray and job; ``error`` says what is
    unknown."""
    path = state.config_path
    runs = costs.run_costs(state.journal.entries())
    entry: dict[str, Any] = {"name": state.root.name, "config": str(path) if path else None, "provider": None,
                             "exists": None, "hosts": [], "ray": None, "job": None, "error": None,
                             "usd": sum(r.usd for r in runs),
                             "usd_per_hour_now": sum(r.usd_per_hour_now for r in runs)}
    if path is None:
        entry["error"] = "no configuration file remembered; run `flambe-cluster up CONFIG` once to record it"
        return entry
    try:
        cluster = Cluster.from_yaml(path, validate=False)
    except FlambeClusterError as exc:
        entry["error"] = str(exc)
        return entry
    entry["provider"] = cluster.config.provider
    try:
        entry["exists"] = cluster.find_instances()
        if entry["exists"]:
            reachable, running = probe_all(cluster)
            entry["hosts"] = [{"name": h.name, "role": h.role.value, "address": str(h.endpoint),
                               "instance_id": h.instance_id, "ssh": reachable[h]} for h in cluster.all_hosts()]
            if reachable[cluster.session.require_orchestrator()] == "ok":  # loaded: `all_hosts` above has it
                extra = ray_and_job(cluster, running)
                ray = extra["ray"]
                entry["ray"] = None if ray is None else {"head": ray["head"], "alive_workers": ray["alive_workers"]}
                entry["job"] = extra["job"]
    except FlambeClusterError as exc:
        entry["error"] = str(exc)
    finally:
        cluster.close()
    return entry


def _print_clusters(clusters: list[dict[str, Any]]) -> None:
    if not clusters:
        out.print("no clusters in this state folder")
        return
    table = Table("name", "provider", "hosts", "ray", "job", "USD/h", "USD so far", "note")
    table.columns[0].overflow = table.columns[-1].overflow = "fold"
    for c in clusters:
        answering = sum(h["ssh"] == "ok" for h in c["hosts"])
        hosts = f"{answering}/{len(c['hosts'])} answer" if c["hosts"] else ("none" if c["exists"] is False else "-")
        ray = f"{c['ray']['alive_workers']} workers" if c["ray"] else "-"
        job = jobs.JobStatus(c["job"]["state"], c["job"]["exit_code"]).describe() if c["job"] else "-"
        spent = (f"{c['usd_per_hour_now']:.4g}", f"{c['usd']:.2f}") if c["usd"] or c["usd_per_hour_now"] else ("-", "-")
        table.add_row(*map(escape, (c["name"], c["provider"] or "?", hosts, ray, job, *spent, c["error"] or "")))
    out.print(table)
