"""The outcome of a command on a host, and the bounded record of its output.

:class:`CommandResult` is what every remote command returns: exit code (or
timeout), the tails of stdout and stderr, and an error description naming
host, command, exit code and the end of stderr — bounded, whatever the
command printed.  :class:`OutputTail` keeps one stream's last bytes while
handing every chunk on as it arrives.  :func:`shell_join` quotes an argv
into a command line.
"""

from __future__ import annotations

import collections
import shlex
from collections.abc import Callable, Sequence

from attrs import field, frozen

from .errors import RemoteCommandError

STDERR_TAIL_LINES = 20
STDERR_TAIL_BYTES = 4000  # at most this much of stderr goes into an error message (one huge line is cut)
COMMAND_SHOWN = 300  # characters of a failed command shown in its error (long scripts are cut)


def shell_join(argv: Sequence[str]) -> str:
    """A shell command line running ``argv`` exactly, every item quoted."""
    return " ".join(shlex.quote(str(item)) for item in argv)


def shown(command: str) -> str:
    """``command`` as errors show it: cut after ``COMMAND_SHOWN`` characters."""
    return command if len(command) <= COMMAND_SHOWN else command[:COMMAND_SHOWN] + "…"


@frozen
class CommandResult:
    """The outcome of one command on one host.

    ``exit_code`` is ``None`` when the command timed out (it was then
    abandoned and its channel closed).  ``stdout_bytes`` and
    ``stderr_bytes`` are the tails of the streams: ``stdout_dropped`` and
    ``stderr_dropped`` count the bytes that came before them and were not
    kept (see ``output_limit`` of :class:`SSHPool`).
    """

    host: str
    command: str
    exit_code: int | None
    stdout_bytes: bytes = field(repr=False)
    stderr_bytes: bytes = field(repr=False)
    timeout: float | None = None
    stdout_dropped: int = 0
    stderr_dropped: int = 0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", errors="replace")

    def stderr_tail(self, lines: int = STDERR_TAIL_LINES) -> str:
        """The last ``lines`` lines of stderr, within its last ``STDERR_TAIL_BYTES`` bytes ("…" marks a cut)."""
        data = self.stderr_bytes.rstrip()
        text = data[-STDERR_TAIL_BYTES:].decode("utf-8", errors="replace")
        if len(data) > STDERR_TAIL_BYTES or self.stderr_dropped:
            text = "…" + text
        return "\n".join(text.splitlines()[-lines:])

    def describe_failure(self) -> str:
        """One block naming host, command, exit code (or timeout) and the tail of stderr.

        Bounded whatever the output: the command is cut after
        ``COMMAND_SHOWN`` characters, stderr to :meth:`stderr_tail`.
        """
        status = (f"timed out after {self.timeout:g} s" if self.exit_code is None
                  else f"exited with code {self.exit_code}")
        text = f"{self.host}: command {shown(self.command)!r} {status}"
        tail = self.stderr_tail()
        if tail:
            text += "; stderr ends with:\n" + "\n".join(f"      | {line}" for line in tail.splitlines())
        else:
            text += " (no stderr output)"
        return text

    def check(self) -> CommandResult:
        """Return self if the command succeeded, else raise :class:`RemoteCommandError`."""
        if not self.ok:
            raise RemoteCommandError([self])
        return self


class OutputTail:
    """One output stream of a command: each chunk goes to ``on_chunk`` as it arrives; the last ``limit`` bytes are
    kept."""

    def __init__(self, limit: int, on_chunk: Callable[[bytes], None] | None) -> None:
        self.limit = limit
        self.on_chunk = on_chunk
        self.received = 0
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0

    def add(self, chunk: bytes) -> None:
        if self.on_chunk is not None:
            self.on_chunk(chunk)
        self.received += len(chunk)
        self._chunks.append(chunk)
        self._size += len(chunk)
        while self._size - len(self._chunks[0]) >= self.limit:  # the oldest chunk lies wholly before the tail
            self._size -= len(self._chunks.popleft())

    def data(self) -> bytes:
        """The tail: the last ``limit`` bytes received."""
        data = b"".join(self._chunks)
        return data[max(0, len(data) - self.limit):]

    @property
    def dropped(self) -> int:
        """How many bytes came before the tail and were not kept."""
        return max(0, self.received - self.limit)
