"""The cluster's lock on its orchestrator: two clients (two state folders, two laptops) never prepare one
cluster at once.

The local lock (:meth:`flambe_cluster.state.ClusterState.lock`) serializes
the processes that share one state folder.  Clients with state folders of
their own meet only on the hosts: :func:`held` takes an exclusive lock on the
orchestrator, in ``~/.flambe-cluster/<cluster>/lock``, held by a
command that runs there (the host's own interpreter, stdlib only: nothing
needs to be installed yet) for as long as the block lasts.  ``up`` and
``run`` hold it while they shrink, distribute keys, run setup commands,
install and start Ray, so a second client waits (``--wait SECONDS``, saying
who holds it) or refuses with :class:`~flambe_cluster.errors.ClusterBusyError`,
then finds the cluster prepared and changes nothing.

The lock lives exactly as long as its holder: the block's end ends the
command (SIGTERM), and a client that dies or loses its route ends it too —
its heartbeat (one byte a second) then meets a closed channel.  It has a
connection of its own, so a failing run, which closes the cluster's
connections at once, keeps it through its rollback.  The holder runs with
the configured ``python``, else any ``python3`` of the host (setup commands
that install the configured one have not run yet).  A holder
whose connection is silent but not closed keeps the lock until sshd notices
(its ``ClientAlive`` settings).
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import os
import shlex
import threading
from collections.abc import Callable, Iterator

from . import environment
from .commands import CommandResult
from .errors import ClusterBusyError, RemoteCommandError
from .session import HostSession

logger = logging.getLogger(__name__)

#: Seconds the lock may be held at most (a client's whole `up`); the command then ends and the lock goes.
HOLD_LIMIT = 7 * 24 * 3600.0
LOCK = "lock"  # the lock file, in the cluster's folder on the orchestrator
BUSY = 3  # the exit code of the holder when another client kept the lock past the wait

# argv: PATH WAIT HOLDER.  Prints "waiting HOLDER" once while another client holds the lock, "locked" when this
# one has it (then "." every second, until the command is ended or its channel closed), or "busy HOLDER" and
# exits 3 when the wait ran out.
_HOLD = r"""
import fcntl, os, sys, time
path, wait, holder = sys.argv[1], float(sys.argv[2]), sys.argv[3]
os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
deadline, told = time.monotonic() + wait, False
while True:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        break
    except BlockingIOError:
        other = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another client"
        if time.monotonic() >= deadline:
            print("busy " + other, flush=True)
            sys.exit(3)
        if not told:
            print("waiting " + other, flush=True)
            told = True
        time.sleep(0.5)
os.ftruncate(fd, 0)
os.pwrite(fd, holder.encode(), 0)
print("locked", flush=True)
while True:
    time.sleep(1)
    print(".", flush=True)
"""


def holder_name(session: HostSession) -> str:
    """Who holds the lock, as another client is told: user, machine, process and state folder."""
    return f"{getpass.getuser()}@{os.uname().nodename} (PID {os.getpid()}, state folder {session.state.root})"


@contextlib.contextmanager
def held(session: HostSession, wait: float = 0.0, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold the cluster's lock on its orchestrator for the block (see the module's docstring).

    While another client holds it, waits up to ``wait`` seconds (calling
    ``on_wait`` once with who holds it), then raises
    :class:`ClusterBusyError` naming the holder; nothing was changed.
    Connecting to the orchestrator may take up to ``connect_timeout`` (a
    machine still booting).
    """
    orchestrator = session.require_orchestrator()
    arguments = " ".join(["-c", shlex.quote(_HOLD), session.remote_path(LOCK), shlex.quote(f"{wait:g}"),
                          shlex.quote(holder_name(session))])
    # Before the setup commands ran, the configured interpreter may not exist yet: any Python of the host will do.
    command = (f"for p in {environment.shell_python(session)} python3 python; do "
               f'command -v "$p" >/dev/null 2>&1 && exec "$p" {arguments}; done; '
               'echo "no python3 on this host for the cluster\'s lock" >&2; exit 127')
    outcome = _Outcome(on_wait)
    release = threading.Event()
    pool = session.new_pool()  # its own connection: closing the cluster's (a failure) keeps the lock until the end

    def hold() -> None:
        try:
            outcome.ended(pool.run(orchestrator, command, timeout=HOLD_LIMIT, check=False, keep=4096,
                                   on_stdout=outcome.read, until=release), None)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread, which raises it
            outcome.ended(None, exc)

    thread = threading.Thread(target=hold, name=f"lock {session.name} on {orchestrator.label}", daemon=True)
    thread.start()
    try:
        outcome.settled.wait()
        if not outcome.locked:
            thread.join()
            outcome.raise_for(session, orchestrator.label)
        yield
        if not thread.is_alive():  # the holding command ended before the block did: another client may have it
            session.on_step(f"warning: the cluster's lock on {orchestrator.label} ended before this command did "
                            f"({outcome.error or 'the command ended'}); another client may have changed the hosts "
                            "meanwhile: run `flambe-cluster up` again to check")
    finally:
        release.set()
        pool.close()  # a connect still under way (an interrupt while waiting for the host) gives up at once
        thread.join(timeout=10)


class _Outcome:
    """What the holding command said so far: waiting (once), locked, or how it ended."""

    def __init__(self, on_wait: Callable[[str], None] | None) -> None:
        self.on_wait = on_wait
        self.locked = False
        self.settled = threading.Event()  # locked, or ended without the lock
        self.result: CommandResult | None = None
        self.error: BaseException | None = None
        self._pending = b""

    def read(self, chunk: bytes) -> None:
        self._pending += chunk
        *lines, self._pending = self._pending.split(b"\n")
        for line in lines:
            text = line.decode(errors="replace")
            if text == "locked":
                self.locked = True
                self.settled.set()
            elif text.startswith("waiting ") and self.on_wait is not None:
                self.on_wait(text[len("waiting "):])

    def ended(self, result: CommandResult | None, error: BaseException | None) -> None:
        self.result, self.error = result, error
        self.settled.set()

    def raise_for(self, session: HostSession, where: str) -> None:
        """Raise why the lock was not taken."""
        if self.error is not None:
            raise self.error
        result = self.result
        assert result is not None
        if result.exit_code == BUSY:
            holder = result.stdout.partition("busy ")[2].strip() or "another client"
            raise ClusterBusyError(
                f"cluster {session.name!r} is busy: {holder} is preparing its hosts (it holds the lock "
                f"~/{session.remote_root}/{LOCK} on the orchestrator {where}). Wait for it to finish, or pass --wait "
                "SECONDS to wait for it.")
        raise RemoteCommandError([result])  # the interpreter failed, or the folder cannot be written
