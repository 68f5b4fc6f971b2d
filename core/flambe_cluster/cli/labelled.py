"""Output of several hosts streamed to the terminal as it arrives, each line labelled with its host.

:class:`LabelledLines` turns one host's stream (chunks of bytes from
:meth:`~flambe_cluster.ssh.Connection.run`'s callbacks) into ``[name] line``
lines written straight to a binary stream (stdout's or stderr's buffer).
Lines of different hosts never mix: each write holds a lock shared by all
hosts' streams.  Memory stays bounded: only a line's unfinished end is
held, and a line longer than :data:`MAX_PENDING` bytes is written in pieces
(its label once, at its start).  Bytes are passed through as they came
(no decoding), so any output prints fast.
"""

from __future__ import annotations

import threading
from typing import BinaryIO

#: The most bytes of an unfinished line held before they are written anyway.
MAX_PENDING = 1 << 20


class LabelledLines:
    """One host's stream: feed it chunks (:meth:`add`), then :meth:`finish` once the command ended."""

    def __init__(self, name: str, stream: BinaryIO, lock: threading.Lock) -> None:
        self.prefix = f"[{name}] ".encode()
        self.stream = stream
        self.lock = lock
        self._pending = b""
        self._midline = False  # the current line's start (and label) was written already

    def add(self, chunk: bytes) -> None:
        data = self._pending + chunk
        end = data.rfind(b"\n")
        if end < 0:
            self._pending = data
            if len(data) > MAX_PENDING:
                self._pending = b""
                self._write(data, complete=False)
            return
        lines, self._pending = data[: end + 1], data[end + 1:]
        self._write(lines, complete=True)

    def finish(self) -> None:
        """Write what remains of an unfinished last line, ended with a newline."""
        if self._pending or self._midline:
            pending, self._pending = self._pending, b""
            self._write(pending + b"\n", complete=True)

    def _write(self, data: bytes, complete: bool) -> None:
        """Write ``data`` (whole lines if ``complete``, else a line's piece) with a label at each line's start."""
        head = b"" if self._midline else self.prefix
        body = data[:-1].replace(b"\n", b"\n" + self.prefix) + data[-1:] if complete else data
        with self.lock:
            self.stream.write(head + body)
            self.stream.flush()
        self._midline = not complete
