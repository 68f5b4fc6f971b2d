"""The setup commands, tracked per host by digest: each runs where it has not run yet, as it reads now.

Every host records, in ``<remote_root>/setup-done``, the digests of the
setup commands it completed, in order (one per line).  A host whose record
starts with the digests of the first *k* commands of the file has done
those *k*; it runs the commands after them, and records each one once it
ran on every host that needed it.  So:

- a second ``up`` with unchanged setup runs no setup command on any host;
- a changed third command runs again, with every command after it, and
  only there (the first two stand);
- a repair or a grown cluster runs the setup only on its new hosts: the
  healthy ones, perhaps under a job, have done it all;
- ``rerun=True`` (``up --rerun-setup``) runs every command on every host.

A command that fails on a host leaves that host's record at the commands
before it: the next ``up`` runs it there again (and the others too where
it failed).  A command removed from the end of the list is not undone.
"""

from __future__ import annotations

import hashlib
import shlex
from collections.abc import Sequence

from .records import Instance
from .session import HostSession

RECORD = "setup-done"


def digest(command: str) -> str:
    """The digest a host records for ``command`` (its exact text)."""
    return hashlib.sha256(command.encode()).hexdigest()


def done(session: HostSession, hosts: Sequence[Instance], commands: Sequence[str]) -> dict[Instance, int]:
    """How many of ``commands``, from the first, each of ``hosts`` has completed as they read now."""
    if not hosts:
        return {}
    wanted = [digest(c) for c in commands]
    record = session.remote_path(RECORD)
    results = session.run_all(hosts, f"cat {record} 2>/dev/null || true")
    counts = {}
    for host, result in results.items():
        recorded = result.stdout.split()
        count = 0
        while count < len(wanted) and count < len(recorded) and recorded[count] == wanted[count]:
            count += 1
        counts[host] = count
    return counts


def _record_command(session: HostSession, digests: Sequence[str]) -> str:
    record = session.remote_path(RECORD)
    partial = session.remote_path(f"{RECORD}.partial")
    lines = "".join(f"{d}\n" for d in digests)
    return (f"mkdir -p {session.remote_path('.')} && printf %s {shlex.quote(lines)} > {partial} "
            f"&& mv -f {partial} {record}")


def run(session: HostSession, commands: Sequence[str], rerun: bool = False) -> None:
    """Run each of ``commands`` on every host that has not completed it (all of them with ``rerun``), in order,
    each command on its hosts at once; raises :class:`~flambe_cluster.errors.RemoteCommandError` naming each
    failing host (the commands after it do not run)."""
    if not commands:
        return
    hosts = session.hosts()
    counts = dict.fromkeys(hosts, 0) if rerun else done(session, hosts, commands)
    if all(counts[h] >= len(commands) for h in hosts):
        session.on_step(f"setup commands: all {len(commands)} already done on every host (unchanged)")
        return
    digests = [digest(c) for c in commands]
    for index, command in enumerate(commands, 1):
        behind = [h for h in hosts if counts[h] < index]
        if not behind:
            continue
        where = f"{len(behind)} hosts" if len(behind) == len(hosts) else f"{len(behind)} of {len(hosts)} hosts"
        session.on_step(f"setup command {index}/{len(commands)} on {where}: {command}")
        session.run_all(behind, command, states=(f"running setup command {index}", f"setup command {index} done"))
        session.run_all(behind, _record_command(session, digests[:index]))
