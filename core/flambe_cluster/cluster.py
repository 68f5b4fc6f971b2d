"""The generic Cluster: the seed's API, driven by one provider's hooks.

A :class:`Cluster` holds a validated configuration, a plugin manager with the
chosen provider, the local state folder and a pool of SSH connections.  The
provider finds or creates machines; everything done on the machines — waiting
for them, keys, folders, setup commands, file transfer — is done here, the
same way for every provider.
"""

from __future__ import annotations

import logging
import os
import posixpath
import shlex
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Dict, List, Optional, Sequence, Type

from . import environment, jobs, plugins, raycluster, secrets, sync
from .config import ClusterConfig, load_config, parse_config, provider_problems
from .errors import ClusterConfigurationError, ClusterError, FlambeClusterError, RemoteCommandError, UsageError
from .paths import check_relative_path, home_path
from .records import ClusterInstances, Endpoint, Instance, RemoteEnvironment, Resources, Role
from .ssh import SSHPool, key_line, openssh_options
from .state import ClusterState, RunJournal

logger = logging.getLogger(__name__)

UPLOAD_WARN_LIMIT_MB = 10
REMOTE_DIRS = ("extensions",)


class Cluster:
    """One orchestrator and ``factories_num`` factories, on any provider.

    Build it from a validated :class:`ClusterConfig`, from the seed's keyword
    parameters (``Cluster(name=..., factories_num=..., key=..., username=...,
    provider="ssh", orchestrator_ip=..., ...)``) or from a YAML file
    (:meth:`from_yaml`).  Use it as a context manager: on an error inside the
    block it rolls back what this run created, logs the error, keeps it in
    :attr:`error` and suppresses it (the seed's contract); library code never
    exits the process.
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
        **options: Any,
    ) -> None:
        if config is None:
            raw = {"provider": provider, "name": name, "key": key, "username": username, **options}
            if factories_num is not None:
                raw["factories_num"] = factories_num
            if setup_cmds is not None:
                raw["setup_cmds"] = setup_cmds
            config = parse_config({k: v for k, v in raw.items() if v is not None})
        self.config = config
        self.hooks = plugins.make_plugin_manager(config.provider).hook
        self.state = ClusterState.for_cluster(config.name, config.state_dir)
        self.orchestrator: Optional[Instance] = None
        self.factories: List[Instance] = []
        self.error: Optional[BaseException] = None
        self.on_step: Callable[[str], None] = lambda message: logger.info("%s", message)
        self._pool: Optional[SSHPool] = None
        self._run_journal: Optional[RunJournal] = None
        self._orch_home: Optional[str] = None
        self.resources: Optional[Dict[Instance, Resources]] = None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], validate: bool = True) -> "Cluster":
        """A cluster described by a YAML file (``provider:`` key or a seed tag).

        ``validate=False`` skips the provider's (possibly online) validation:
        for commands on a cluster that already exists.
        """
        return cls(config=load_config(path, validate=validate))

    # --- the seed's fields

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def factories_num(self) -> int:
        return self.config.factories_num

    @property
    def key(self) -> Path:
        return self.config.key

    @property
    def username(self) -> str:
        return self.config.username

    @property
    def setup_cmds(self) -> List[str]:
        return list(self.config.setup_cmds)

    # --- names

    def get_orchestrator_name(self) -> str:
        """The orchestrator's name: ``<name>_orchestrator``."""
        return f"{self.name}_orchestrator"

    def get_factory_basename(self) -> str:
        """The factories' base name: ``<name>_factory`` (append an index per factory)."""
        return f"{self.name}_factory"

    @property
    def remote_key_name(self) -> str:
        """File name of the cluster key under ``~/.ssh`` on every host."""
        return f"flambe-cluster-{self.name}"

    # --- instance records (the seed's get_orchestrator/get_factory/get_gpu_factory)

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

    # --- plumbing

    @property
    def pool(self) -> SSHPool:
        """The cluster's SSH connections (created on first use)."""
        if self._pool is None:
            self.state.ensure()
            self._pool = SSHPool(
                username=self.username,
                key_path=self.key,
                known_hosts=self.state.known_hosts,
                host_key_policy=self.config.host_key_policy,
                connect_timeout=self.config.connect_timeout,
                command_timeout=self.config.command_timeout,
                vouched_keys=lambda instance: self.hooks.flambe_cluster_host_keys(config=self.config, instance=instance),
            )
        return self._pool

    @property
    def journal(self) -> RunJournal:
        """This run's journal handle (one per Cluster object)."""
        if self._run_journal is None:
            self._run_journal = self.state.ensure().journal.start_run()
        return self._run_journal

    def _require_instances(self) -> Instance:
        if self.orchestrator is None:
            raise ClusterError(
                f"cluster {self.name!r}: no instances loaded; call load_all_instances() or find_instances() first"
            )
        return self.orchestrator

    def _set_instances(self, instances: ClusterInstances) -> None:
        if instances.orchestrator.role is not Role.ORCHESTRATOR or any(f.role is not Role.FACTORY for f in instances.factories):
            raise ClusterError(f"provider {self.config.provider!r} returned instances with the wrong roles")
        if len(instances.factories) != self.factories_num:
            raise ClusterError(
                f"provider {self.config.provider!r} returned {len(instances.factories)} factories for cluster "
                f"{self.name!r}, expected {self.factories_num}"
            )
        self.orchestrator = instances.orchestrator
        self.factories = list(instances.factories)

    def _get_all_hosts(self) -> List[Instance]:
        """The orchestrator followed by every factory."""
        return [self._require_instances(), *self.factories]

    def ssh_options(self) -> List[str]:
        """OpenSSH options for subprocesses (rsync): the cluster's key and pinned host keys."""
        return openssh_options(self.key, self.state.known_hosts, self.config.connect_timeout)

    # --- lifecycle

    def load_all_instances(self) -> None:
        """Find or create every instance through the provider (idempotent; creations journaled)."""
        self.on_step(f"finding or creating {1 + self.factories_num} instances ({self.config.provider})")
        instances = self.hooks.flambe_cluster_load_instances(config=self.config, journal=self.journal)
        self._set_instances(instances)

    def find_instances(self) -> bool:
        """Load the existing instances without creating anything; False if the cluster does not exist."""
        instances = self.hooks.flambe_cluster_find_instances(config=self.config)
        if instances is None:
            return False
        self._set_instances(instances)
        return True

    def wait_until_accessible(self) -> None:
        """Connect to every host (one deadline for all); raises naming each host that failed."""
        hosts = self._get_all_hosts()
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
            instances=ClusterInstances(self.orchestrator, self.factories),
            journal=self.journal,
            run=lambda host, command: self.pool.run(host, command).stdout,
        )

    def _rollback_keeping_error(self) -> None:
        """Roll back after a failure; a failing rollback is logged, the original error stays the one raised."""
        try:
            self.rollback_env()
        except Exception as rollback_error:  # noqa: BLE001 - reported; the run's own error is what the user sees
            logger.error("rollback of cluster %r failed: %s", self.name, rollback_error)

    def run_cmds(self, setup_cmds: List[str]) -> None:
        """Run each setup command on every host at once, in order.

        Raises :class:`RemoteCommandError` naming every host where a command
        failed; later commands do not run after a failure.
        """
        hosts = self._get_all_hosts()
        for index, command in enumerate(setup_cmds, 1):
            self.on_step(f"setup command {index}/{len(setup_cmds)} on {len(hosts)} hosts: {command}")
            self.pool.run_all(hosts, command)

    def execute_on(self, hosts: List[Instance], command: str, check: bool = True):
        """Run a shell command line on ``hosts`` at once; returns results per host."""
        return self.pool.run_all(hosts, command, check=check)

    # --- folders

    def create_dirs(self, relative_dirs: List[str]) -> None:
        """Create folders (relative to each host's home) on every host; existing ones are kept."""
        self.create_dirs_on(self._get_all_hosts(), relative_dirs)

    def existing_dir(self, _dir: str) -> bool:
        """Whether the folder ``$HOME/_dir`` exists on at least one host."""
        path = check_relative_path(_dir, "existing_dir path")
        results = self.pool.run_all(self._get_all_hosts(), f"test -d {home_path(path)}", check=False)
        return any(result.ok for result in results.values())

    def remove_dir(self, _dir: str, content_only: bool = True, all_hosts: bool = True) -> None:
        """Remove ``$HOME/_dir`` (or only what is inside it) on all hosts or the orchestrator only."""
        path = home_path(check_relative_path(_dir, "remove_dir path"))
        if content_only:
            command = f"if [ -d {path} ]; then find {path} -mindepth 1 -maxdepth 1 -exec rm -rf -- {{}} +; fi"
        else:
            command = f"rm -rf -- {path}"
        hosts = self._get_all_hosts() if all_hosts else [self._require_instances()]
        self.pool.run_all(hosts, command)

    def get_orch_home_path(self) -> str:
        """The orchestrator's home folder (asked once, then remembered)."""
        if self._orch_home is None:
            result = self.pool.run(self._require_instances(), 'printf %s "$HOME"')
            self._orch_home = result.stdout
        return self._orch_home

    # --- keys

    def _remote_key_files(self) -> tuple[str, str, str]:
        base = f".ssh/{self.remote_key_name}"
        return base, f"{base}.pub", f"{base}.known_hosts"

    def cluster_known_hosts(self) -> str:
        """known_hosts lines for every host under its private and public names, from the keys pinned here."""
        lines = []
        for instance in self._get_all_hosts():
            names = sorted({instance.private.known_hosts_name, instance.public.known_hosts_name})
            lines.append(f"{','.join(names)} {key_line(self.pool.host_key(instance))}")
        return "\n".join(lines) + "\n"

    def cluster_has_key(self) -> bool:
        """Whether every host holds this cluster's key pair and authorises its public key."""
        key = self.state.key_pair(comment=self.remote_key_name)
        private, public, known = self._remote_key_files()
        quoted = shlex.quote(key.public_line)
        command = (
            f"test -f {home_path(private)} && test -f {home_path(known)} && "
            f"grep -qxF {quoted} {home_path(public)} && grep -qxF {quoted} \"$HOME\"/.ssh/authorized_keys"
        )
        results = self.pool.run_all(self._get_all_hosts(), command, check=False)
        return all(result.ok for result in results.values())

    def distribute_keys(self) -> None:
        """Install the per-cluster key pair on every host and authorise it everywhere.

        The pair is generated once per cluster (ed25519) and kept in the local
        state folder; the private key travels on the SSH channel's stdin (never
        in a command line) and lands with mode 0600.  Each host also gets a
        known_hosts of the cluster's hosts, so hosts talk to each other with
        ``StrictHostKeyChecking=yes``.
        """
        key = self.state.key_pair(comment=self.remote_key_name)
        private, public, known = self._remote_key_files()
        self.on_step(f"distributing the cluster key to {len(self._get_all_hosts())} hosts")
        pub = shlex.quote(key.public_line)
        command = "; ".join(
            [
                "set -e",
                "umask 077",
                'mkdir -p "$HOME"/.ssh',
                'chmod 700 "$HOME"/.ssh',
                f"cat > {home_path(private + '.tmp')}",
                f"mv -f {home_path(private + '.tmp')} {home_path(private)}",
                f"printf '%s\\n' {pub} > {home_path(public)}",
                f"printf %s {shlex.quote(self.cluster_known_hosts())} > {home_path(known)}",
                'touch "$HOME"/.ssh/authorized_keys',
                'chmod 600 "$HOME"/.ssh/authorized_keys',
                f"grep -qxF {pub} \"$HOME\"/.ssh/authorized_keys || printf '%s\\n' {pub} >> \"$HOME\"/.ssh/authorized_keys",
            ]
        )
        secret = key.private_path.read_bytes()
        self.pool.map(self._get_all_hosts(), lambda host: self.pool.run(host, command, stdin=secret))

    # --- files

    def send_local_content(self, content: Dict[str, str], dest: str, all_hosts: bool = False) -> Dict[str, str]:
        """Send local files or folders to ``$HOME/<dest>/<key>/`` on the orchestrator (and factories).

        Returns a new dict from each key to the absolute path on the
        orchestrator.  Warns when more than ``UPLOAD_WARN_LIMIT_MB`` are sent.
        Keys must be plain names (no ``/``); ``dest`` a relative path.
        """
        dest = check_relative_path(dest, "send_local_content dest")
        for name, local in content.items():
            if not name or "/" in name or name in (".", "..") or "\0" in name:
                raise UsageError(f"send_local_content key must be a plain name without '/', got {name!r}")
            if not Path(local).exists():
                raise UsageError(f"send_local_content: local path {local!r} (for {name!r}) does not exist")
        size_mb = sum(_size_bytes(Path(p)) for p in content.values()) / 2**20
        if size_mb > UPLOAD_WARN_LIMIT_MB:
            logger.warning(
                "Uploading %.1f MB to the cluster (more than %d MB); this may take a while.", size_mb, UPLOAD_WARN_LIMIT_MB
            )
        hosts = self._get_all_hosts() if all_hosts else [self._require_instances()]
        folders = [posixpath.join(dest, name) for name in content]
        self.create_dirs_on(hosts, folders)
        home = self.get_orch_home_path()
        result = {}
        for (name, local), folder in zip(content.items(), folders):
            self.pool.map(hosts, lambda host: self.upload(host, [Path(local)], folder + "/"))
            result[name] = posixpath.join(home, folder, Path(local).absolute().name)
        return result

    def create_dirs_on(self, hosts: List[Instance], relative_dirs: List[str]) -> None:
        """Like :meth:`create_dirs`, on the given hosts only."""
        if not relative_dirs:
            return
        paths = [check_relative_path(d, "folder") for d in relative_dirs]
        self.pool.run_all(hosts, "mkdir -p -- " + " ".join(home_path(p) for p in paths))

    def upload(self, host: Instance, sources: List[Path | str], relative_dest: str, delete: bool = False) -> None:
        """rsync local ``sources`` into ``$HOME/<relative_dest>`` on ``host`` (a source ending in ``/``: its contents)."""
        self.pool.connection(host)  # pins the host key before OpenSSH checks it strictly
        sync.rsync_to(
            host.label,
            sources,
            sync.remote_spec(self.username, host.endpoint, relative_dest),
            ssh_options=self.ssh_options(),
            port=host.endpoint.port,
            timeout=self.config.command_timeout,
            delete=delete,
        )

    def download(self, host: Instance, relative_source: str, local: Path) -> None:
        """rsync ``$HOME/<relative_source>`` on ``host`` to the local path ``local``."""
        self.pool.connection(host)
        sync.rsync_from(
            host.label,
            sync.remote_spec(
                self.username,
                host.endpoint,
                check_relative_path(relative_source, "remote path") + ("/" if relative_source.endswith("/") else ""),
            ),
            local,
            ssh_options=self.ssh_options(),
            port=host.endpoint.port,
            timeout=self.config.command_timeout,
        )

    def rsync_orch(self, folder: str) -> None:
        """Copy ``$HOME/<folder>`` from the orchestrator to every factory at once (the seed's API)."""
        self.fan_out(folder, self.factories)

    def fan_out(self, folder: str, factories: List[Instance]) -> None:
        """Copy ``$HOME/<folder>`` from the orchestrator to ``factories`` at once (mirroring it there)."""
        self._orchestrator_rsync(folder, factories, push=True)

    def gather(self, folder: str, factories: List[Instance]) -> None:
        """Merge ``$HOME/<folder>`` of each factory into the orchestrator's, all at once."""
        self._orchestrator_rsync(folder, factories, push=False)

    def _orchestrator_rsync(self, folder: str, factories: List[Instance], push: bool) -> None:
        """rsync between the orchestrator and each factory, run on the orchestrator.

        Uses the cluster key and the cluster's known_hosts from
        :meth:`distribute_keys` (hosts verify each other strictly); raises one
        error naming every factory that failed.
        """
        folder = check_relative_path(folder, "folder")
        orchestrator = self._require_instances()
        private, _public, known = self._remote_key_files()

        def command(factory: Instance) -> str:
            # rsync splits -e itself (honouring single quotes); the shell expands $HOME inside the double
            # quotes. Not `~`: OpenSSH expands that to the passwd home, which need not be $HOME.
            ssh = (
                f'"ssh -p {factory.private.port} -i \'$HOME/{private}\' -o IdentitiesOnly=yes -o BatchMode=yes '
                f'-o ConnectTimeout={max(1, int(self.config.connect_timeout))} '
                f'-o StrictHostKeyChecking=yes -o \'UserKnownHostsFile=$HOME/{known}\'"'
            )
            local, remote = home_path(folder + "/"), shlex.quote(sync.remote_spec(self.username, factory.private, folder + "/"))
            source, target = (local, remote) if push else (remote, local)
            delete = " --delete" if push else ""
            return (
                f"mkdir -p -- {home_path(folder)} && rsync {' '.join(sync.RSYNC_FLAGS)} --timeout={sync.IO_TIMEOUT}"
                f"{delete} -e {ssh} {source} {target}"
            )

        if push:
            self.create_dirs_on(factories, [folder])
        results = self.pool.map(factories, lambda factory: self.pool.run(orchestrator, command(factory), check=False))
        failures = [result for result in results.values() if not result.ok]
        if failures:
            raise RemoteCommandError(failures)

    def get_remote_env(self, user_provider: Callable[[], str]) -> RemoteEnvironment:
        """What a job on the orchestrator needs to know about the cluster (private addresses)."""
        orchestrator = self._require_instances()
        return RemoteEnvironment(
            orchestrator_ip=orchestrator.private.host,
            orchestrator_public_ip=orchestrator.public.host,
            factories_ips=tuple(f.private.host for f in self.factories),
            key=posixpath.join(self.get_orch_home_path(), self._remote_key_files()[0]),
            user=self.username,
            local_user=user_provider(),
        )

    # --- software, resources, Ray

    @property
    def remote_root(self) -> str:
        """The cluster's folder on every host, relative to the home: ``.flambe-cluster/<name>``."""
        return f".flambe-cluster/{self.name}"

    def remote_path(self, relative: str) -> str:
        """A quoted shell word for ``$HOME/<remote_root>/<relative>``."""
        return home_path(posixpath.join(self.remote_root, relative))

    def prepare_all_instances(self) -> None:
        """Give every host the cluster's Python environment with the client's flambe-cluster and Ray.

        Installs offline from a wheelhouse shipped once to the orchestrator
        and fanned out to the factories; hosts whose versions already match
        are left alone.  Also learns each host's CPUs and GPUs.
        """
        hosts = self._get_all_hosts()
        reports = environment.probe(self, hosts)
        environment.prepare(self, reports)
        self.resources = self._detect_resources(reports)

    def _detect_resources(self, reports: Dict[Instance, "environment.HostReport"]) -> Dict[Instance, Resources]:
        """CPUs (from the probe) and GPUs (through the detect_gpus hook) of every factory."""
        def detect(host: Instance) -> Resources:
            gpus = self.hooks.flambe_cluster_detect_gpus(
                config=self.config, instance=host, run=lambda command: self.pool.run(host, command).stdout
            )
            return Resources(cpu=reports[host].cpus, gpu=int(gpus or 0))

        return self.pool.map(self.factories, detect)

    def _require_resources(self) -> Dict[Instance, Resources]:
        if self.resources is None:
            self.resources = self._detect_resources(environment.probe(self, self.factories))
        return self.resources

    def contains_gpu_factories(self) -> bool:
        """Whether any factory has a GPU."""
        return any(r.gpu > 0 for r in self._require_resources().values())

    def get_max_resources(self) -> Dict[str, int]:
        """The CPUs and GPUs every factory has at least: ``{"cpu": N, "gpu": M}``."""
        resources = list(self._require_resources().values())
        return {"cpu": min(r.cpu for r in resources), "gpu": min(r.gpu for r in resources)} if resources else {"cpu": 0, "gpu": 0}

    def launch_ray_cluster(self) -> None:
        """Start the Ray head on the orchestrator (``--num-cpus=0``) and a worker on each factory.

        Starts only what is missing; returns when the head reports exactly
        ``factories_num`` alive workers, else raises naming the missing ones.
        """
        raycluster.launch(self, self._require_resources())

    def check_ray_cluster(self) -> bool:
        """Whether the head reports exactly one alive worker per factory."""
        alive = raycluster.alive_workers(self, raycluster.nodes(self))
        return len(alive) == self.factories_num and all(f.private.host in alive for f in self.factories)

    def is_ray_cluster_up(self) -> bool:
        """Whether the head answers and every factory's worker is alive."""
        return raycluster.has_environment(self, [self._require_instances()])[self.orchestrator] and self.check_ray_cluster()

    def existing_ray_cluster(self) -> List[Instance]:
        """The hosts of this cluster the Ray head reports as alive nodes."""
        if not raycluster.has_environment(self, [self._require_instances()])[self.orchestrator]:
            return []
        alive = {n["ip"] for n in raycluster.nodes(self) or () if n["alive"]}
        return [host for host in self._get_all_hosts() if host.private.host in alive]

    def shutdown_ray_cluster(self) -> None:
        """Stop this cluster's Ray nodes on every host (idempotent)."""
        self._require_instances()
        raycluster.shutdown(self)

    # --- jobs

    def existing_flambe_execution(self) -> List[Instance]:
        """The hosts running a job of this cluster (the orchestrator, or none)."""
        return [self._require_instances()] if jobs.status(self).state == "running" else []

    def shutdown_flambe_execution(self) -> None:
        """Stop the running job, if any (idempotent)."""
        jobs.stop(self)

    def execute(self, cluster_runnable: str, extensions: Dict[str, str], new_secrets: Optional[str], force: bool,
                args: Sequence[str] = ()) -> "jobs.JobStatus":
        """Run a job (a local file or folder) on the orchestrator, detached.

        Installs ``extensions`` on every host first and sends the secrets
        (``new_secrets`` names whitelisted sections, comma-separated, or None
        for all).  Refuses while a job runs unless ``force``.
        """
        self.install_extensions(extensions)
        whitelist = [s for s in new_secrets.split(",") if s] if new_secrets else None
        return jobs.submit(self, Path(cluster_runnable), args, force=force, secrets_whitelist=whitelist)

    def send_secrets(self, whitelist: Optional[List[str]] = None) -> str:
        """Send the cluster's secrets file (only ``whitelist`` sections, if given) to the orchestrator.

        Lands at ``~/<remote_root>/secrets.ini`` with mode 0600, sent on the
        SSH channel's stdin; its contents are never logged or printed.
        Returns that path relative to the home.
        """
        if self.config.secrets is None:
            raise UsageError(f"cluster {self.name!r} has no secrets file; set `secrets: PATH` in its configuration")
        payload = secrets.filtered(self.config.secrets, whitelist)
        relative = posixpath.join(self.remote_root, "secrets.ini")
        command = f"umask 077 && mkdir -p {self.remote_path('')} && cat > {self.remote_path('secrets.ini.tmp')} && mv -f {self.remote_path('secrets.ini.tmp')} {self.remote_path('secrets.ini')}"
        self.pool.run(self._require_instances(), command, stdin=payload)
        return relative

    def install_extensions(self, extensions: Dict[str, str]) -> None:
        """Install extensions on every host at once (one wheelhouse, shipped once)."""
        environment.install_extensions(self, self._get_all_hosts(), extensions)

    def install_extensions_in_orchestrator(self, extensions: Dict[str, str]) -> None:
        """Install extensions (local project folders or pip requirements) in the orchestrator's environment."""
        environment.install_extensions(self, [self._require_instances()], extensions)

    def install_extensions_in_factories(self, extensions: Dict[str, str]) -> None:
        """Install extensions (local project folders or pip requirements) in every factory's environment."""
        environment.install_extensions(self, self.factories, extensions)

    # --- validation and rollback

    def parse(self) -> None:
        """Check the configuration with the provider; raise ClusterConfigurationError listing all problems."""
        problems = provider_problems(self.hooks, self.config)
        if problems:
            raise ClusterConfigurationError(problems, self.config.source)

    def rollback_env(self) -> None:
        """Destroy what this run created (per the journal) through the provider; idempotent."""
        if self._run_journal is None:
            return
        created = self._run_journal.created()
        if not created:
            return
        self.on_step(f"rolling back {len(created)} resources created by this run")
        self.hooks.flambe_cluster_rollback(config=self.config, created=created)
        self._run_journal.journal.record_destroyed(created, run_id=self._run_journal.run_id)
        destroyed = {r.resource_id for r in created} | {i for r in created for i in r.details.get("instance_ids", ())}
        self._forget_host_keys([h for h in self.all_loaded() if h.instance_id in destroyed])

    def all_loaded(self) -> List[Instance]:
        """The instances loaded so far (empty before loading)."""
        return [self.orchestrator, *self.factories] if self.orchestrator is not None else []

    def _forget_host_keys(self, instances: List[Instance]) -> None:
        self.state.forget_host_keys({n for h in instances for n in (h.public.known_hosts_name, h.private.known_hosts_name)})

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
            except ClusterError as incomplete:
                self.on_step(f"the cluster is incomplete ({incomplete}); releasing what is left")
                exists = None
            if exists is False and not self.state.journal.outstanding():
                return False
            if exists:
                self._stop_everything()
            self.on_step(f"releasing the hosts ({self.config.provider})")
            self.hooks.flambe_cluster_terminate(
                config=self.config,
                instances=ClusterInstances(self.orchestrator, self.factories) if exists else None,
            )
            self.close()
            self._forget_host_keys([h for h in self.all_loaded() if h.instance_id is not None])
            journal = self.state.journal
            journal.record_destroyed(journal.outstanding())
            return True

    def _stop_everything(self) -> None:
        """Stop the job and Ray; best effort (with a short connect deadline) on machines about to be terminated."""
        self.on_step("stopping the job and Ray")
        if not all(h.instance_id is not None for h in self._get_all_hosts()):
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
        if self._pool is not None:
            self._pool.close()

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


def _size_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
