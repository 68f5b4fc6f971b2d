"""The per-cluster key pair on every host, so hosts reach each other verified.

The pair is generated once per cluster (ed25519) and kept in the local state
folder; the private key travels on the SSH channel's stdin (never in a
command line) and lands with mode 0600.  Each host also gets a known_hosts
of the cluster's hosts, pinned from the keys the client verified, so hosts
talk to each other with ``StrictHostKeyChecking=yes``.  ``down`` and a
shrink revoke it (:func:`revoke`): the key files and the ``authorized_keys``
lines leave every host they reach, and after a shrink the hosts that stay get
a new pair (:func:`rotate`; :func:`distribute` drops the old line), so a
machine handed back cannot log in to the others.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from .hostkeys import key_line
from .paths import home_path
from .records import Instance
from .session import HostSession, cluster_key_name


def cluster_known_hosts(session: HostSession) -> str:
    """known_hosts lines for every host under its private and public names, from the keys pinned here."""
    lines = []
    for instance in session.hosts():
        names = sorted({instance.private.known_hosts_name, instance.public.known_hosts_name})
        lines.append(f"{','.join(names)} {key_line(session.pool.host_key(instance))}")
    return "\n".join(lines) + "\n"


# authorized_keys: `awk -v c=COMMENT "$STALE"` keeps every line but this cluster's that are not KEY (its comment
# is the line's last field; cluster names are letters, digits, '-' and '_').
_STALE = "'$NF != c || $0 == k'"
_KEYS = '"$HOME"/.ssh/authorized_keys'


def _replace_cluster_lines(comment: str, keep: str) -> str:
    """Shell: drop this cluster's ``authorized_keys`` lines other than ``keep`` ('' drops them all), through a
    temporary file moved over the original only when complete (an interrupted edit leaves the file as it was);
    the file is not rewritten when there is nothing to drop."""
    test = (f"awk -v c={shlex.quote(comment)} -v k={shlex.quote(keep)} "
            "'$NF == c && $0 != k {found = 1} END {exit !found}'")
    return (f"if [ -f {_KEYS} ] && {test} {_KEYS}; then "
            f"awk -v c={shlex.quote(comment)} -v k={shlex.quote(keep)} {_STALE} {_KEYS} > {_KEYS}.fc-tmp && "
            f"chmod 600 {_KEYS}.fc-tmp && mv -f {_KEYS}.fc-tmp {_KEYS}; fi")


def has_key(session: HostSession) -> bool:
    """Whether every host holds this cluster's key pair, authorises its public key and no other of this cluster
    (a pair rotated away), and holds the cluster's known_hosts with the keys pinned here now (a host replaced at
    its address makes it stale)."""
    key = session.state.key_pair(comment=cluster_key_name(session.name))
    private, public, known = session.remote_key_files()
    quoted, comment = shlex.quote(key.public_line), shlex.quote(cluster_key_name(session.name))
    session.pool.connect_all(session.hosts())
    command = (
        f"test -f {home_path(private)} && printf %s {shlex.quote(cluster_known_hosts(session))} | "
        f"cmp -s - {home_path(known)} && "
        f"grep -qxF {quoted} {home_path(public)} && grep -qxF {quoted} {_KEYS} && "
        f"! awk -v c={comment} -v k={quoted} '$NF == c && $0 != k {{found = 1}} END {{exit !found}}' {_KEYS}"
    )
    results = session.run_all(session.hosts(), command, check=False)
    return all(result.ok for result in results.values())


def distribute(session: HostSession) -> None:
    """Install the cluster's key pair and known_hosts on every host and authorise the key everywhere, removing
    this cluster's older keys from ``authorized_keys`` (idempotent)."""
    key = session.state.key_pair(comment=cluster_key_name(session.name))
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
            f"touch {_KEYS}",
            f"chmod 600 {_KEYS}",
            f"grep -qxF {pub} {_KEYS} || printf '%s\\n' {pub} >> {_KEYS}",
            _replace_cluster_lines(cluster_key_name(session.name), key.public_line),
        ]
    )
    secret = key.private_path.read_bytes()
    session.pool.map(hosts, lambda host: session.pool.run(host, command, stdin=secret))


def revoke(session: HostSession, hosts: Sequence[Instance]) -> None:
    """Remove this cluster's key pair, known_hosts and every ``authorized_keys`` line of this cluster (by its
    comment: no local key is needed) from ``hosts``; idempotent; raises naming the hosts that fail."""
    if not hosts:
        return
    private, public, known = session.remote_key_files()
    command = "; ".join([
        "set -e",
        "umask 077",
        f"rm -f {home_path(private)} {home_path(private + '.tmp')} {home_path(public)} {home_path(known)}",
        _replace_cluster_lines(cluster_key_name(session.name), ""),
    ])
    session.pool.map(list(hosts), lambda host: session.pool.run(host, command))


def rotate(session: HostSession) -> None:
    """Forget the pair here: the next :func:`distribute` (``up`` runs it when :func:`has_key` says no) installs a
    new one on the hosts and drops the old one's line, which works until then (a running job keeps its links)."""
    session.state.forget_key_pair()
