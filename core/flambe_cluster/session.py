"""The host session: one cluster's hosts, connections, remote layout and file transfer.

A :class:`HostSession` is what every step that touches hosts works on: the
validated configuration, the provider's hooks, the local state folder, the
loaded orchestrator and factories, the pool of SSH connections, where things
live on the hosts, and moving files to, from and between them.  The steps
(:mod:`~flambe_cluster.keys`, :mod:`~flambe_cluster.environment`,
:mod:`~flambe_cluster.raycluster`, :mod:`~flambe_cluster.jobs`) take a
session; :class:`~flambe_cluster.cluster.Cluster` is the seed's API on top.
"""

from __future__ import annotations

import logging
import posixpath
import shlex
from collections.abc import Callable, Sequence
from pathlib import Path

from attrs import define, evolve, field

from . import sync, tree
from .commands import CommandResult, shell_join
from .errors import ClusterError, RemoteCommandError
from .paths import check_relative_path, home_path, relative_to_home
from .progress import Progress, log_progress
from .providerhooks import ProviderHooks
from .records import ClusterInstances, Endpoint, Instance, Role
from .remoteenv import RemoteEnvironment
from .settings import ClusterConfig
from .ssh import SSHPool, openssh_options, openssh_route_options
from .stash import Stash
from .state import ClusterState, RunJournal

logger = logging.getLogger(__name__)

ENVIRONMENT_MARKER = "env/flambe-session.build"
"""Under the remote root: written last by an install that succeeded, so an environment without it is incomplete."""


def cluster_key_name(cluster: str) -> str:
    """File name of the cluster key of ``cluster`` under ``~/.ssh`` on every host (and its comment)."""
    return f"flambe-cluster-{cluster}"


def _log_step(message: str) -> None:
    logger.info("%s", message)


@define
class HostSession:
    """One cluster's hosts and everything needed to work on them.

    ``hooks`` is the provider's typed face (the chosen provider plus the
    core's defaults, :class:`~flambe_cluster.providerhooks.ProviderHooks`); ``on_step`` receives one line per step
    of a long operation, ``on_progress`` what happens inside a step, per host
    (:class:`~flambe_cluster.progress.Progress`: states, bytes shipped).  Instances are loaded by
    :meth:`set_instances`; methods that need them raise :class:`ClusterError` before.  Connections open lazily
    and stay open until :meth:`close`.
    """

    config: ClusterConfig
    hooks: ProviderHooks
    state: ClusterState
    on_step: Callable[[str], None] = field(default=_log_step)
    on_progress: Progress = field(default=log_progress)
    orchestrator: Instance | None = field(default=None, init=False)
    factories: list[Instance] = field(factory=list, init=False)
    stash: Stash = field(factory=Stash, init=False)
    """What the step modules keep for the session's life, each under its own typed key (see :mod:`.stash`)."""
    _pool: SSHPool | None = field(default=None, init=False)
    run_journal: RunJournal | None = field(default=None, init=False)
    """This run's journal handle once :attr:`journal` started it (None: nothing journaled yet; setting None
    lets what follows be a new run, whose rollback undoes only what it creates)."""
    _homes: dict[Instance, str] = field(factory=dict, init=False)

    # --- names and places

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def remote_root(self) -> str:
        """The cluster's folder on every host, relative to the home: ``.flambe-cluster/<name>``."""
        return f".flambe-cluster/{self.name}"

    def remote_path(self, relative: str) -> str:
        """A quoted shell word for ``$HOME/<remote_root>/<relative>``."""
        return home_path(posixpath.join(self.remote_root, relative))

    def remote_key_files(self) -> tuple[str, str, str]:
        """The cluster key's private, public and known_hosts files, relative to each host's home."""
        base = f".ssh/{cluster_key_name(self.name)}"
        return base, f"{base}.pub", f"{base}.known_hosts"

    def helper(self, module: str, *args: str) -> str:
        """The shell line running the remote helper ``flambe_cluster.remote.<module>`` in the cluster's environment."""
        return f"{self.remote_path('env/bin/python')} -m flambe_cluster.remote.{module} {shell_join(args)}"

    @property
    def ray_head_address(self) -> str:
        """``<orchestrator private address>:<ray_port>``."""
        return f"{self.require_orchestrator().private.host}:{self.config.ray_port}"

    # --- instances

    def set_instances(self, instances: ClusterInstances) -> None:
        """Adopt what the provider returned; raises :class:`ClusterError` on wrong roles or count."""
        provider = self.config.provider
        if instances.orchestrator.role is not Role.ORCHESTRATOR or any(
                f.role is not Role.FACTORY for f in instances.factories):
            raise ClusterError(f"provider {provider!r} returned instances with the wrong roles")
        if len(instances.factories) != self.config.factories_num:
            raise ClusterError(
                f"provider {provider!r} returned {len(instances.factories)} factories for cluster "
                f"{self.name!r}, expected {self.config.factories_num}"
            )
        self.orchestrator = instances.orchestrator
        self.factories = list(instances.factories)

    def require_orchestrator(self) -> Instance:
        """The orchestrator; raises :class:`ClusterError` before instances are loaded."""
        if self.orchestrator is None:
            raise ClusterError(
                f"cluster {self.name!r}: no instances loaded; call load_all_instances() or find_instances() first"
            )
        return self.orchestrator

    def hosts(self) -> list[Instance]:
        """The orchestrator followed by every factory (raises before instances are loaded)."""
        return [self.require_orchestrator(), *self.factories]

    def instances(self) -> ClusterInstances:
        return ClusterInstances(self.require_orchestrator(), self.factories)

    # --- connections and the journal

    @property
    def pool(self) -> SSHPool:
        """The cluster's SSH connections (created on first use)."""
        if self._pool is None:
            self._pool = self.new_pool()
        return self._pool

    def new_pool(self) -> SSHPool:
        """A pool of SSH connections of its own, configured as :attr:`pool` (closing one leaves the other open)."""
        self.state.ensure()
        return SSHPool(
            username=self.config.username,
            key_path=self.config.key,
            known_hosts=self.state.known_hosts,
            ssh_config=self.config.ssh_config,
            proxy_jump=self.config.proxy_jump,
            proxy_command=self.config.proxy_command,
            host_key_policy=self.config.host_key_policy,
            connect_timeout=self.config.connect_timeout,
            command_timeout=self.config.command_timeout,
            keepalive_interval=self.config.keepalive_interval,
            keepalive_count=self.config.keepalive_count,
            vouched_keys=lambda instance: self.hooks.host_keys(self.config, instance),
        )

    @property
    def journal(self) -> RunJournal:
        """This run's journal handle (one per session)."""
        if self.run_journal is None:
            self.run_journal = self.state.ensure().journal.start_run()
        return self.run_journal

    def run_all(self, hosts: Sequence[Instance], command: str | Callable[[Instance], str], check: bool = True,
                timeout: float | None = None, states: tuple[str, str] | None = None) -> dict[Instance, CommandResult]:
        """Run a shell command line on ``hosts`` at once; see :meth:`SSHPool.run_all`.

        ``states`` (``("installing", "installed")``): each host's progress
        shows the first while its command runs, the second (or the failure)
        once it ended.
        """
        if states is None:
            return self.pool.run_all(hosts, command, check=check, timeout=timeout)
        make = command if callable(command) else (lambda _host: command)

        results = self.pool.map(hosts, lambda host: self._shown(
            host, states, lambda: self.pool.run(host, make(host), timeout=timeout, check=False)))
        failures = [result for result in results.values() if not result.ok]
        if check and failures:
            raise RemoteCommandError(failures)
        return results

    def forget_host_keys(self, instances: Sequence[Instance]) -> None:
        """Drop the pinned keys of ``instances`` (their addresses may come back as other machines)."""
        names = {n for h in instances for n in (h.public.known_hosts_name, h.private.known_hosts_name)}
        self.state.forget_host_keys(names | {self.pool.route(h).target.known_hosts_name for h in instances})

    def close(self) -> None:
        """Close the SSH connections (idempotent; they reopen on next use)."""
        if self._pool is not None:
            self._pool.close()

    # --- the orchestrator's home and the job's view of the cluster

    def home(self, host: Instance) -> str:
        """``host``'s home folder (asked once, then remembered)."""
        if host not in self._homes:
            self._homes[host] = self.pool.run(host, 'printf %s "$HOME"').stdout
        return self._homes[host]

    def relative(self, path: str, what: str = "path") -> str:
        """``path`` relative to the home: relative already, or absolute inside the orchestrator's home (Flambé's
        way)."""
        return (relative_to_home(path, self.home(self.require_orchestrator()), what) if path.startswith("/")
                else check_relative_path(path, what))

    def remote_environment(self, local_user: str) -> RemoteEnvironment:
        """What a job on the orchestrator needs to know about the cluster (private addresses)."""
        orchestrator = self.require_orchestrator()
        home = self.home(self.require_orchestrator())
        private, _public, known = (posixpath.join(home, path) for path in self.remote_key_files())
        return RemoteEnvironment(
            key=private,
            orchestrator_ip=orchestrator.private.host,
            factories_ips=tuple(f.private.host for f in self.factories),
            user=self.config.username,
            local_user=local_user,
            public_orchestrator_ip=orchestrator.public.host,
            public_factories_ips=tuple(f.public.host for f in self.factories),
            factories_ports=tuple(f.private.port for f in self.factories),
            ssh_options=tuple(self._openssh_options(private, known)),
        )

    # --- folders and files

    def ssh_options(self, host: Instance) -> list[str]:
        """OpenSSH options for subprocesses (rsync) reaching ``host`` as the pool does: same route, key, pinned host
        keys."""
        config = self.config
        return openssh_route_options(self.pool.route(host), self.state.known_hosts, config.connect_timeout,
                                     config.keepalive_interval, config.keepalive_count, config.ssh_config)

    def _openssh_options(self, key: Path | str, known_hosts: Path | str) -> list[str]:
        config = self.config
        return openssh_options(key, known_hosts, config.connect_timeout, config.keepalive_interval,
                               config.keepalive_count)

    def upload(self, host: Instance, sources: Sequence[Path | str], relative_dest: str, delete: bool = False,
               extra: Sequence[str] = (), shown: tuple[str, int] | None = None) -> None:
        """rsync local ``sources`` into ``$HOME/<relative_dest>`` on ``host`` (a source ending in ``/``: its contents).

        ``extra`` are further rsync options, passed as separate arguments.
        ``shown`` (``(state, total bytes)``): the host's progress shows the
        bytes sent so far, as rsync reports them.
        """
        on_bytes = None
        if shown is not None:
            state, total = shown
            self.on_progress(host.name, state, done=0, total=total)
            on_bytes = lambda done: self.on_progress(host.name, state, done=min(done, total), total=total)  # noqa: E731
        self.pool.connection(host)  # pins the host keys (jump hosts' too) before OpenSSH checks them strictly
        target = self.pool.route(host).target
        sync.rsync_to(
            host.label,
            list(sources),
            sync.remote_spec(target.user, Endpoint(target.host, target.port), relative_dest),
            ssh_options=self.ssh_options(host),
            port=target.port,
            timeout=self.config.command_timeout,
            delete=delete,
            extra=extra,
            on_bytes=on_bytes,
        )
        if shown is not None:
            self.on_progress(host.name, "received", done=shown[1], total=shown[1])

    def download(self, host: Instance, relative_source: str, local: Path) -> None:
        """rsync ``$HOME/<relative_source>`` on ``host`` to the local path ``local``."""
        self.pool.connection(host)
        target = self.pool.route(host).target
        source = check_relative_path(relative_source, "remote path") + ("/" if relative_source.endswith("/") else "")
        sync.rsync_from(
            host.label,
            sync.remote_spec(target.user, Endpoint(target.host, target.port), source),
            local,
            ssh_options=self.ssh_options(host),
            port=target.port,
            timeout=self.config.command_timeout,
        )

    def fan_out(self, folder: str, factories: Sequence[Instance], mirror: bool = True,
                on_arrival: Callable[[Instance], None] | None = None) -> None:
        """Copy ``$HOME/<folder>`` from the orchestrator to ``factories``, passed on from host to host as a tree.

        The orchestrator sends one copy; each factory that has the folder
        passes it on to at most :data:`~flambe_cluster.tree.FAN` more (see
        :func:`~flambe_cluster.tree.spread`, whose ``on_arrival`` this
        takes).  With ``mirror`` the factories' copies end identical (files
        only they hold are deleted); without, files are added and updated
        only: the orchestrator's folder is passed on as an exact copy in
        ``<remote_root>/passing/<folder>`` (so a factory passes on what the
        orchestrator holds, never files of its own), which each factory then
        merges into its folder.  Raises once all is done, naming every
        factory that did not get the folder (``<factory>, reached from <host
        that sent>``) while every other got it.
        """
        folder = check_relative_path(folder, "folder")
        orchestrator = self.require_orchestrator()
        self.pool.run(orchestrator, f"mkdir -p -- {home_path(folder)}")
        passing = folder if mirror else posixpath.join(self.remote_root, "passing", folder)

        def send(giver: Instance, taker: Instance) -> CommandResult:
            source = folder if giver == orchestrator else passing

            def copy() -> CommandResult:
                result = self.rsync_on(giver, home_path(source + "/"), self._remote(taker, passing + "/"),
                                       delete=True, quoted=True, port=taker.private.port,
                                       make_target=passing)
                if mirror or not result.ok:
                    return result
                # hard links, not copies: the passing copy costs no second disk (rsync replaces a file, never
                # writes into it, so a later pass leaves the merged file as it is)
                return self.pool.run(taker, f"mkdir -p {home_path(folder)} && rsync -a "
                                            f"--link-dest={home_path(passing)} "
                                            f"{home_path(passing + '/')} {home_path(folder + '/')}", check=False)

            result = self._shown(taker, (f"receiving from {giver.name}", "received"), copy)
            return evolve(result, host=f"{taker.label}, reached from {giver.label}")

        tree.spread(orchestrator, factories, send, on_arrival)

    def gather(self, folder: str, factories: Sequence[Instance]) -> None:
        """Merge ``$HOME/<folder>`` of each factory into the orchestrator's, all at once.

        Raises one :class:`RemoteCommandError` whose failures each name the
        factory they were about (first, so the command's cut cannot hide it)
        and the orchestrator that ran the command, with its exit code and
        stderr tail (rsync's, saying what went wrong between them).
        """
        folder = check_relative_path(folder, "folder")
        orchestrator = self.require_orchestrator()
        self.pool.run(orchestrator, f"mkdir -p -- {home_path(folder)}")
        results = self.pool.map(factories, lambda factory: self.rsync_on(
            orchestrator, self._remote(factory, folder + "/"), home_path(folder + "/"), quoted=True,
            port=factory.private.port))
        failures = [evolve(result, host=f"{factory.label}, reached from {orchestrator.label}")
                    for factory, result in results.items() if not result.ok]
        if failures:
            raise RemoteCommandError(failures)

    def _shown(self, host: Instance, states: tuple[str, str], run: Callable[[], CommandResult]) -> CommandResult:
        """``run()``, the host's progress showing ``states[0]`` while it runs, then ``states[1]`` or the failure."""
        self.on_progress(host.name, states[0])
        result = run()
        self.on_progress(host.name, states[1] if result.ok else f"failed (exit code {result.exit_code})")
        return result

    def _remote(self, factory: Instance, path: str) -> str:
        return shlex.quote(sync.remote_spec(self.config.username, factory.private, path))

    def rsync_on(self, host: Instance, source: str, target: str, *, port: int = 22, delete: bool = False,
                 exclude: Sequence[str] = (), quoted: bool = False, check: bool = False,
                 make_target: str | None = None) -> CommandResult:
        """Run rsync on ``host`` from ``source`` to ``target`` (either may be ``user@other:path``).

        ``host`` reaches the other host (SSH on ``port``) with the cluster
        key and the cluster's known_hosts: hosts verify each other strictly.
        ``source`` and ``target`` are quoted here unless ``quoted`` says they
        are shell words already.  The target's parent folder must exist,
        unless ``make_target`` names the target folder (relative to the
        other host's home), which is then made first.
        """
        private, _public, known = self.remote_key_files()
        # `$HOME`, not `~`: OpenSSH expands `~` to the passwd home, which need not be $HOME.
        options = self._openssh_options(f"$HOME/{private}", f"$HOME/{known}")
        ssh = sync.remote_shell_option(["-p", str(port), *options])
        words = (source, target) if quoted else (shlex.quote(source), shlex.quote(target))
        options = [*sync.RSYNC_FLAGS, f"--timeout={sync.IO_TIMEOUT}", *(["--delete"] if delete else []),
                   *(f"--exclude={shlex.quote(pattern)}" for pattern in exclude)]
        if make_target is not None:
            options.append("--rsync-path=" + shlex.quote(f"mkdir -p -- {shlex.quote(make_target)} && rsync"))
        command = f"rsync {' '.join(options)} -e {ssh} {words[0]} {words[1]}"
        return self.pool.run(host, command, check=check)
