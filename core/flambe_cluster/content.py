"""Local files and folders sent to the hosts (the seed's ``send_local_content``)."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from pathlib import Path

from . import hostfiles
from .errors import UsageError
from .paths import SENT_CONTENT, relative_to_home
from .session import HostSession
from .sync import UPLOAD_WARN_LIMIT_MB, warn_if_large

__all__ = ["UPLOAD_WARN_LIMIT_MB", "send_local_content"]


def send_local_content(session: HostSession, content: Mapping[str, str], dest: str,
                       all_hosts: bool = False) -> dict[str, str]:
    """Send the local files and folders among ``content``'s values to ``<dest>/<key>/`` on the orchestrator.

    ``dest`` is relative to the home folder, or absolute inside it (Flambé
    passes ``get_orch_home_path() + "/extensions"``).  A value that is no
    local path (a pip requirement, say) is not sent and comes back
    unchanged; every other comes back as the absolute path of its copy on
    the hosts, which the ``install_extensions_in_*`` methods accept.  With
    ``all_hosts`` the factories get the same copies, passed on from the
    orchestrator as a tree (:meth:`HostSession.fan_out`): one upload from here.  Keys must be plain
    names (no ``/``).  Warns when more than ``UPLOAD_WARN_LIMIT_MB`` are sent.
    """
    home = hostfiles.orchestrator_home(session)
    dest = relative_to_home(dest, home, "send_local_content dest")
    local = {name: Path(value).expanduser() for name, value in content.items() if Path(value).expanduser().exists()}
    for name in local:
        if not name or "/" in name or name in (".", "..") or "\0" in name:
            raise UsageError(f"send_local_content key must be a plain name without '/', got {name!r}")
    if local:
        warn_if_large(list(local.values()))
    orchestrator = session.require_orchestrator()
    folders = {name: posixpath.join(dest, name) for name in local}
    hostfiles.create_dirs_on(session, [orchestrator], list(folders.values()))
    result = dict(content)
    for name, path in local.items():
        session.upload(orchestrator, [path], folders[name] + "/")
        if all_hosts:
            session.fan_out(folders[name], session.factories, mirror=False)
        result[name] = posixpath.join(home, folders[name], path.absolute().name)
        session.stash.setdefault(SENT_CONTENT, {})[result[name]] = path.absolute()
    return result
