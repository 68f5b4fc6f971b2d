"""The setup commands, tracked per host by digest: each runs where it has not run yet, as it reads now.

Every host records, in ``<remote_root>/setup-done``, the digests of the
setup commands it completed, in order (one per line).  A host whose record
starts with the digests of the first *k* commands of the file has done
those *k*; it runs the commands after them, and records each one once it
ran on every host that needed it.  So:

- a second ``up`` with unchanged setup runs no setup command on any host;
- a changed third command runs again, with every command after it, and
  only there (the first two stand);
- a grown cluster runs the setup only on its new hosts: the others have
  done it all;
- a repair (``new_only``) runs the setup only on hosts that have no record
  at all (a new machine): a healthy host under a running job is never
  touched, even when the file's setup changed since (the next ``up`` runs
  the changed commands there);
- ``rerun=True`` (``up --rerun-setup``) runs every command on every host.

A command that fails on some hosts is recorded on the hosts where it
worked; the failing ones keep the commands before it and run it again at
the next ``up``.  A command removed from the end of the list is not undone.
"""

from __future__ import annotations

import hashlib
import re
import shlex
from collections.abc import Sequence

from .commands import CommandResult
from .errors import RemoteCommandError
from .records import Instance
from .session import HostSession

RECORD = "setup-done"
_DIGEST = re.compile(r"[0-9a-f]{64}")
#: Seconds ``status`` gives a host to show its record.
LOOK_TIMEOUT = 10.0


def digest(command: str) -> str:
    """The digest a host records for ``command`` (its exact text)."""
    return hashlib.sha256(command.encode()).hexdigest()


def recorded(session: HostSession, hosts: Sequence[Instance],
             timeout: float | None = None) -> dict[Instance, list[str] | None]:
    """Each host's record: the digests it completed, in order ([] without a record; None when the host did not
    show it within ``timeout``).  Anything else a login prints (a profile's chatter) is not a digest."""
    if not hosts:
        return {}
    results = session.run_all(hosts, f"cat {session.remote_path(RECORD)} 2>/dev/null; true", check=False,
                              timeout=timeout)
    return {host: [w for w in result.stdout.split() if _DIGEST.fullmatch(w)] if result.ok else None
            for host, result in results.items()}


def completed(record: Sequence[str], commands: Sequence[str]) -> int:
    """How many of ``commands``, from the first, ``record`` shows completed as they read now."""
    count = 0
    for done, command in zip(record, commands, strict=False):
        if done != digest(command):
            break
        count += 1
    return count


def _record_command(session: HostSession, digests: Sequence[str]) -> str:
    folder, record = session.remote_path("."), session.remote_path(RECORD)
    lines = shlex.quote("".join(f"{d}\n" for d in digests))
    return (f"mkdir -p {folder} && partial=$(mktemp {session.remote_path(RECORD + '.XXXXXX')}) && "
            f'printf %s {lines} > "$partial" && mv -f "$partial" {record}')


def run(session: HostSession, commands: Sequence[str], rerun: bool = False, new_only: bool = False) -> None:
    """Run each of ``commands`` on every host that has not completed it (all of them with ``rerun``; with
    ``new_only``, only on hosts without a record), in order, each command on its hosts at once.  Raises
    :class:`~flambe_cluster.errors.RemoteCommandError` naming each host a command failed on, once the hosts
    where it worked have recorded it (the commands after it do not run)."""
    if not commands:
        return
    hosts = session.hosts()
    records = {h: [] for h in hosts} if rerun else recorded(session, hosts)
    counts = {h: completed(r or [], commands) for h, r in records.items()}
    if new_only:
        # a host whose record did not show (None) may be healthy and busy: left alone too, never set up anew
        left = [h for h in hosts if records[h] != [] and counts[h] < len(commands)]
        if left:
            session.on_step(f"setup commands changed or unread: left as they are on {len(left)} hosts that have "
                            "a record (the next `up` runs them there)")
        counts.update(dict.fromkeys(left, len(commands)))
    if all(n >= len(commands) for n in counts.values()):
        session.on_step(f"setup commands: all {len(commands)} already done on every host")
        return
    digests = [digest(c) for c in commands]
    for index, command in enumerate(commands, 1):
        behind = [h for h in hosts if counts[h] < index]
        if not behind:
            continue
        where = f"{len(behind)} hosts" if len(behind) == len(hosts) else f"{len(behind)} of {len(hosts)} hosts"
        session.on_step(f"setup command {index}/{len(commands)} on {where}: {command}")
        results = session.run_all(behind, command, check=False,
                                  states=(f"running setup command {index}", f"setup command {index} done"))
        worked = [h for h in behind if results[h].ok]
        failures: list[CommandResult] = [results[h] for h in behind if not results[h].ok]
        if worked:
            session.run_all(worked, _record_command(session, digests[:index]))
        if failures:
            raise RemoteCommandError(failures)
