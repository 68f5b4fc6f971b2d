"""The secrets file: an INI file whose whitelisted sections go to the orchestrator.

Its contents are never logged, printed or put on a command line.
"""

from __future__ import annotations

import configparser
import io
import logging
from collections.abc import Sequence
from pathlib import Path

from .errors import UsageError

logger = logging.getLogger(__name__)


def read(path: Path) -> configparser.ConfigParser:
    """The secrets file at ``path``, parsed (see :func:`parse`); raises :class:`UsageError` naming the file
    (never a value) when it cannot be read or parsed."""
    try:
        with open(path) as handle:
            return parse(handle.read())
    except OSError as exc:
        raise UsageError(f"cannot read the secrets file {path}: {exc.strerror}") from None
    except configparser.Error as exc:
        raise UsageError(f"the secrets file {path} is not a valid INI file ({type(exc).__name__})") from None


def parse(text: str) -> configparser.ConfigParser:
    """INI text, ``[DEFAULT]`` kept as a section of its own (never merged into the others), keys as written."""
    # No header can name the section "\n": [DEFAULT] is then read as an ordinary section, not merged into the others.
    parser = configparser.ConfigParser(interpolation=None, default_section="\n")
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keep keys as written (AWS_ACCESS_KEY_ID)
    parser.read_string(text)
    return parser


def filtered(source: Path | configparser.ConfigParser, whitelist: Sequence[str] | None) -> bytes:
    """The INI text of ``source`` (a file, or secrets injected as Flambé does) keeping the ``whitelist`` sections.

    The seed's semantics: no whitelist, or an empty one, keeps every
    section; a whitelisted section the secrets lack is skipped (logged by
    name).  ``[DEFAULT]`` is a section like any other: its keys travel only
    when ``DEFAULT`` is whitelisted (as a ``[DEFAULT]`` section), never
    merged into the sections that are.
    """
    if isinstance(source, configparser.ConfigParser):  # written out as it is held, read back as a file would be
        written = io.StringIO()
        source.write(written)
        parser = parse(written.getvalue())
    else:
        parser = read(source)
    present = parser.sections()
    sections = present if not whitelist else [s for s in whitelist if s in present]
    missing = [s for s in whitelist or () if s not in present]
    if missing:
        logger.warning("the secrets have no section(s) %s; sending the others", ", ".join(missing))
    kept = configparser.ConfigParser(interpolation=None)
    kept.optionxform = str  # type: ignore[assignment,method-assign]
    for section in sections:
        kept[section] = dict(parser[section])
    out = io.StringIO()
    kept.write(out)
    return out.getvalue().encode()
