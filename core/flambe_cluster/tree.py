"""Passing what one host holds on to many hosts as a tree, so no host sends more than ``FAN`` copies.

:func:`spread` plans a complete ``FAN``-ary tree over the targets in the
order given, under the source: the source serves the first target only, the
first target the next ``FAN``, and so on; every holder passes the content on
as soon as it has it.  So the source (the orchestrator, whose link every
byte from the client crosses, and which is busy installing) sends one copy
whatever N is, and the last host is reached after about log_FAN(N) + 1
hops.  Each holder sends one copy at a time (each at full speed, so its
first child can pass on early; with one copy at a time, the source's second
copy would reach no host sooner than its first child's first copy does).

Failures never leave a host silently without the content: a target whose
copy from a factory failed is tried once more from the source; a target
whose copy failed from the source is named, and the host that tried serves
that target's subtree itself; a holder that breaks while passing on is
named, and what it had left to serve goes to its nearest working ancestor.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Sequence

from .commands import CommandResult
from .errors import FlambeClusterError, HostError, HostsFailedError, RemoteCommandError
from .records import Instance

FAN = 2


def spread(source: Instance, targets: Sequence[Instance], send: Callable[[Instance, Instance], CommandResult],
           on_arrival: Callable[[Instance], None] | None = None) -> None:
    """Pass what ``source`` holds to every target along a tree; returns when every copy and arrival is done.

    ``send(giver, taker)`` copies from ``giver`` (which holds the content)
    to ``taker`` and returns the command's result: a failed result counts
    against ``taker`` (after one more try from the source), an exception
    against ``giver``.  ``on_arrival(host)``
    runs in a thread of its own for the source at once and for each target
    as soon as it holds the content, while the copies go on.  Raises, after
    everything has finished, one error naming every host that failed (a
    single error as it is, several as :class:`HostsFailedError`); an
    exception that is no :class:`FlambeClusterError` is raised as it is.
    """
    _Spread(source, list(targets), send, on_arrival).run()


class _Spread:
    def __init__(self, source: Instance, targets: list[Instance], send: Callable[[Instance, Instance], CommandResult],
                 on_arrival: Callable[[Instance], None] | None) -> None:
        self.source, self.send, self.on_arrival = source, send, on_arrival
        self.todo = {source: collections.deque(targets[:1])}
        self.todo.update({host: collections.deque(targets[FAN * i + 1:FAN * i + 1 + FAN])
                          for i, host in enumerate(targets)})
        self.parent: dict[Instance, Instance] = {}
        self.retried: set[Instance] = set()  # targets whose copy from a factory failed, tried again from the source
        self.sending: set[Instance] = set()
        self.broken: set[Instance] = set()
        self.errors: list[BaseException] = []
        self.running = 0
        self.changed = threading.Condition()

    def run(self) -> None:
        with self.changed:
            self._arrived(self.source)
            while self.running:
                self.changed.wait()
        unexpected = [e for e in self.errors if not isinstance(e, FlambeClusterError)]
        if unexpected:
            raise unexpected[0]
        if self.errors:
            raise self.errors[0] if len(self.errors) == 1 else HostsFailedError(self.errors)  # type: ignore[arg-type]

    # Every method below runs with self.changed held.

    def _arrived(self, host: Instance) -> None:
        if self.on_arrival is not None:
            self._start(self._arrival, host)
        self._serve(host)

    def _serve(self, giver: Instance) -> None:
        """Start ``giver``'s next copy, unless one is under way or nothing is left."""
        if giver not in self.sending and giver not in self.broken and self.todo[giver]:
            self.sending.add(giver)
            self._start(self._copy, giver, self.todo[giver].popleft())

    def _start(self, work: Callable[..., None], *args: Instance) -> None:
        self.running += 1
        threading.Thread(target=self._finally_done, args=(work, *args), daemon=True,
                         name=f"flambe-tree {args[-1].name}").start()

    def _finally_done(self, work: Callable[..., None], *args: Instance) -> None:
        try:
            work(*args)
        finally:
            with self.changed:
                self.running -= 1
                self.changed.notify_all()

    def _arrival(self, host: Instance) -> None:
        try:
            assert self.on_arrival is not None  # started only when there is one
            self.on_arrival(host)
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread by run()
            with self.changed:
                self.errors.append(exc)

    def _copy(self, giver: Instance, taker: Instance) -> None:
        try:
            result, error = self.send(giver, taker), None
        except BaseException as exc:  # noqa: BLE001 - the giver broke; handed to the calling thread by run()
            result, error = None, exc
        with self.changed:
            self.sending.discard(giver)
            if error is not None:
                self._giver_broke(giver, taker, error)
            elif result is not None and result.ok:  # no error: send() returned a result
                self.parent[taker] = giver
                self._arrived(taker)
                self._serve(giver)
            elif giver is not self.source and taker not in self.retried and self.source not in self.broken:
                self.retried.add(taker)  # another giver: the source holds the content whatever else failed
                self.todo[self.source].append(taker)
                self._serve(self.source)
                self._serve(giver)
            else:
                self.errors.append(RemoteCommandError([result]))
                self.todo[giver].extend(self.todo.pop(taker))
                self._serve(giver)

    def _giver_broke(self, giver: Instance, taker: Instance, error: BaseException) -> None:
        self.errors.append(error)
        self.broken.add(giver)
        orphans = [taker, *self.todo[giver]]
        self.todo[giver].clear()
        heir = giver
        while heir in self.broken and heir in self.parent:
            heir = self.parent[heir]
        if heir in self.broken:
            names = ", ".join(h.label for h in orphans)
            self.errors.append(HostError(giver.label, f"could not pass the content on; not reached: {names}"))
            return
        self.todo[heir].extend(orphans)
        self._serve(heir)
