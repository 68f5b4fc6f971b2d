"""The Ray cluster across the hosts: head on the orchestrator, a worker per factory.

The head listens on the orchestrator's private address with ``--num-cpus=0``
(it schedules, it does not work); each factory's worker offers the CPUs and
GPUs that factory has.  Nodes are started and stopped through
:mod:`flambe_cluster.remote.raynode`, which records each node's process group
so it is stopped by that number and a node of another cluster is refused.
The cluster is up when the head reports exactly ``factories_num`` alive
workers, one on each factory.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Sequence

from .errors import ClusterError
from .records import Instance, Resources
from .ssh import shell_join

if TYPE_CHECKING:  # pragma: no cover
    from .cluster import Cluster

MARKERS = ".flambe-cluster/ray"  # on each host; see flambe_cluster.remote.raynode
REFUSED = 3
HEAD_DOWN = 4


def helper(cluster: "Cluster", module: str, *args: str) -> str:
    """The shell line running a remote helper with the cluster's environment."""
    return f"{cluster.remote_path('env/bin/python')} -m flambe_cluster.remote.{module} {shell_join(args)}"


def head_address(cluster: "Cluster") -> str:
    return f"{cluster.orchestrator.private.host}:{cluster.config.ray_port}"


def nodes(cluster: "Cluster") -> list[dict] | None:
    """The nodes the head knows, or ``None`` when no head answers."""
    result = cluster.pool.run(cluster.orchestrator, helper(cluster, "raynode", "nodes", head_address(cluster)),
                              check=False, timeout=60)
    if result.exit_code == HEAD_DOWN:
        return None
    result.check()
    return json.loads(result.stdout)


def alive_workers(cluster: "Cluster", known: Sequence[dict] | None) -> dict[str, dict]:
    """Alive worker nodes by address."""
    return {n["ip"]: n for n in known or () if n["alive"] and not n["head"]}


def _start(cluster: "Cluster", host: Instance, ray_args: list[str]) -> None:
    line = helper(cluster, "raynode", "start", cluster.name, host.private.host, "--", *ray_args)
    result = cluster.pool.run(host, line, check=False, timeout=cluster.config.ray_timeout)
    if result.exit_code == REFUSED:
        raise ClusterError(f"{host.label}: {result.stderr.strip()}")
    if not result.ok:
        raise ClusterError(f"{host.label}: `ray start` failed (exit code {result.exit_code}):\n{result.stderr_tail()}")


def stop_node(cluster: "Cluster", host: Instance) -> None:
    """Stop this cluster's Ray node on ``host`` (nothing if none runs; refuses another cluster's)."""
    line = helper(cluster, "raynode", "stop", cluster.name, host.private.host)
    result = cluster.pool.run(host, line, check=False, timeout=60)
    if result.exit_code == REFUSED:
        raise ClusterError(f"{host.label}: {result.stderr.strip()}")
    result.check()


def launch(cluster: "Cluster", resources: dict[Instance, Resources]) -> None:
    """Start what is missing of the Ray cluster and wait until every factory's worker is alive.

    A healthy cluster is left as it is.  If the head does not answer, every
    node of this cluster is stopped and the whole cluster started again.
    """
    known = nodes(cluster)
    if known is None:
        cluster.on_step("starting the Ray head on the orchestrator (no CPUs, no GPUs)")
        shutdown(cluster)
        _start(cluster, cluster.orchestrator, [
            "--head", f"--node-ip-address={cluster.orchestrator.private.host}", f"--port={cluster.config.ray_port}",
            "--num-cpus=0", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats",
        ])
    alive = alive_workers(cluster, known)
    missing = [f for f in cluster.factories if f.private.host not in alive]
    if not missing:
        cluster.on_step(f"Ray already up: {len(alive)} workers alive")
        return
    cluster.on_step(f"starting Ray workers on {len(missing)} factories at once")
    cluster.pool.map(missing, lambda factory: _start(cluster, factory, [
        f"--address={head_address(cluster)}", f"--node-ip-address={factory.private.host}",
        f"--num-cpus={resources[factory].cpu}", f"--num-gpus={resources[factory].gpu}", "--disable-usage-stats",
    ]))
    wait_for_workers(cluster)


def wait_for_workers(cluster: "Cluster") -> None:
    """Wait until the head reports exactly one alive worker per factory; raise naming the missing ones."""
    deadline = time.monotonic() + cluster.config.ray_timeout
    while True:
        alive = alive_workers(cluster, nodes(cluster))
        missing = [f for f in cluster.factories if f.private.host not in alive]
        if not missing and len(alive) == cluster.factories_num:
            cluster.on_step(f"Ray cluster up: head on {cluster.orchestrator.private.host}, {len(alive)} workers alive")
            return
        if time.monotonic() > deadline:
            names = ", ".join(f.label for f in missing) or "none"
            extra = sorted(set(alive) - {f.private.host for f in cluster.factories})
            raise ClusterError(
                f"the Ray head reports {len(alive)} alive workers, expected {cluster.factories_num}; missing: {names}"
                + (f"; unexpected workers at {', '.join(extra)}" if extra else "")
                + f". Look at ~/{MARKERS}/<address>.log and /tmp/ray/session_latest/logs on those hosts."
            )
        time.sleep(0.5)


def shutdown(cluster: "Cluster") -> None:
    """Stop this cluster's Ray node on every host that has the environment (factories, then the head); idempotent."""
    ready = has_environment(cluster, [cluster.orchestrator, *cluster.factories])
    cluster.pool.map([f for f in cluster.factories if ready[f]], lambda host: stop_node(cluster, host))
    if ready[cluster.orchestrator]:
        stop_node(cluster, cluster.orchestrator)


def has_environment(cluster: "Cluster", hosts: Sequence[Instance]) -> dict[Instance, bool]:
    """Whether each host has the cluster's environment (so its helpers can run)."""
    results = cluster.pool.run_all(hosts, f"test -x {cluster.remote_path('env/bin/python')}", check=False)
    return {host: result.ok for host, result in results.items()}

