"""The generic Cluster: the seed's API, driven by one provider's hooks.

:class:`Cluster` owns the lifecycle — bringing a cluster up, rolling back
what a failed run created, taking it down, the context manager — and
delegates everything else in one line to the modules below it: the
:class:`~flambe_cluster.session.HostSession` (hosts, connections, files),
:mod:`~flambe_cluster.keys`, :mod:`~flambe_cluster.environment`,
:mod:`~flambe_cluster.raycluster`, :mod:`~flambe_cluster.jobs` and
:mod:`~flambe_cluster.content`.  The provider finds or creates machines;
everything done on the machines is done the same way for every provider.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Dict, List, Optional, Sequence, Type

import pluggy

from . import environment, jobs, keys, plugins, raycluster
from .config import load_config, parse_config, provider_of, provider_problems, read_config_file
from .content import UPLOAD_WARN_LIMIT_MB
from .content import send_local_content as _send_local_content
from .errors import ClusterConfigurationError, FlambeClusterError
from .records import Endpoint, Instance, RemoteEnvironment, Role, factory_name, orchestrator_name
from .session import HostSession
from .settings import ClusterConfig
from .ssh import CommandResult, SSHPool
from .state import ClusterState, RunJournal

logger = logging.getLogger(__name__)

REMOTE_DIRS = ("extensions",)


class Cluster:
    """One orchestrator and ``factories_num`` factories, on any provider.

    Build it from a validated :class:`ClusterConfig`, from the seed's keyword
    parameters (``Cluster(name=..., factories_num=..., key=..., username=...,
    provider="ssh", orchestrator_ip=..., ...)``) or from a YAML file
    (:meth:`from_yaml`).  A cluster holds exactly one plugin manager (the
    provider plus the core's defaults).  Use it as a context manager: on an
    error inside the block it rolls back what this run created, logs the
    error, keeps it in :attr:`error` and suppresses it (the seed's contract);
    library code never exits the process.
    """

    UPLOAD_WARN_LIMIT_MB = UPLOAD_WARN_LIMIT_MB

    def __init__(
        self,
        name: Optional[str] = None,
        factories_num: Optional[int] = None,
        key: Optional[str] = None,
        username: Optional[str] = None,
        setup_cmds: Optional[List[str]] = None,
        *,
        provider: Optional[str] = None,
        config: Optional[ClusterConfig] = None,
        plugin_manager: Optional[pluggy.PluginManager] = None,
        **options: Any,
    ) -> None:
        if config is None:
            raw = {"provider": provider, "name": name, "key": key, "username": username,
                   "factories_num": factories_num, "setup_cmds": setup_cmds, **options}
            raw = {k: v for k, v in raw.items() if v is not None}
            plugin_manager = plugin_manager or plugins.make_plugin_manager(provider_of(raw))
            config = parse_config(raw, manager=plugin_manager)
        self.plugin_manager = plugin_manager or plugins.make_plugin_manager(config.provider)
        self.session = HostSession(config, self.plugin_manager.hook, ClusterState.for_cluster(config.name, config.state_dir))
        self.error: Optional[BaseException] = None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], validate: bool = True) -> "Cluster":
        """A cluster described by a YAML file (``provider:`` key or a seed tag).

        ``validate=False`` skips the provider's (possibly online) validation:
        for commands on a cluster that already exists.
        """
        manager = plugins.make_plugin_manager(provider_of(read_config_file(path), str(path)))
        return cls(config=load_config(path, validate=validate, manager=manager), plugin_manager=manager)

    # --- the seed's fields, and what the session holds

    config = property(lambda self: self.session.config, doc="The validated configuration.")
    hooks = property(lambda self: self.session.hooks, doc="The provider's hooks (and the core's defaults).")
    state = property(lambda self: self.session.state, doc="The cluster's local state folder.")
    name = property(lambda self: self.config.name)
    factories_num = property(lambda self: self.config.factories_num)
    key = property(lambda self: self.config.key)
    username = property(lambda self: self.config.username)
    setup_cmds = property(lambda self: list(self.config.setup_cmds))
    orchestrator = property(lambda self: self.session.orchestrator, doc="The orchestrator (None before loading).")
    factories = property(lambda self: self.session.factories, doc="The factories (empty before loading).")
    pool: SSHPool = property(lambda self: self.session.pool, doc="The cluster's SSH connections.")  # type: ignore[assignment]
    journal: RunJournal = property(lambda self: self.session.journal, doc="This run's journal.")  # type: ignore[assignment]
    remote_key_name = property(lambda self: self.session.remote_key_name)

    @property
    def on_step(self) -> Callable[[str], None]:
        """Receives one line per step of a long operation (default: the log)."""
        return self.session.on_step

    @on_step.setter
    def on_step(self, callback: Callable[[str], None]) -> None:
        self.session.on_step = callback

    # --- names and instance records

    def get_orchestrator_name(self) -> str:
        """The orchestrator's name: ``<name>_orchestrator``."""
        return orchestrator_name(self.name)

    def get_factory_basename(self) -> str:
        """The factories' base name: ``<name>_factory`` (append an index per factory)."""
        return factory_name(self.name)

    def _instance(self, role: Role, name: str, ip: str, private_ip: Optional[str], use_public: bool, gpus: Optional[int]) -> Instance:
        public = Endpoint.parse(ip)
        private = Endpoint.parse(private_ip) if private_ip else public
        return Instance(name=name, role=role, public=public, private=private, use_public=use_public, gpus=gpus)

    def get_orchestrator(self, ip: str, private_ip: Optional[str] = None, use_public: bool = True) -> Instance:
        """An orchestrator record for the host at ``ip`` (``private_ip`` defaults to ``ip``)."""
        return self._instance(Role.ORCHESTRATOR, self.get_orchestrator_name(), ip, private_ip, use_public, 0)

    def get_factory(self, ip: str, private_ip: Optional[str] = None, use_public: bool = True) -> Instance:
        """A CPU factory record (no GPUs)."""
        return self._instance(Role.FACTORY, self.get_factory_basename(), ip, private_ip, use_public, 0)

    def get_gpu_factory(self, ip: str, private_ip: Optional[str] = None, use_public: bool = True) -> Instance:
        """A factory record known to have GPUs (their count is still to be detected)."""
        return self._instance(Role.FACTORY, self.get_factory_basename(), ip, private_ip, use_public, None)

    def all_hosts(self) -> List[Instance]:
        """The orchestrator followed by every factory (raises ClusterError before loading)."""
        return self.session.hosts()

    def _get_all_hosts(self) -> List[Instance]:
        """The seed's name for :meth:`all_hosts`."""
        return self.session.hosts()

    # --- lifecycle

    def load_all_instances(self) -> None:
        """Find or create every instance through the provider (idempotent; creations journaled)."""
        self.on_step(f"finding or creating {1 + self.factories_num} instances ({self.config.provider})")
        self.session.set_instances(self.hooks.flambe_cluster_load_instances(config=self.config, journal=self.journal))

    def find_instances(self) -> bool:
        """Load the existing instances without creating anything; False if the cluster does not exist."""
        instances = self.hooks.flambe_cluster_find_instances(config=self.config)
        if instances is None:
            return False
        self.session.set_instances(instances)
        return True

    def wait_until_accessible(self) -> None:
        """Connect to every host (one deadline for all); raises naming each host that failed."""
        hosts = self.all_hosts()
        self.on_step(f"connecting to {len(hosts)} hosts")
        self.pool.connect_all(hosts)

    def run(self, force: bool = False, **kwargs: Any) -> None:
        """Bring the cluster up: load, connect, keys, folders, setup commands, software, Ray.

        Idempotent: on a cluster that is already up it reuses the instances,
        the key pair, the environments and the running Ray cluster, and only
        re-runs the (idempotent) setup commands.  With ``force`` (the seed's
        flag) a running job is stopped.  Holds the cluster's lock for its
        whole duration, a rollback after a failure included, so another
        ``up`` never reuses what is being rolled back.
        """
        with self.state.lock(wait=float(kwargs.get("lock_wait", 0.0))):
            try:
                self._up()
                if force:
                    self.shutdown_flambe_execution()
            except BaseException:
                self._rollback_keeping_error()
                raise

    def _up(self) -> None:
        self.load_all_instances()
        self.wait_until_accessible()
        if self.cluster_has_key():
            self.on_step("cluster key already on every host")
        else:
            self.distribute_keys()
        self.create_dirs(list(REMOTE_DIRS))
        self.run_cmds(self.setup_cmds)
        self.prepare_all_instances()
        self.launch_ray_cluster()
        self.hooks.flambe_cluster_configure_idle_shutdown(
            config=self.config,
            instances=self.session.instances(),
            journal=self.journal,
            run=lambda host, command: self.pool.run(host, command).stdout,
        )

    def _rollback_keeping_error(self) -> None:
        """Roll back after a failure; a failing rollback is logged, the original error stays the one raised."""
        try:
            self.rollback_env()
        except Exception as rollback_error:  # noqa: BLE001 - reported; the run's own error is what the user sees
            logger.error("rollback of cluster %r failed: %s", self.name, rollback_error)

    def rollback_env(self) -> None:
        """Destroy what this run created (per the journal) through the provider; idempotent."""
        if not self.session.has_run_journal:
            return
        created = self.journal.created()
        if not created:
            return
        self.on_step(f"rolling back {len(created)} resources created by this run")
        self.hooks.flambe_cluster_rollback(config=self.config, created=created)
        self.journal.journal.record_destroyed(created, run_id=self.journal.run_id)
        destroyed = {r.resource_id for r in created} | {i for r in created for i in r.details.get("instance_ids", ())}
        self.session.forget_host_keys([h for h in self.session.loaded() if h.instance_id in destroyed])

    def down(self) -> bool:
        """Stop the job and Ray on every host, then release the machines through the provider.

        Returns False when the cluster does not exist and the journal holds
        nothing of it (otherwise the provider is still asked to release what
        is left, e.g. alarms of instances an idle alarm terminated).  When the provider
        manages the machines (every instance has an ``instance_id``), stopping
        the job and Ray is best effort — a stopped or unreachable machine is
        terminated anyway — and a cluster found incomplete is still released;
        machines the user brought must be reachable.  Terminated machines'
        pinned host keys are forgotten (their addresses may be reused); the
        journal records everything as destroyed.  Holds the cluster's lock.
        """
        with self.state.lock():
            try:
                exists = self.find_instances()
            except FlambeClusterError as incomplete:
                self.on_step(f"the cluster is incomplete ({incomplete}); releasing what is left")
                exists = None
            if exists is False and not self.state.journal.outstanding():
                return False
            if exists:
                self._stop_everything()
            self.on_step(f"releasing the hosts ({self.config.provider})")
            self.hooks.flambe_cluster_terminate(config=self.config, instances=self.session.instances() if exists else None)
            self.close()
            self.session.forget_host_keys([h for h in self.session.loaded() if h.instance_id is not None])
            journal = self.state.journal
            journal.record_destroyed(journal.outstanding())
            return True

    def _stop_everything(self) -> None:
        """Stop the job and Ray; best effort (with a short connect deadline) on machines about to be terminated."""
        self.on_step("stopping the job and Ray")
        if not all(h.instance_id is not None for h in self.all_hosts()):
            self.shutdown_flambe_execution()
            self.shutdown_ray_cluster()
            return
        self.pool.connect_timeout = min(self.pool.connect_timeout, 15.0)
        try:
            self.shutdown_flambe_execution()
            self.shutdown_ray_cluster()
        except FlambeClusterError as exc:
            logger.warning("could not stop the job and Ray before terminating (%s); terminating anyway", exc)
            self.on_step("some hosts did not answer; terminating them anyway")

    def close(self) -> None:
        """Close the SSH connections (idempotent)."""
        self.session.close()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(
        self,
        exc_type: Optional[Type[BaseException]],
        exc_value: Optional[BaseException],
        tb: Optional[TracebackType],
    ) -> bool:
        """Roll back on error, log it, keep it in :attr:`error` and suppress it (the seed's contract)."""
        try:
            if exc_value is not None:
                self.error = exc_value
                logger.error("cluster %r failed: %s", self.name, exc_value)
                self._rollback_keeping_error()
        finally:
            self.close()
        return exc_value is not None

    # --- commands, folders, files (delegated)

    def run_cmds(self, setup_cmds: List[str]) -> None:
        """Run each setup command on every host at once, in order; raises RemoteCommandError naming each failing host."""
        hosts = self.all_hosts()
        for index, command in enumerate(setup_cmds, 1):
            self.on_step(f"setup command {index}/{len(setup_cmds)} on {len(hosts)} hosts: {command}")
            self.session.run_all(hosts, command)

    def execute_on(self, hosts: List[Instance], command: str, check: bool = True) -> Dict[Instance, CommandResult]:
        """Run a shell command line on ``hosts`` at once; returns results per host."""
        return self.session.run_all(hosts, command, check=check)

    def create_dirs(self, relative_dirs: List[str]) -> None:
        """Create folders (relative to each host's home) on every host; existing ones are kept."""
        self.session.create_dirs_on(self.all_hosts(), relative_dirs)

    def existing_dir(self, _dir: str) -> bool:
        """Whether the folder ``$HOME/_dir`` exists on at least one host."""
        return self.session.existing_dir(_dir)

    def remove_dir(self, _dir: str, content_only: bool = True, all_hosts: bool = True) -> None:
        """Remove ``$HOME/_dir`` (or only what is inside it) on all hosts or the orchestrator only."""
        self.session.remove_dir(_dir, content_only, all_hosts)

    def get_orch_home_path(self) -> str:
        """The orchestrator's home folder (asked once, then remembered)."""
        return self.session.orchestrator_home()

    def cluster_has_key(self) -> bool:
        """Whether every host holds this cluster's key pair and authorises its public key."""
        return keys.has_key(self.session)

    def distribute_keys(self) -> None:
        """Install the per-cluster key pair on every host and authorise it everywhere (see :mod:`keys`)."""
        keys.distribute(self.session)

    def send_local_content(self, content: Dict[str, str], dest: str, all_hosts: bool = False) -> Dict[str, str]:
        """Send local files or folders to ``$HOME/<dest>/<key>/`` (see :mod:`flambe_cluster.content`)."""
        return _send_local_content(self.session, content, dest, all_hosts)

    def rsync_orch(self, folder: str) -> None:
        """Copy ``$HOME/<folder>`` from the orchestrator to every factory at once (the seed's API)."""
        self.session.fan_out(folder, self.factories)

    def get_remote_env(self, user_provider: Callable[[], str]) -> RemoteEnvironment:
        """What a job on the orchestrator needs to know about the cluster (private addresses)."""
        return self.session.remote_environment(user_provider())

    def send_secrets(self, whitelist: Optional[List[str]] = None) -> str:
        """Send the secrets file (``whitelist`` sections only, if given) to the orchestrator; returns its path."""
        return self.session.send_secrets(whitelist)

    # --- software, resources, Ray

    def prepare_all_instances(self) -> None:
        """Give every host the cluster's Python environment with the client's flambe-cluster and Ray.

        Installs offline from a wheelhouse shipped once to the orchestrator
        and fanned out to the factories; hosts whose versions already match
        are left alone.  Also learns each factory's CPUs and GPUs.
        """
        reports = environment.probe(self.session, self.all_hosts())
        environment.prepare(self.session, reports)
        environment.factory_resources(self.session, {f: reports[f] for f in self.factories})

    def contains_gpu_factories(self) -> bool:
        """Whether any factory has a GPU."""
        return any(r.gpu > 0 for r in environment.factory_resources(self.session).values())

    def get_max_resources(self) -> Dict[str, int]:
        """The CPUs and GPUs every factory has at least: ``{"cpu": N, "gpu": M}``."""
        resources = list(environment.factory_resources(self.session).values())
        return {"cpu": min(r.cpu for r in resources), "gpu": min(r.gpu for r in resources)} if resources else {"cpu": 0, "gpu": 0}

    def install_extensions(self, extensions: Dict[str, str]) -> None:
        """Install extensions on every host at once (one wheelhouse, shipped once)."""
        environment.install_extensions(self.session, self.all_hosts(), extensions)

    def install_extensions_in_orchestrator(self, extensions: Dict[str, str]) -> None:
        """Install extensions (local project folders or pip requirements) in the orchestrator's environment."""
        environment.install_extensions(self.session, [self.session.require_orchestrator()], extensions)

    def install_extensions_in_factories(self, extensions: Dict[str, str]) -> None:
        """Install extensions (local project folders or pip requirements) in every factory's environment."""
        environment.install_extensions(self.session, self.factories, extensions)

    def launch_ray_cluster(self) -> None:
        """Start the Ray head on the orchestrator (``--num-cpus=0``) and a worker on each factory.

        Starts only what is missing; returns when the head reports exactly
        ``factories_num`` alive workers, else raises naming the missing ones.
        """
        raycluster.launch(self.session, environment.factory_resources(self.session))

    def check_ray_cluster(self) -> bool:
        """Whether the head reports exactly one alive worker per factory."""
        return raycluster.complete(self.session)

    def is_ray_cluster_up(self) -> bool:
        """Whether the head answers and every factory's worker is alive."""
        return raycluster.is_up(self.session)

    def existing_ray_cluster(self) -> List[Instance]:
        """The hosts of this cluster the Ray head reports as alive nodes."""
        return raycluster.alive_hosts(self.session)

    def shutdown_ray_cluster(self) -> None:
        """Stop this cluster's Ray nodes on every host (idempotent)."""
        self.session.require_orchestrator()
        raycluster.shutdown(self.session)

    # --- jobs

    def existing_flambe_execution(self) -> List[Instance]:
        """The hosts running a job of this cluster (the orchestrator, or none)."""
        orchestrator = self.session.require_orchestrator()
        return [orchestrator] if jobs.status(self.session).state == "running" else []

    def shutdown_flambe_execution(self) -> None:
        """Stop the running job, if any (idempotent)."""
        self.session.require_orchestrator()
        jobs.stop(self.session)

    def execute(self, cluster_runnable: str, extensions: Dict[str, str], new_secrets: Optional[str], force: bool,
                args: Sequence[str] = ()) -> "jobs.JobStatus":
        """Run a job (a local file or folder) on the orchestrator, detached.

        Installs ``extensions`` on every host first and sends the secrets
        (``new_secrets`` names whitelisted sections, comma-separated, or None
        for all).  Refuses while a job runs unless ``force``.
        """
        self.install_extensions(extensions)
        whitelist = [s for s in new_secrets.split(",") if s] if new_secrets else None
        return jobs.submit(self.session, Path(cluster_runnable), args, force=force, secrets_whitelist=whitelist)

    # --- validation

    def parse(self) -> None:
        """Check the configuration with the provider; raise ClusterConfigurationError listing all problems."""
        problems = provider_problems(self.hooks, self.config)
        if problems:
            raise ClusterConfigurationError(problems, self.config.source)
