"""Instance objects: ``cluster.orchestrator`` and ``cluster.factories[i]``, with the seed's methods.

Flambé calls methods on the hosts themselves (``cluster.orchestrator.
get_home_path()``, ``launch_tensorboard(...)``).  A handle pairs the frozen
:class:`~flambe_cluster.records.Instance` a provider returned with the
cluster's :class:`~flambe_cluster.session.HostSession`; it reads like the
record (``name``, ``endpoint``, ``label``, ...), compares and hashes equal
to it, and adds the seed's per-host methods.  Paths given to them are
relative to the host's home, or absolute inside it, as in Flambé.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from . import environment, hostfiles, jobs, raycluster
from .errors import ClusterError
from .paths import relative_to_home
from .records import Instance
from .session import HostSession

TENSORBOARD = "tensorboard"  # the helpers' state folders, under the cluster's remote root
REPORT_SITE = "report-site"


class InstanceHandle:
    """One host of the cluster: its record plus the seed's per-host methods."""

    def __init__(self, record: Instance, session: HostSession | None) -> None:
        self.record = record
        self._session = session

    # --- reads like the record

    def __getattr__(self, name: str) -> Any:
        if name in ("record", "_session"):  # not set yet (unpickling): no recursion through __getattr__
            raise AttributeError(name)
        return getattr(self.record, name)

    def __eq__(self, other: object) -> bool:
        return self.record == (other.record if isinstance(other, InstanceHandle) else other)

    def __hash__(self) -> int:
        return hash(self.record)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.record.label})"

    def __getstate__(self) -> dict[str, Any]:
        """A runnable may carry a handle: it pickles as its record, without the cluster's live connections."""
        return {"record": self.record}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.record = state["record"]
        self._session = None

    @property
    def session(self) -> HostSession:
        """The cluster's session; a handle unpickled away from its cluster has none."""
        if self._session is None:
            raise ClusterError(f"{self.record.label}: this instance object was unpickled away from its cluster; "
                               "its attributes can be read, its methods need the cluster (get it from "
                               "cluster.orchestrator or cluster.factories)")
        return self._session

    # --- the seed's attributes

    @property
    def host(self) -> str:
        """The address the client uses."""
        return self.record.endpoint.host

    @property
    def private_host(self) -> str:
        """The address the other hosts use."""
        return self.record.private.host

    @property
    def username(self) -> str:
        return self.session.config.username

    @property
    def key(self) -> str | None:
        """The local path of the key that logs in to the hosts (``None``: ssh-agent's keys)."""
        key = self.session.config.key
        return None if key is None else str(key)

    # --- the seed's methods

    def get_home_path(self) -> str:
        """The host's ``$HOME``."""
        return self.session.home(self.record)

    def _relative(self, path: str, what: str) -> str:
        return relative_to_home(path, self.get_home_path(), what)

    def run_cmds(self, setup_cmds: list[str]) -> None:
        """Run the shell command lines in order; raises RemoteCommandError at the first that fails."""
        for command in setup_cmds:
            self.session.pool.run(self.record, command)

    def send_rsync(self, host_path: str, remote_path: str, params: list[str] | None = None) -> None:
        """Send a local file or folder (its contents) to ``remote_path`` on this host with rsync.

        ``params`` are extra rsync options (``["--exclude=*.tmp"]``).
        """
        local = Path(host_path).expanduser()
        if not local.exists():
            raise ClusterError(f"send_rsync: {host_path} does not exist")
        target = self._relative(remote_path, "send_rsync remote_path")
        source = f"{local}/" if local.is_dir() else str(local)
        self.session.upload(self.record, [source], target + ("/" if local.is_dir() else ""), extra=params or ())

    def existing_dir(self, _dir: str) -> bool:
        """Whether ``$HOME/_dir`` exists on this host."""
        return hostfiles.existing_dir(self.session, self._relative(_dir, "existing_dir path"), [self.record])

    def create_dirs(self, relative_dirs: list[str]) -> None:
        """Create folders (relative to the home) on this host; existing ones are kept."""
        hostfiles.create_dirs_on(self.session, [self.record], [self._relative(d, "folder") for d in relative_dirs])

    def remove_dir(self, _dir: str, content_only: bool = True) -> None:
        """Remove ``$HOME/_dir`` (or only what is inside it) on this host."""
        hostfiles.remove_dir(self.session, self._relative(_dir, "remove_dir path"), content_only, [self.record])

    def num_cpus(self) -> int:
        """The CPUs this host may use."""
        return environment.probe(self.session, [self.record])[self.record].cpus

    def num_gpus(self) -> int:
        """The GPUs this host has (the provider's answer, or ``nvidia-smi``)."""
        session = self.session
        gpus = session.hooks.detect_gpus(session.config, self.record,
                                         lambda command: session.pool.run(self.record, command).stdout)
        return int(gpus or 0)

    def contains_gpu(self) -> bool:
        """Whether this host has at least one GPU."""
        return self.num_gpus() > 0

    def is_node_running(self) -> bool:
        """Whether this cluster's Ray node runs on this host."""
        report = environment.probe(self.session, [self.record])[self.record]
        return any(node["cluster"] == self.session.name for node in report.ray_nodes)

    def is_flambe_running(self) -> bool:
        """Whether this host runs the cluster's job (only the orchestrator runs jobs)."""
        return False


class FactoryInstance(InstanceHandle):
    """A factory: a Ray worker with its CPUs and GPUs."""


class OrchestratorInstance(InstanceHandle):
    """The orchestrator: the Ray head, the job, TensorBoard and the report site."""

    def is_flambe_running(self) -> bool:
        return jobs.status(self.session).state == "running"

    def _service(self, module: str, folder: str, verb: str, *options: str) -> dict[str, Any]:
        """Run ``verb`` (launch, status, stop) of the remote helper ``module`` whose state lives in ``folder``."""
        state = posixpath.join(self.session.remote_root, folder)
        result = self.session.pool.run(self.record, self.session.helper(module, verb, state, *options))
        return cast("dict[str, Any]", json.loads(result.stdout or "{}"))

    def launch_tensorboard(self, logs_dir: str, tensorboard_port: int) -> None:
        """Run TensorBoard on ``logs_dir`` (relative to the home) at ``tensorboard_port``, detached.

        TensorBoard is installed in the cluster's environment on first use,
        offline like every extension.  Raises when one already runs or the
        port is taken (see :meth:`remove_tensorboard`).
        """
        environment.ensure_installed(self.session, [self.record], {TENSORBOARD: "tensorboard"}, module="tensorboard")
        logs = self._relative(logs_dir, "logs_dir")
        self._service("tensorboard", TENSORBOARD, "launch", "--logdir", logs, "--port", str(int(tensorboard_port)))

    def is_tensorboard_running(self) -> bool:
        return self._has_environment() and self._service("tensorboard", TENSORBOARD, "status")["state"] == "running"

    def remove_tensorboard(self) -> None:
        """Stop the TensorBoard this cluster started (nothing else)."""
        if self._has_environment():
            self._service("tensorboard", TENSORBOARD, "stop")

    def launch_report_site(self, progress_file: str, port: int, output_log: str, output_dir: str,
                           tensorboard_port: int) -> None:
        """Serve the read-only report page at ``port``: the job's state, its log, the output files, a TensorBoard
        link."""
        job_dir = posixpath.join(self.session.remote_root, jobs.JOB)
        self._service(
            "report_site", REPORT_SITE, "launch", "--port", str(int(port)), "--job-dir", job_dir,
            "--output-log", output_log, "--output-dir", self._relative(output_dir, "output_dir"),
            "--progress-file", progress_file, "--tensorboard-port", str(int(tensorboard_port)),
        )

    def is_report_site_running(self) -> bool:
        return self._has_environment() and self._service("report_site", REPORT_SITE, "status")["state"] == "running"

    def remove_report_site(self) -> None:
        """Stop the report site this cluster started (nothing else)."""
        if self._has_environment():
            self._service("report_site", REPORT_SITE, "stop")

    def service_addresses(self) -> dict[str, str]:
        """``{"tensorboard": URL, "report_site": URL}`` for those of the two that run (none without the environment)."""
        if not self._has_environment():
            return {}
        found = {}
        for name, folder in (("tensorboard", TENSORBOARD), ("report_site", REPORT_SITE)):
            state = self._service(name, folder, "status")
            if state["state"] == "running":
                found[name] = f"http://{self.host}:{state['port']}/"
        return found

    def worker_nodes(self) -> list[str]:
        """The private addresses of the alive Ray workers (none while the head is slow to answer)."""
        return sorted(raycluster.alive_workers(raycluster.nodes_unless_slow(self.session)))

    def rsync_folder(self, _from: str, _to: str, exclude: Sequence[str] | None = None) -> None:
        """rsync, run on the orchestrator, from ``_from`` to ``_to`` (either may be ``user@host:path`` of a cluster
        host).

        Uses the cluster key and the hosts' pinned keys; adds and updates,
        deletes nothing.
        """
        ports = {host.private.host: host.private.port for host in self.session.hosts()}
        remote = next((spec for spec in (_from, _to) if ":" in spec.split("/")[0]), "")
        port = ports.get(remote.split("@")[-1].split(":")[0], 22)
        self.session.rsync_on(self.session.require_orchestrator(), _from.rstrip("/") + "/", _to, port=port,
                              exclude=exclude or (), check=True)

    def _has_environment(self) -> bool:
        return hostfiles.has_environment(self.session, [self.record])[self.record]


def handle(record: Instance | None, session: HostSession | None) -> InstanceHandle | None:
    """The handle of ``record`` (``None`` for ``None``)."""
    if record is None:
        return None
    return (OrchestratorInstance if record.role.value == "orchestrator" else FactoryInstance)(record, session)


def record_of(host: Instance | InstanceHandle) -> Instance:
    """The record behind ``host`` (a record or a handle)."""
    return host.record if isinstance(host, InstanceHandle) else host

