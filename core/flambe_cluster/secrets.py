"""The secrets file: an INI file whose whitelisted sections go to the orchestrator.

Its contents are never logged, printed or put on a command line.
"""

from __future__ import annotations

import configparser
import io
from pathlib import Path
from typing import Sequence

from .errors import UsageError


def filtered(path: Path, whitelist: Sequence[str] | None) -> bytes:
    """The INI text of ``path`` keeping only the ``whitelist`` sections (all when None).

    ``[DEFAULT]`` is a section like any other: its keys travel only when
    ``DEFAULT`` is whitelisted (as a ``[DEFAULT]`` section), never merged into
    the sections that are.  Raises :class:`UsageError` naming the file (never
    a value) when it cannot be read or parsed, or a whitelisted section is
    missing.
    """
    # No header can name the section "\n": [DEFAULT] is then read as an ordinary section, not merged into the others.
    parser = configparser.ConfigParser(interpolation=None, default_section="\n")
    parser.optionxform = str  # keep keys as written (AWS_ACCESS_KEY_ID stays upper case)
    try:
        with open(path) as handle:
            parser.read_file(handle)
    except OSError as exc:
        raise UsageError(f"cannot read the secrets file {path}: {exc.strerror}") from None
    except configparser.Error as exc:
        raise UsageError(f"the secrets file {path} is not a valid INI file ({type(exc).__name__})") from None
    sections = parser.sections() if whitelist is None else list(whitelist)
    missing = [s for s in sections if not parser.has_section(s)]
    if missing:
        raise UsageError(f"the secrets file {path} has no section(s) {', '.join(missing)}; it has {', '.join(parser.sections()) or 'none'}")
    kept = configparser.ConfigParser(interpolation=None)
    kept.optionxform = str
    for section in sections:
        kept[section] = dict(parser[section])
    out = io.StringIO()
    kept.write(out)
    return out.getvalue().encode()
