"""Progress inside long steps: the callable the core and providers report through, and its display.

The contract is one callable, :class:`Progress`::

    progress(subject, state, *, done=None, total=None)

``subject`` is what the event is about: a host or instance name
(``my-cluster_factory0``, the names of :func:`~flambe_cluster.records.host_name`).
``state`` is a few words saying where that subject is now (``"pending"``,
``"booting"``, ``"running"``, ``"installing"``); each call replaces the
subject's previous state within the current step.  ``done`` and ``total``
(optional, bytes or any count) say how far a transfer is.  Calls may come
from any thread, must be cheap, and never raise.  Providers receive it as
the ``progress`` argument of ``flambe_cluster_load_instances`` and report
each instance's state while it boots, instead of printing.

:class:`Display` turns steps (one line each, the ``on_step`` messages) and
progress events into what the user sees on stderr: on a terminal a rich
progress area (one row per subject, a bar and bytes for transfers) under
the step lines; otherwise plain lines, each prefixed with the time
(``12:03:04 my-cluster_orchestrator: installing``), no terminal codes.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

logger = logging.getLogger(__name__)
#: Where a :class:`Display` also logs each step it shows (the command line's run log keeps them; stderr does not
#: show them twice).
STEPS_LOGGER = "flambe_cluster.steps"

#: In plain lines, a transfer's progress is printed at most this often (seconds); its end always is.
PLAIN_INTERVAL = 5.0


class Progress(Protocol):
    """The progress callable: ``progress(subject, state, *, done=None, total=None)`` (see the module's text)."""

    def __call__(self, subject: str, state: str, *, done: int | None = None, total: int | None = None) -> None:
        ...  # pragma: no cover - a protocol


def log_progress(subject: str, state: str, *, done: int | None = None, total: int | None = None) -> None:
    """The default progress callable (the Python API, no display): the project's debug log."""
    if done is not None and total:
        logger.debug("%s: %s (%s of %s)", subject, state, _amount(done), _amount(total))
    else:
        logger.debug("%s: %s", subject, state)


def _amount(count: int) -> str:
    return (f"{count / 2**20:.1f} MB" if count >= 2**20
            else f"{count / 2**10:.0f} kB" if count >= 2**10 else f"{count} B")


def on_terminal(console: Any) -> bool:
    """Whether ``console`` writes to a real terminal (not a pipe or file, whatever FORCE_COLOR says; not TERM=dumb)."""
    try:
        tty = bool(console.file.isatty())
    except (AttributeError, ValueError):
        tty = False
    return tty and console.is_terminal and not console.is_dumb_terminal


class Display:
    """Steps and progress events on a console (stderr): rich on a terminal, timestamped lines otherwise.

    Call it with a step's message (it is an ``on_step`` callback); give
    :meth:`event` as the progress callable.  The rows of a step's subjects
    show while the step runs and go when the next step starts or
    :meth:`close` is called (always call it: it ends the live area).  A
    quiet console (``-q``) shows nothing.
    """

    def __init__(self, console: Any, rich: bool | None = None) -> None:
        self.console = console
        self.started = time.monotonic()
        self.rich = on_terminal(console) if rich is None else rich
        self._lock = threading.RLock()
        self._live: Any = None  # rich.progress.Progress while a step's rows show
        self._tasks: dict[str, Any] = {}
        self._shown: dict[str, tuple[str, float]] = {}  # plain lines: subject -> (state, when printed)
        self._handlers: list[tuple[logging.StreamHandler[Any], Any]] = []

    # --- steps

    def __call__(self, message: str) -> None:
        logging.getLogger(STEPS_LOGGER).info("%s", message)
        if self.console.quiet:
            return
        with self._lock:
            self._end_rows()
            if self.rich:
                from rich.text import Text  # loaded with rich.console already

                self.console.print(Text.assemble((f"{time.monotonic() - self.started:6.1f}s", "dim"), " ", message),
                                   highlight=False)
            else:
                self._line(message)

    def close(self) -> None:
        """End the live area (idempotent)."""
        with self._lock:
            self._end_rows()

    # --- events

    def event(self, subject: str, state: str, *, done: int | None = None, total: int | None = None) -> None:
        """The progress callable (thread-safe, never raises)."""
        if self.console.quiet:
            return
        try:
            with self._lock:
                if self.rich:
                    self._row(subject, state, done, total)
                else:
                    self._plain(subject, state, done, total)
        except Exception:
            logger.debug("progress display failed", exc_info=True)

    def _plain(self, subject: str, state: str, done: int | None, total: int | None) -> None:
        """A line when the subject's state changes; within a transfer, at most every PLAIN_INTERVAL s, and its end."""
        now = time.monotonic()
        finished = done is not None and total is not None and done >= total
        shown = self._shown.get(subject)
        if shown is not None and shown[0] == state and (
                done is None or shown[1] < 0 or (not finished and now - shown[1] < PLAIN_INTERVAL)):
            return
        amount = f" ({_amount(done)} of {_amount(total)})" if done is not None and total else ""
        self._line(f"{subject}: {state}{amount}")
        self._shown[subject] = (state, -1.0 if finished else now)

    def _line(self, text: str) -> None:
        self.console.print(f"{time.strftime('%H:%M:%S')} {text}", markup=False, highlight=False)

    def _row(self, subject: str, state: str, done: int | None, total: int | None) -> None:
        if self._live is None:
            self._live = _rich_progress(self.console)
            self._live.start()
            self._route_logging()
        task = self._tasks.get(subject)
        if task is None:
            task = self._tasks[subject] = self._live.add_task(state, subject=subject, total=total)
        self._live.update(task, description=state, total=total, **({"completed": done} if done is not None else {}))
        self._live.refresh()

    def _end_rows(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
            self._restore_logging()
        self._tasks.clear()
        self._shown.clear()

    def _route_logging(self) -> None:
        """While rows show, log records on stderr go through the live area (printed above it, not through it)."""
        import sys

        proxied = getattr(sys.stderr, "rich_proxied_file", None)  # rich's stand-in for stderr while it is live
        for handler in logging.getLogger().handlers if proxied is not None else ():
            if isinstance(handler, logging.StreamHandler) and handler.stream is proxied:
                self._handlers.append((handler, handler.setStream(sys.stderr)))

    def _restore_logging(self) -> None:
        for handler, stream in self._handlers:
            handler.setStream(stream)
        self._handlers.clear()


def _rich_progress(console: Any) -> Any:
    """A rich Progress: spinner, subject, state, and for transfers a bar, bytes and speed (rich imported here,
    lazily)."""
    from rich.progress import BarColumn, DownloadColumn, ProgressColumn, SpinnerColumn, TextColumn, TransferSpeedColumn
    from rich.progress import Progress as RichProgress
    from rich.text import Text

    class WithTotal(ProgressColumn):
        """A column shown only for tasks with a total (transfers)."""

        def __init__(self, column: ProgressColumn) -> None:
            super().__init__()
            self.column = column

        def render(self, task: Any) -> Any:
            return self.column.render(task) if task.total is not None else Text("")

    return RichProgress(
        SpinnerColumn(finished_text=Text("✓", style="green")),  # a transfer that has sent everything
        TextColumn("{task.fields[subject]}", style="bold", markup=False),
        TextColumn("{task.description}", markup=False),
        WithTotal(BarColumn(bar_width=30)),
        WithTotal(DownloadColumn(binary_units=True)),
        WithTotal(TransferSpeedColumn()),
        console=console, transient=True, refresh_per_second=8, redirect_stdout=False,
    )
