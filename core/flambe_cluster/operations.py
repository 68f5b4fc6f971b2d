"""The seed's operations on a cluster, each a delegation to the layer that does it.

:class:`ClusterOperations` is the part of :class:`~flambe_cluster.cluster.Cluster`
that works on hosts already loaded: commands, folders and files
(:class:`~flambe_cluster.session.HostSession`, :mod:`~flambe_cluster.content`,
:mod:`~flambe_cluster.keys`), software and resources
(:mod:`~flambe_cluster.environment`), Ray (:mod:`~flambe_cluster.raycluster`)
and jobs (:mod:`~flambe_cluster.jobs`).  Methods that need the instances
raise :class:`~flambe_cluster.errors.ClusterError` before they are loaded.
"""

from __future__ import annotations

import configparser
import os
import posixpath
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import environment, hostfiles, jobs, keys, raycluster
from .commands import CommandResult
from .content import send_local_content as _send_local_content
from .errors import ClusterConfigurationError
from .records import Instance
from .remoteenv import RemoteEnvironment
from .session import HostSession


class ClusterOperations:
    """The seed's per-cluster operations on :attr:`session` (see the module's docstring)."""

    session: HostSession
    secrets: configparser.ConfigParser  # the secrets inject_secrets read (see Cluster)

    # --- commands, folders, files

    def run_cmds(self, setup_cmds: list[str]) -> None:
        """Run each setup command on every host at once, in order; raises RemoteCommandError naming each failing
        host."""
        hosts = self.session.hosts()
        for index, command in enumerate(setup_cmds, 1):
            self.session.on_step(f"setup command {index}/{len(setup_cmds)} on {len(hosts)} hosts: {command}")
            self.session.run_all(hosts, command,
                                 states=(f"running setup command {index}", f"setup command {index} done"))

    def execute_on(self, hosts: list[Instance], command: str, check: bool = True) -> dict[Instance, CommandResult]:
        """Run a shell command line on ``hosts`` at once; returns results per host."""
        return self.session.run_all(hosts, command, check=check)

    def create_dirs(self, relative_dirs: list[str]) -> None:
        """Create folders (relative to each host's home) on every host; existing ones are kept."""
        hostfiles.create_dirs_on(self.session, self.session.hosts(),
                                 [self.session.relative(d, "folder") for d in relative_dirs])

    def existing_dir(self, _dir: str) -> bool:
        """Whether the folder ``$HOME/_dir`` exists on at least one host."""
        return hostfiles.existing_dir(self.session, self.session.relative(_dir, "existing_dir path"))

    def remove_dir(self, _dir: str, content_only: bool = True, all_hosts: bool = True) -> None:
        """Remove ``$HOME/_dir`` (or only what is inside it) on all hosts or the orchestrator only."""
        hosts = self.session.hosts() if all_hosts else [self.session.require_orchestrator()]
        hostfiles.remove_dir(self.session, self.session.relative(_dir, "remove_dir path"), content_only, hosts)

    def get_orch_home_path(self) -> str:
        """The orchestrator's home folder (asked once, then remembered)."""
        return hostfiles.orchestrator_home(self.session)

    def cluster_has_key(self) -> bool:
        """Whether every host holds this cluster's key pair and authorises its public key."""
        return keys.has_key(self.session)

    def distribute_keys(self) -> None:
        """Install the per-cluster key pair on every host and authorise it everywhere (see :mod:`keys`)."""
        keys.distribute(self.session)

    def send_local_content(self, content: dict[str, str], dest: str, all_hosts: bool = False) -> dict[str, str]:
        """Send local files or folders to ``$HOME/<dest>/<key>/`` (see :mod:`flambe_cluster.content`)."""
        return _send_local_content(self.session, content, dest, all_hosts)

    def rsync_orch(self, folder: str) -> None:
        """Copy ``$HOME/<folder>`` from the orchestrator to every factory, passed on as a tree (the seed's API)."""
        self.session.fan_out(self.session.relative(folder, "rsync_orch folder"), self.session.factories, mirror=False)

    def get_remote_env(self, user_provider: Callable[[], str]) -> RemoteEnvironment:
        """What a job on the orchestrator needs to know about the cluster (private addresses)."""
        return self.session.remote_environment(user_provider())

    def send_secrets(self, whitelist: list[str] | None = None) -> str:
        """Send the secrets (``whitelist`` sections only; none or empty: all) to the orchestrator, mode 0600.

        The secrets are those :meth:`inject_secrets` read, else the
        configuration's ``secrets`` file, else ``~/.flambe/secrets.ini``
        (Flambé's default); a whitelisted section they lack is skipped, as
        in the seed.  Returns the file's absolute path on the orchestrator.
        """
        return posixpath.join(self.get_orch_home_path(), hostfiles.send_secrets(self.session, whitelist, self.secrets))

    # --- software, resources, Ray

    def prepare_all_instances(self) -> None:
        """Give every host the cluster's Python environment with the client's flambe-cluster and Ray.

        Installs offline from a wheelhouse shipped once to the orchestrator
        and passed on to the factories as a tree, each host as soon as it
        has it; hosts whose versions already match are left alone.  Also
        learns each factory's CPUs and GPUs, and on which hosts this
        cluster's Ray node runs (for :meth:`launch_ray_cluster`).
        """
        self._prepare_software(start_ray=False)

    def _prepare_software(self, start_ray: bool) -> None:
        """:meth:`prepare_all_instances`; with ``start_ray`` also the Ray cluster, each node as soon as its host is
        ready."""
        reports = environment.probe(self.session, self.session.hosts())
        running = {host for host, report in reports.items() if report.runs_node_of(self.session.name)}
        resources = environment.factory_resources(self.session, {f: reports[f] for f in self.session.factories})
        if environment.stale_hosts(reports):
            raycluster.forget_early_answer(self.session)  # installing may end what the head knew
        if not start_ray:
            self.session.stash[raycluster.NODE_HOSTS] = running
            environment.prepare(self.session, reports)
            return
        launch = raycluster.Launch(self.session, resources, running)
        try:
            environment.prepare(self.session, reports, launch.ready)
        except BaseException:
            launch.abandon()
            raise
        launch.finish()

    def contains_gpu_factories(self) -> bool:
        """Whether any factory has a GPU."""
        return any(r.gpu > 0 for r in environment.factory_resources(self.session).values())

    def get_max_resources(self) -> dict[str, int]:
        """The CPUs and GPUs every factory has at least: ``{"cpu": N, "gpu": M}``."""
        resources = list(environment.factory_resources(self.session).values())
        return ({"cpu": min(r.cpu for r in resources), "gpu": min(r.gpu for r in resources)} if resources
                else {"cpu": 0, "gpu": 0})

    def install_extensions(self, extensions: dict[str, str]) -> None:
        """Install extensions on every host at once (one wheelhouse, shipped once)."""
        environment.install_extensions(self.session, self.session.hosts(), extensions)

    def install_extensions_in_orchestrator(self, extensions: dict[str, str]) -> None:
        """Install extensions (local project folders or pip requirements) in the orchestrator's environment."""
        environment.install_extensions(self.session, [self.session.require_orchestrator()], extensions)

    def install_extensions_in_factories(self, extensions: dict[str, str]) -> None:
        """Install extensions (local project folders or pip requirements) in every factory's environment."""
        environment.install_extensions(self.session, self.session.factories, extensions)

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

    def existing_ray_cluster(self) -> list[Instance]:
        """The hosts of this cluster the Ray head reports as alive nodes."""
        return raycluster.alive_hosts(self.session)

    def shutdown_ray_cluster(self) -> None:
        """Stop this cluster's Ray nodes on every host (idempotent)."""
        self.session.require_orchestrator()
        raycluster.shutdown(self.session)

    # --- jobs

    def existing_flambe_execution(self) -> list[Instance]:
        """The hosts running a job of this cluster (the orchestrator, or none)."""
        orchestrator = self.session.require_orchestrator()
        return [orchestrator] if jobs.status(self.session).state == "running" else []

    def shutdown_flambe_execution(self) -> None:
        """Stop the running job, if any (idempotent)."""
        self.session.require_orchestrator()
        jobs.stop(self.session)

    def execute(self, cluster_runnable: Any, extensions: dict[str, str], new_secrets: str | None, force: bool,
                *, args: Sequence[str] = ()) -> jobs.JobStatus:
        """Run a job on the orchestrator, detached, after installing ``extensions`` on every host.

        ``cluster_runnable`` is a local file or folder (run as ``flambe-cluster
        submit`` does, with ``args``) or, as Flambé passes it, any object with
        a ``run()`` method: shipped pickled and run there with the extensions
        importable.  ``new_secrets`` is the path :meth:`send_secrets`
        returned (the job reads it from ``FLAMBE_SECRETS``), or None.
        Refuses while a job runs unless ``force``.
        """
        self.install_extensions(extensions)
        secrets = self.session.relative(new_secrets, "new_secrets") if new_secrets else None
        if isinstance(cluster_runnable, (str, os.PathLike)):
            return jobs.submit(self.session, Path(cluster_runnable), args, force=force, secrets=secrets)
        return jobs.submit_runnable(self.session, cluster_runnable, force=force, secrets=secrets)

    # --- validation

    def parse(self) -> None:
        """Check the configuration with the provider; raise ClusterConfigurationError listing all problems."""
        problems = self.session.hooks.validate(self.session.config)
        if problems:
            raise ClusterConfigurationError(problems, self.session.config.source)
