"""Machine-local hosts: real OpenSSH servers on this machine, for the ``local`` provider.

Two kinds, chosen by ``mode``:

- ``"namespaces"`` (root): each host is an ``sshd`` in its own Linux network,
  PID and mount namespaces on a private bridge
  (:mod:`~flambe_cluster.localhosts.namespaces`);
- ``"loopback"`` (any user): each host is an ``sshd`` run as the current user
  on its own loopback address (:mod:`~flambe_cluster.localhosts.loopback`).

Contract: :func:`start` builds and starts the hosts and returns a
JSON-serialisable record of them (``mode`` and ``hosts``, each host with
``name``, ``address``, ``port``, ``home`` and ``host_key``); a later process
passes that record to :func:`alive` and :func:`destroy`, which act only on the
processes, links, namespaces and folders it names.  Every failure raises
:class:`~flambe_cluster.errors.LocalHostsError` with a one-line message, after
removing what the failed start made.  Nothing here imports
:mod:`flambe_cluster.testing`; the test harness builds on this package.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from . import loopback, namespaces
from .machine import require_root_namespaces, subnet_problem

__all__ = ["MODES", "alive", "destroy", "require_root_namespaces", "start", "subnet_problem"]

#: The kinds of local hosts.
MODES = ("namespaces", "loopback")


def start(mode: str, count: int, authorized_keys: list[str], workdir: Path, *,
          username: str, subnet: str | None = None) -> dict[str, Any]:
    """Start ``count`` hosts of ``mode`` that accept ``authorized_keys``, their folders in ``workdir``.

    ``username`` is the user namespaced hosts log in as (loopback hosts run as
    the current user); ``subnet`` the private IPv4 network of namespaced hosts
    (default: a free one).  Returns the record of the running hosts.
    """
    if mode == "namespaces":
        network = namespaces.NamespaceNetwork(count, authorized_keys=authorized_keys, username=username,
                                              workdir=workdir, subnet=subnet)
        return network.detach()
    return loopback.LoopbackNetwork(count, authorized_keys, workdir).record()


def alive(record: dict[str, Any]) -> bool:
    """Whether every host of a :func:`start` record still runs."""
    return (namespaces.detached_alive if record["mode"] == "namespaces" else loopback.alive)(record)


def destroy(record: dict[str, Any]) -> None:
    """Stop every host of a :func:`start` record and remove what it made.  Idempotent."""
    (namespaces.destroy_detached if record["mode"] == "namespaces" else loopback.destroy)(record)
