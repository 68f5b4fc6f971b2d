"""Local files and folders sent to the hosts (the seed's ``send_local_content``)."""

from __future__ import annotations

import logging
import posixpath
from pathlib import Path
from typing import Mapping

from .errors import UsageError
from .paths import check_relative_path
from .session import HostSession

logger = logging.getLogger(__name__)

UPLOAD_WARN_LIMIT_MB = 10


def send_local_content(session: HostSession, content: Mapping[str, str], dest: str, all_hosts: bool = False) -> dict[str, str]:
    """Send local files or folders to ``$HOME/<dest>/<key>/`` on the orchestrator (and the factories).

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
        logger.warning("Uploading %.1f MB to the cluster (more than %d MB); this may take a while.", size_mb, UPLOAD_WARN_LIMIT_MB)
    hosts = session.hosts() if all_hosts else [session.require_orchestrator()]
    folders = [posixpath.join(dest, name) for name in content]
    session.create_dirs_on(hosts, folders)
    home = session.orchestrator_home()
    result = {}
    for (name, local), folder in zip(content.items(), folders):
        session.pool.map(hosts, lambda host: session.upload(host, [Path(local)], folder + "/"))
        result[name] = posixpath.join(home, folder, Path(local).absolute().name)
    return result


def _size_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
