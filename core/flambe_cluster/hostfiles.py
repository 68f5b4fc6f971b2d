"""Files and folders on the cluster's hosts, relative to each home: folders, the environment's marker, the secrets.

Functions of a :class:`~flambe_cluster.session.HostSession` (the steps above
use them; the session itself only connects and moves files).  Every path is
checked to stay inside the home and quoted for the shell.
"""

from __future__ import annotations

import configparser
import posixpath
from collections.abc import Sequence
from pathlib import Path

from . import secrets
from .errors import UsageError
from .paths import check_relative_path, home_path
from .records import Instance
from .session import ENVIRONMENT_MARKER, HostSession

#: Flambé's default ``--secrets``.
DEFAULT_SECRETS = Path("~/.flambe/secrets.ini")


def orchestrator_home(session: HostSession) -> str:
    """The orchestrator's home folder (asked once)."""
    return session.home(session.require_orchestrator())


def has_environment(session: HostSession, hosts: Sequence[Instance]) -> dict[Instance, bool]:
    """Whether each host has the cluster's Python environment, installed completely (so its helpers can run).

    An environment counts only with its :data:`~flambe_cluster.session.ENVIRONMENT_MARKER`:
    one left half-built (a host stopped mid-install) does not.
    """
    results = session.run_all(hosts, f"test -f {session.remote_path(ENVIRONMENT_MARKER)}", check=False)
    return {host: result.ok for host, result in results.items()}


def create_dirs_on(session: HostSession, hosts: Sequence[Instance], relative_dirs: Sequence[str]) -> None:
    """Create folders (relative to each host's home) on ``hosts``; existing ones are kept."""
    if not relative_dirs:
        return
    paths = [check_relative_path(d, "folder") for d in relative_dirs]
    session.run_all(hosts, "mkdir -p -- " + " ".join(home_path(p) for p in paths))


def existing_dir(session: HostSession, relative: str, hosts: Sequence[Instance] | None = None) -> bool:
    """Whether the folder ``$HOME/<relative>`` exists on at least one of ``hosts`` (default: all)."""
    path = home_path(check_relative_path(relative, "existing_dir path"))
    results = session.run_all(session.hosts() if hosts is None else hosts, f"test -d {path}", check=False)
    return any(result.ok for result in results.values())


def remove_dir(session: HostSession, relative: str, content_only: bool = True,
               hosts: Sequence[Instance] | None = None) -> None:
    """Remove ``$HOME/<relative>`` (or only what is inside it) on ``hosts`` (default: all)."""
    path = home_path(check_relative_path(relative, "remove_dir path"))
    if content_only:
        command = f"if [ -d {path} ]; then find {path} -mindepth 1 -maxdepth 1 -exec rm -rf -- {{}} +; fi"
    else:
        command = f"rm -rf -- {path}"
    session.run_all(session.hosts() if hosts is None else hosts, command)


def secrets_file(session: HostSession) -> Path | None:
    """The secrets file: the configuration's ``secrets``, else Flambé's ``~/.flambe/secrets.ini`` if it exists."""
    if session.config.secrets is not None:
        return session.config.secrets
    default = DEFAULT_SECRETS.expanduser()
    return default if default.is_file() else None


def send_secrets(session: HostSession, whitelist: Sequence[str] | None = None,
                 injected: configparser.ConfigParser | None = None) -> str:
    """Send the secrets (only the ``whitelist`` sections, as the seed: see
    :func:`flambe_cluster.secrets.filtered`) to the orchestrator.

    The secrets are ``injected`` (read by ``inject_secrets``, as Flambé's
    runner does) when they hold any, else the secrets file.  Lands at
    ``~/<remote_root>/secrets.ini`` with mode 0600, sent on the SSH
    channel's stdin; its contents are never logged or printed.  Returns
    that path relative to the home.
    """
    source: Path | configparser.ConfigParser | None = injected
    if injected is None or not (injected.sections() or injected.defaults()):
        source = secrets_file(session)
    if source is None:
        raise UsageError(f"cluster {session.name!r} has no secrets file; set `secrets: PATH` in its configuration "
                         f"or write {DEFAULT_SECRETS}")
    payload = secrets.filtered(source, whitelist)
    temporary, final = session.remote_path("secrets.ini.tmp"), session.remote_path("secrets.ini")
    command = f"umask 077 && mkdir -p {session.remote_path('')} && cat > {temporary} && mv -f {temporary} {final}"
    session.pool.run(session.require_orchestrator(), command, stdin=payload)
    return posixpath.join(session.remote_root, "secrets.ini")


def remove_secrets(session: HostSession) -> None:
    """Remove what :func:`send_secrets` left on the orchestrator (idempotent): no secret outlives the cluster."""
    files = (session.remote_path("secrets.ini"), session.remote_path("secrets.ini.tmp"))
    session.pool.run(session.require_orchestrator(), f"rm -f -- {' '.join(files)}")
