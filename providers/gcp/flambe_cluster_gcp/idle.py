"""Idle auto-termination on GCP: an on-host watchdog per instance (see :mod:`.watchdog`).

GCP has no CloudWatch-style alarm that deletes an instance on low CPU, and
the client may be gone for days, so each host watches itself: ``up`` ships
:mod:`.watchdog` (standard library only) to every host whose role has a
timeout and starts it detached; it deletes its own instance through the
metadata server and the Compute Engine API once the host has been idle for
the role's timeout (``orchestrator_timeout``, ``factories_timeout``, in
hours; ``-1`` never; ``0`` as soon as it turns idle after having worked).

Installing is idempotent: a host already running a watchdog with the same
settings keeps it (a second ``up`` adds nothing); changed settings restart
it; ``-1`` stops it.  Nothing is created in the cloud, so nothing is
journaled; the watchdog dies with its instance.
"""

from __future__ import annotations

import base64
import json
import logging
import posixpath
import shlex
from collections.abc import Callable
from pathlib import Path

from flambe_cluster.provider import ClusterInstances, FlambeClusterError, Instance, Role

from .api import GCPError, endpoint_for, is_test_endpoint
from .watchdog import GOOGLE_API, GOOGLE_METADATA, NAME

logger = logging.getLogger(__name__)

#: A host is busy while its processes use at least this many CPU cores.
BUSY_CORES = 0.5
#: Longest time between two idle checks, in seconds.
MAX_INTERVAL = 60.0
SCRIPT = Path(__file__).with_name("watchdog.py")
#: The fallback when the instance cannot delete itself: power off (a stopped instance costs only its disk).
POWER_OFF = ["sudo", "-n", "shutdown", "-h", "now"]


def watchdog_folder(cluster: str) -> str:
    """Where the watchdog lives on a host, relative to the home folder."""
    return f".flambe-cluster/{cluster}"


def interval_for(timeout_hours: float) -> float:
    """Seconds between checks: a tenth of the timeout, between 1 s and a minute (a minute for timeout 0)."""
    if timeout_hours <= 0:
        return MAX_INTERVAL
    return min(MAX_INTERVAL, max(1.0, timeout_hours * 3600.0 / 10))


def watchdog_config(config, role: Role) -> dict:
    """What the watchdog of a host with ``role`` needs to know (JSON-serialisable)."""
    options = config.options
    timeout = options.timeout_of(role)
    endpoint = endpoint_for(options)
    folder = watchdog_folder(config.name)
    return {
        "cluster": config.name,
        "role": role.value,
        "folder": "~/" + folder,
        "timeout_hours": timeout,
        "interval": interval_for(timeout),
        "busy_cores": BUSY_CORES,
        "job_dir": posixpath.join("~", folder, "job") if role is Role.ORCHESTRATOR else None,
        "api": endpoint or GOOGLE_API,
        # A plain-HTTP endpoint is a test double of Google: it serves the metadata server too, and the
        # host is no GCE VM, so the fallback only leaves a note instead of powering the machine off.
        "metadata": endpoint if is_test_endpoint(endpoint) else GOOGLE_METADATA,
        "power_off": (["sh", "-c", f'echo power-off requested > "$HOME"/{folder}/power-off-requested']
                      if is_test_endpoint(endpoint) else POWER_OFF),
    }


def install_command(config, role: Role) -> str:
    """The shell command that ships the watchdog to a host and ensures it runs with this role's settings."""
    settings = watchdog_config(config, role)
    script = base64.b64encode(SCRIPT.read_bytes()).decode()
    encoded = base64.b64encode(json.dumps(settings, sort_keys=True).encode()).decode()
    target = f'"$HOME"/{shlex.quote(watchdog_folder(config.name))}/{NAME}.py'
    return (
        f'mkdir -p "$HOME"/{shlex.quote(watchdog_folder(config.name))} && '
        f"printf %s {shlex.quote(script)} | base64 -d > {target}.tmp && mv -f {target}.tmp {target} && "
        f"{shlex.quote(config.python)} {target} ensure {shlex.quote(encoded)}"
    )


def configure(config, instances: ClusterInstances, run: Callable[[Instance, str], str],
              at_once: Callable[..., dict]) -> dict[str, str]:
    """Ensure every host's watchdog matches its role's timeout; returns ``{instance name: outcome}``.

    ``at_once(hosts, action)`` runs ``action`` on every host at once: the
    core's pool, which an interrupt leaves at once (an executor of our own
    would wait for its threads before any rollback could start).  Raises
    :class:`GCPError` naming each host where installing failed.
    """
    def ensure(instance: Instance) -> str | FlambeClusterError:
        try:
            return run(instance, install_command(config, instance.role)).strip()
        except FlambeClusterError as exc:
            return exc

    hosts = list(instances)
    results = at_once(hosts, ensure)
    outcomes = {host.name: result for host, result in results.items() if isinstance(result, str)}
    failures = [f"{host.label}: {result}" for host, result in results.items() if not isinstance(result, str)]
    if failures:
        raise GCPError(
            f"cluster {config.name!r}: starting the idle watchdog failed on {len(failures)} host(s):\n  "
            + "\n  ".join(failures) + "\nFix the cause (the hosts need the `python:` interpreter) and run `up` again."
        )
    logger.info("idle watchdogs: %s", outcomes)
    return outcomes
