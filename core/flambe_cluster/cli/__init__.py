"""The ``flambe-cluster`` command line.

Exit codes: 0 success, 1 something failed on a host or in a cloud, 2 bad
usage or configuration (a missing extra included), 128 + N when signal N
stopped it; ``logs --follow`` exits with the job's own code.  Every error
message says what to do next.

The commands live in :mod:`.lifecycle` (providers, up, status, down),
:mod:`.work` (exec, submit, logs, pull), :mod:`.listing` (list) and
:mod:`.history` (history, cost); what they share in :mod:`.common`.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import click

from ..errors import FlambeClusterError, UsageError
from .common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, cli, configure_logging, err, start_run_log
from .history import cost, history
from .lifecycle import down, providers, status, up
from .listing import list_
from .work import attach, exec_, forward, logs, pull, stop, submit

logger = logging.getLogger(__name__)

__all__ = ["attach", "cli", "cost", "down", "exec_", "forward", "history", "list_", "logs", "main", "providers", "pull",
           "status", "stop", "submit", "up"]

#: Signals that stop a command the way Ctrl-C does: work stops, what the run created is rolled back, exit 128 + signal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived (``signum``); unwinds like Ctrl-C, so every layer rolls back and closes as for it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop_on_signals() -> None:
    """Make SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` in the main thread, once.

    Later signals are reported and ignored: the first one's rollback runs to
    its end, under the cluster's lock, exactly once (SIGKILL still ends the
    process at once).
    """
    def stop(signum: int, _frame: object) -> None:
        for each in STOP_SIGNALS:
            signal.signal(each, already_stopping)
        raise Interrupted(signum)

    def already_stopping(signum: int, _frame: object) -> None:
        err.print(f"{signal.Signals(signum).name}: already stopping (undoing what this run started)")

    for each in STOP_SIGNALS:
        signal.signal(each, stop)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the console script; exits with 0, 1 or 2 (or the job's code, or 128 + a signal)."""
    _stop_on_signals()
    configure_logging()
    words = list(argv) if argv is not None else sys.argv[1:]
    log = start_run_log(next((w for w in words if not w.startswith("-")), "flambe-cluster"))
    try:
        code = cli.main(args=list(argv) if argv is not None else None, prog_name="flambe-cluster",
                        standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        _interrupted(exc.__cause__ if isinstance(exc, click.exceptions.Abort) else exc, log)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_USAGE)
    except UsageError as exc:
        _failed(exc, EXIT_USAGE, log)
    except FlambeClusterError as exc:
        _failed(exc, EXIT_FAILED, log)
    sys.exit(code if isinstance(code, int) else EXIT_OK)


def _failed(exc: BaseException, code: int, log: Path | None) -> None:
    """Print the error and where this run's whole log is (its traceback included), then exit with ``code``."""
    logger.debug("exit %d", code, exc_info=True)
    err.print(f"error: {exc}", markup=False)
    if log is not None:
        err.print(f"the whole log of this run: {log}", markup=False)
    sys.exit(code)


def _interrupted(cause: BaseException | None, log: Path | None) -> None:
    """Exit 128 + the signal's number (130 for Ctrl-C), saying so and where the run's log is;
    what the run started was already undone."""
    signum = cause.signum if isinstance(cause, Interrupted) else signal.SIGINT
    err.print(f"interrupted ({signal.Signals(signum).name}); stopped"
              + (f"; the whole log of this run: {log}" if log is not None else ""), markup=False)
    sys.exit(128 + signum)
