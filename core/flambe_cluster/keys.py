"""The per-cluster key pair on every host, so hosts reach each other verified.

The pair is generated once per cluster (ed25519) and kept in the local state
folder; the private key travels on the SSH channel's stdin (never in a
command line) and lands with mode 0600.  Each host also gets a known_hosts
of the cluster's hosts, pinned from the keys the client verified, so hosts
talk to each other with ``StrictHostKeyChecking=yes``.
"""

from __future__ import annotations

import shlex

from .hostkeys import key_line
from .paths import home_path
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
