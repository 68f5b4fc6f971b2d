"""What every command of the command line shares: consoles, verbosity, exit codes, the group, loading a cluster.

Output goes to three consoles: :data:`out` (stdout) for what a command
exists to show (tables, JSON, a job's output), :data:`note` (stderr) for
progress and notices, silenced by ``-q``, and :data:`err` (stderr) for
errors, always shown.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, overload

import click
from rich.console import Console

from .. import __version__, plugins
from ..cluster import Cluster
from ..config import provider_of, read_config_file
from ..converters import SAFE_NAME, to_optional_path
from ..errors import FlambeClusterError, UsageError
from ..progress import STEPS_LOGGER, Display
from ..providerhooks import ProviderHooks
from ..state import ClusterState, state_home

out = Console(highlight=False, soft_wrap=True)
note = Console(stderr=True, highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
_VERBOSITY = "flambe_cluster.verbosity"
_LEVELS = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}
_Function = TypeVar("_Function", bound=Callable[..., Any])


def project_loggers() -> list[str]:
    """The loggers verbosity applies to: the core's and each installed provider's package (found without importing)."""
    return sorted({"flambe_cluster", *(p.target.split(":")[0].split(".")[0] for p in plugins.installed_providers())})


#: How many run logs (see :func:`start_run_log`) the state folder keeps.
RUN_LOGS_KEPT = 30
_STDERR: list[logging.Handler] = []  # the one stderr handler configure_logging made


class _NotTheSteps(logging.Filter):
    """Keeps the steps (already printed by the display) out of stderr: they are logged for the run's log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != STEPS_LOGGER


def configure_logging() -> None:
    """Log records as ``LEVEL name: message`` on stderr, warnings and up; paramiko's log off (its transport
    thread logs tracebacks of failures that come back as flambe-cluster's own errors: unreachable host,
    refused key).  Cheap: no provider is looked up (``-v``/``-q`` do that, through :func:`set_verbosity`)."""
    if not _STDERR:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.WARNING)
        handler.addFilter(_NotTheSteps())
        logging.getLogger().addHandler(handler)
        _STDERR.append(handler)
    logging.getLogger().setLevel(logging.WARNING)
    logging.getLogger("paramiko").setLevel(logging.CRITICAL)


def set_verbosity(verbosity: int) -> None:
    """-1 (``-q``): errors only, notes silenced; 0: warnings; 1: the project's info; 2: the project's debug.

    Only the project's own loggers go below WARNING: other libraries
    (botocore, urllib3) stay at WARNING, or ERROR with ``-q``.  paramiko's
    log is off (see :func:`configure_logging`).  The project's loggers keep
    their debug records for the run's log; stderr shows what the verbosity asks.
    """
    verbosity = max(-1, min(verbosity, 2))
    configure_logging()
    for name in project_loggers():
        logging.getLogger(name).setLevel(logging.DEBUG)
    _STDERR[0].setLevel(_LEVELS[verbosity])
    logging.getLogger().setLevel(_LEVELS[min(verbosity, 0)])
    note.quiet = verbosity < 0


def start_run_log(command: str) -> Path | None:
    """Write this run's whole log — the steps shown, and the project's debug records — to
    ``<state folder>/logs/<time>-<pid>-<command>.log`` (0600; the newest :data:`RUN_LOGS_KEPT` are kept);
    returns its path, or None when the state folder cannot be written (the run goes on without one)."""
    folder = state_home() / "logs"
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        for old in sorted(folder.glob("*.log"))[:-RUN_LOGS_KEPT]:
            old.unlink(missing_ok=True)
        path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{command}.log"
        path.touch(mode=0o600)
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError:
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    for name in project_loggers():
        logging.getLogger(name).setLevel(logging.DEBUG)
    logging.getLogger(__name__).debug("flambe-cluster %s: %s", __version__, " ".join(sys.argv))
    return path


def _count_verbosity(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """Add ``-v`` (+1 each) and ``-q`` (-1) wherever they appear, before or after the subcommand."""
    if value:
        meta = ctx.find_root().meta
        meta[_VERBOSITY] = meta.get(_VERBOSITY, 0) + (value if param.name == "verbose" else -1)
        set_verbosity(meta[_VERBOSITY])


def verbosity_options(function: _Function) -> _Function:
    """``-v/--verbose`` (count) and ``-q/--quiet``, accepted by the group and by every command."""
    function = click.option("-q", "--quiet", is_flag=True, expose_value=False, callback=_count_verbosity,
                            help="Print only errors (and what the command exists to show).")(function)
    return click.option("-v", "--verbose", count=True, expose_value=False, callback=_count_verbosity,
                        help="More log output of flambe-cluster itself (-v info, -vv debug).")(function)


class Group(click.Group):
    """The command group: every command it registers takes ``-v`` and ``-q`` too."""

    @overload
    def command(self, __func: Callable[..., Any]) -> click.Command: ...

    @overload
    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], click.Command]: ...

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], click.Command] | click.Command:
        if args and callable(args[0]):  # used bare: @cli.command
            decorate: Callable[[Callable[..., Any]], click.Command] = self.command(*args[1:], **kwargs)
            return decorate(args[0])
        register = super().command(*args, **kwargs)
        return lambda function: register(verbosity_options(function))


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flambe-cluster")
@verbosity_options
def cli() -> None:
    """Create, use and tear down flambe clusters: one orchestrator and N factories.

    Shell completion (bash): eval "$(_FLAMBE_CLUSTER_COMPLETE=bash_source flambe-cluster)".
    """


def load(config_path: str, validate: bool = False) -> Cluster:
    """The cluster of a file, its steps and what happens inside them shown on stderr (a :class:`Display`; close it
    with :func:`close`)."""
    cluster = Cluster.from_yaml(config_path, validate=validate)
    display = Display(note)
    cluster.on_step = display
    cluster.on_progress = display.event
    return cluster


def close(cluster: Cluster) -> None:
    """Close the cluster's connections and end its display's live area (before anything else is printed)."""
    try:
        cluster.close()
    finally:
        if isinstance(cluster.on_step, Display):
            cluster.on_step.close()


class NeverUp(NamedTuple):
    """A cluster never brought up from this state folder (see :func:`never_brought_up`)."""

    name: str
    provider: str
    state: Path  # its state folder, absent

    def __str__(self) -> str:
        return (f"cluster {self.name!r} does not exist: it was never brought up from this state folder "
                f"({self.state} is absent); create it with `flambe-cluster up CONFIG`")


def never_brought_up(config_path: str) -> NeverUp | None:
    """The cluster a file names when only its state folder could show it exists and that folder is absent;
    None otherwise (the cluster is then loaded as usual, and its file's problems said as usual).

    A provider that cannot find machines by tags (``flambe_cluster_sweep``:
    ``ssh``'s machines are the user's, ``local``'s are in the state folder)
    knows a cluster through its state folder alone, which ``up`` creates
    first.  Without it a command that only looks (``status``, ``logs``) has
    nothing to look at, and must not create anything for it either: loading
    the cluster (a ``local`` client key) or connecting (pinned host keys)
    would make a state folder that ``list`` then shows.  Only the file is read.
    """
    try:
        raw = read_config_file(config_path)
        provider, name = provider_of(raw, config_path), raw.get("name")
        if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
            return None
        state = ClusterState.for_cluster(name, to_optional_path(raw.get("state_dir")))
        if state.root.exists():
            return None
        hooks = ProviderHooks(plugins.make_plugin_manager(provider))
    except (FlambeClusterError, ValueError):
        return None  # said as usual by loading the cluster
    if hooks.implements("flambe_cluster_sweep"):
        return None  # the provider finds the cluster's machines wherever it was made: it is asked
    return NeverUp(name, provider, state.root)


@contextlib.contextmanager
def opened(config_path: str, must_exist: bool = True, looks_only: bool = False) -> Iterator[Cluster]:
    """The cluster of a file, its existing instances loaded (or UsageError), connections closed after.

    ``looks_only`` (a command that only reads, as ``logs``): a cluster never
    brought up from this state folder (see :func:`never_brought_up`) is
    refused with UsageError before anything is loaded or created.
    """
    if looks_only:
        unknown = never_brought_up(config_path)
        if unknown is not None:
            raise UsageError(str(unknown))
    cluster = load(config_path)
    try:
        if must_exist and not cluster.find_instances():
            raise UsageError(f"cluster {cluster.name!r} does not exist yet; create it with `flambe-cluster up CONFIG`")
        yield cluster
    finally:
        close(cluster)


class VerbatimTail(click.Command):
    """A command whose last argument takes every word from its start on, options included, verbatim.

    The tail starts at the ``word``-th positional word (``inclusive``) or
    right after it; options before it are the command's own.  A ``--``
    before the tail starts it too (and one right after an exclusive start
    word is dropped: ``submit CONFIG PATH -- ARGS`` still works).
    """

    def __init__(self, *args: Any, word: int, inclusive: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.word, self.inclusive = word, inclusive

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        takes_value = {name for p in self.params if isinstance(p, click.Option) and not (p.is_flag or p.count)
                       for name in p.opts}
        seen, index = 0, 0
        while index < len(args) and args[index] != "--":
            if args[index] in takes_value:
                index += 2
                continue
            if not args[index].startswith("-") or args[index] == "-":
                seen += 1
                if seen == self.word:
                    start = index if self.inclusive else index + 1
                    tail = args[start:]
                    if not self.inclusive and tail[:1] == ["--"]:
                        tail = tail[1:]
                    args = [*args[:start], "--", *tail]
                    break
            index += 1
        return super().parse_args(ctx, args)


LOCK_WAIT = click.option("--wait", "lock_wait", type=float, default=0.0, show_default=True, metavar="SECONDS",
                         help="Seconds to wait when another process is changing this cluster.")
CONFIG = click.argument("config", type=click.Path(dir_okay=False))
