"""`exec`'s streaming printer (flambe_cluster.cli.labelled): lines labelled once each, whatever the chunking."""

from __future__ import annotations

import io
import threading

from flambe_cluster.cli import labelled
from flambe_cluster.cli.labelled import LabelledLines


def printed(chunks: list[bytes]) -> bytes:
    stream = io.BytesIO()
    lines = LabelledLines("h", stream, threading.Lock())
    for chunk in chunks:
        lines.add(chunk)
    lines.finish()
    return stream.getvalue()


def test_lines_split_across_chunks_are_labelled_once():
    assert printed([b"a", b"b\nc", b"\n\nd"]) == b"[h] ab\n[h] c\n[h] \n[h] d\n"
    assert printed([]) == b"" and printed([b""]) == b""
    assert printed([b"\xff\xfe\n"]) == b"[h] \xff\xfe\n", "bytes pass through undecoded"


def test_an_endless_line_is_written_in_pieces_with_one_label(monkeypatch):
    monkeypatch.setattr(labelled, "MAX_PENDING", 4)
    assert printed([b"abc", b"def", b"gh\nij"]) == b"[h] abcdefgh\n[h] ij\n"
