"""The per-cluster key pair on every host, so hosts reach each other verified.

The pair is generated once per cluster (ed25519) and kept in the local state
folder; the private key travels on the SSH channel's stdin (never in a
command line) and lands with mode 0600.  Each host also gets a known_hosts
of the cluster's hosts, pinned from the keys the client verified, so hosts
talk to each other with ``StrictHostKeyChecking=yes``.  ``down`` and a
shrink revoke it (:func:`revoke`): the key files and the ``authorized_keys``
line leave every host they reach, and after a shrink the hosts that stay get
a new pair (:func:`rotate`), so a machine handed back cannot log in to the
others.
"""

from __future__ import annotations

import shlex
from typing import Sequence

from .hostkeys import key_line
from .paths import home_path
from .records import Instance
from .session import HostSession


def cluster_known_hosts(session: HostSession) -> str:
    """known_hosts lines for every host under its private and public names, from the keys pinned here."""
    lines = []
    for instance in session.hosts():
        names = sorted({instance.private.known_hosts_name, instance.public.known_hosts_name})
        lines.append(f"{','.join(names)} {key_line(session.pool.host_key(instance))}")
    return "\n".join(lines) + "\n"


def has_key(session: HostSession) -> bool:
    """Whether every host holds this cluster's key pair, authorises its public key, and holds the cluster's
    known_hosts with the keys pinned here now (a host replaced at its address makes it stale)."""
    key = session.state.key_pair(comment=session.remote_key_name)
    private, public, known = session.remote_key_files()
    quoted = shlex.quote(key.public_line)
    session.pool.connect_all(session.hosts())
    command = (
        f"test -f {home_path(private)} && printf %s {shlex.quote(cluster_known_hosts(session))} | "
        f"cmp -s - {home_path(known)} && "
        f"grep -qxF {quoted} {home_path(public)} && grep -qxF {quoted} \"$HOME\"/.ssh/authorized_keys"
    )
    results = session.run_all(session.hosts(), command, check=False)
    return all(result.ok for result in results.values())


def distribute(session: HostSession) -> None:
    """Install the cluster's key pair and known_hosts on every host and authorise the key everywhere (idempotent)."""
    key = session.state.key_pair(comment=session.remote_key_name)
    private, public, known = session.remote_key_files()
    hosts = session.hosts()
    session.on_step(f"distributing the cluster key to {len(hosts)} hosts")
    pub = shlex.quote(key.public_line)
    command = "; ".join(
        [
            "set -e",
            "umask 077",
            'mkdir -p "$HOME"/.ssh',
            'chmod 700 "$HOME"/.ssh',
            f"cat > {home_path(private + '.tmp')}",
            f"mv -f {home_path(private + '.tmp')} {home_path(private)}",
            f"printf '%s\\n' {pub} > {home_path(public)}",
            f"printf %s {shlex.quote(cluster_known_hosts(session))} > {home_path(known)}",
            'touch "$HOME"/.ssh/authorized_keys',
            'chmod 600 "$HOME"/.ssh/authorized_keys',
            f"grep -qxF {pub} \"$HOME\"/.ssh/authorized_keys || printf '%s\\n' {pub} >> \"$HOME\"/.ssh/authorized_keys",
        ]
    )
    secret = key.private_path.read_bytes()
    session.pool.map(hosts, lambda host: session.pool.run(host, command, stdin=secret))


def _revoke_command(session: HostSession, public_line: str) -> str:
    """Remove the cluster's key files and its ``authorized_keys`` line (in place: the file keeps its owner and
    mode; an unreadable file fails the command rather than being emptied)."""
    private, public, known = session.remote_key_files()
    pub, keys = shlex.quote(public_line), '"$HOME"/.ssh/authorized_keys'
    return "; ".join([
        "umask 077",
        f"rm -f {home_path(private)} {home_path(private + '.tmp')} {home_path(public)} {home_path(known)}",
        f"if [ -f {keys} ]; then grep -vxF {pub} {keys} > {keys}.fc-revoke; rc=$?; "
        f"if [ $rc -le 1 ]; then cat {keys}.fc-revoke > {keys}; fi; rm -f {keys}.fc-revoke; [ $rc -le 1 ]; fi",
    ])


def revoke(session: HostSession, hosts: Sequence[Instance]) -> None:
    """Remove this cluster's key pair, known_hosts and ``authorized_keys`` line from ``hosts`` (idempotent;
    raises naming the hosts that fail)."""
    if not hosts:
        return
    line = session.state.key_pair(comment=session.remote_key_name).public_line
    command = _revoke_command(session, line)
    session.pool.map(list(hosts), lambda host: session.pool.run(host, command))


def rotate(session: HostSession, staying: Sequence[Instance]) -> None:
    """Revoke the pair on the hosts that stay and forget it here: the next :func:`distribute` installs a new one."""
    revoke(session, staying)
    session.state.forget_key_pair()
