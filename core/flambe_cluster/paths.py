"""Remote paths: always relative to a host's home, always quoted in commands."""

from __future__ import annotations

import posixpath
import shlex
from pathlib import Path

from .errors import UsageError
from .stash import StashKey

#: Local files and folders sent to the hosts (``content.send_local_content``), by the path of their copy there,
#: kept on the session (its ``stash``): an extension named by that path is built from its local original.
SENT_CONTENT = StashKey[dict[str, Path]]()


def check_relative_path(path: str, what: str = "path") -> str:
    """Return ``path`` normalised if it is a relative path inside the home folder.

    Raises :class:`UsageError` for absolute paths, ``~``, ``..`` escaping the
    home, empty paths and NUL bytes.  Other characters (spaces, quotes, ``;``,
    ``$``, newlines) are allowed: they are always passed quoted.
    """
    if not isinstance(path, str) or not path.strip() or "\0" in path:
        raise UsageError(f"{what} must be a non-empty relative path, got {path!r}")
    if path.startswith("/") or path.startswith("~"):
        raise UsageError(f"{what} must be relative to the home folder, got {path!r}")
    normal = posixpath.normpath(path)
    if normal == "." or normal == ".." or normal.startswith("../"):
        raise UsageError(f"{what} must stay inside the home folder, got {path!r}")
    return normal


def home_path(relative: str) -> str:
    """A shell word for ``$HOME/<relative>``, with ``relative`` quoted."""
    return '"$HOME"/' + shlex.quote(relative)


def relative_to_home(path: str, home: str, what: str = "path") -> str:
    """``path`` relative to ``home``: an absolute path must lie inside ``home``, a relative one is checked as such.

    Flambé passes absolute paths built from ``get_orch_home_path()``; the
    commands here address everything relative to ``$HOME``.
    """
    if isinstance(path, str) and path.startswith("/"):
        normal = posixpath.normpath(path)
        if normal == home or not normal.startswith(home.rstrip("/") + "/"):
            raise UsageError(f"{what} must lie inside the home folder {home}, got {path!r}")
        return check_relative_path(posixpath.relpath(normal, home), what)
    return check_relative_path(path, what)
