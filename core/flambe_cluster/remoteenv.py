"""What a job running on the orchestrator knows about its cluster: Flambé's ``RemoteEnvironment``.

Handed to a job as JSON in ``FLAMBE_REMOTE_ENV`` (see :mod:`flambe_cluster.jobs`); the job rebuilds it with
:meth:`RemoteEnvironment.from_env` and may pull a folder from every factory with :meth:`RemoteEnvironment.gather`.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import attrs
from attrs import field, frozen

from .records import Endpoint
from .sync import IO_TIMEOUT, RSYNC_FLAGS, remote_spec


def _optional_tuple(value: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


def _str_tuple(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


def _int_tuple(value: Iterable[int]) -> tuple[int, ...]:
    return tuple(value)


@frozen
class RemoteEnvironment:
    """What a job running on the orchestrator knows about its cluster: Flambé's ``RemoteEnvironment``.

    Its fields, in Flambé's order: ``key`` (the path of the cluster's
    private key on the hosts), ``orchestrator_ip`` and ``factories_ips``
    (private addresses: hosts talk to each other over them), ``user`` (the
    hosts' login), ``local_user`` (who launched the cluster),
    ``public_orchestrator_ip`` and ``public_factories_ips`` (the addresses
    the client uses).  Then what a job needs to reach the factories the way
    the cluster does: ``factories_ports`` (their SSH ports) and
    ``ssh_options`` (OpenSSH options with the cluster key and its pinned
    host keys: hosts verify each other strictly).  A job rebuilds it with
    :meth:`from_env` and pulls a folder from every factory with :meth:`gather`.
    """

    key: str
    orchestrator_ip: str
    factories_ips: tuple[str, ...] = field(converter=_str_tuple)
    user: str
    local_user: str
    public_orchestrator_ip: str | None = None
    public_factories_ips: tuple[str, ...] | None = field(default=None, converter=_optional_tuple)
    factories_ports: tuple[int, ...] = field(default=(), converter=_int_tuple)
    ssh_options: tuple[str, ...] = field(default=(), converter=_str_tuple)

    #: The environment variable a job finds the cluster's RemoteEnvironment in, as JSON (see :meth:`as_dict`).
    VARIABLE = "FLAMBE_REMOTE_ENV"

    @property
    def orchestrator_public_ip(self) -> str | None:
        """The earlier name of :attr:`public_orchestrator_ip` (read only)."""
        return self.public_orchestrator_ip

    def as_dict(self) -> dict[str, Any]:
        """The fields, and the earlier name of ``public_orchestrator_ip`` (jobs that read the JSON by it)."""
        return {**attrs.asdict(self), "orchestrator_public_ip": self.public_orchestrator_ip}

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> RemoteEnvironment:
        """The cluster's RemoteEnvironment inside a job (from ``FLAMBE_REMOTE_ENV``); fields it does not know are
        ignored, so a job outlives a newer cluster's additions."""
        data = json.loads((os.environ if environ is None else environ)[cls.VARIABLE])
        known = {a.name for a in attrs.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def gather(self, folder: str, exclude: Sequence[str] = ()) -> None:
        """On the orchestrator: merge ``folder`` (relative to the home, or absolute) of every factory into this
        host's own, as Flambé's ``rsync_hosts`` does, through the cluster key and its pinned host keys.

        One rsync per factory, all at once; adds and updates, deletes nothing.  Raises ``RuntimeError`` naming
        every factory whose copy failed, with rsync's message, after trying all.
        """
        local = (folder if os.path.isabs(folder) else os.path.join(os.path.expanduser("~"), folder)).rstrip("/") + "/"
        os.makedirs(local, exist_ok=True)
        ports = list(self.factories_ports) or [22] * len(self.factories_ips)

        def pull(address: str, port: int) -> str | None:
            remote = remote_spec(self.user, Endpoint(address, port), folder.rstrip("/") + "/")  # relative: their home
            ssh = " ".join(["ssh", "-p", str(port), *(f"'{option}'" for option in self.ssh_options)])
            argv = ["rsync", *RSYNC_FLAGS, f"--timeout={IO_TIMEOUT}", "-e", ssh,
                    *(f"--exclude={pattern}" for pattern in exclude), remote, local]
            done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
            return None if done.returncode == 0 else (f"{address}: rsync exited with {done.returncode}: "
                                                      f"{done.stderr.strip()[-2000:]}")

        with ThreadPoolExecutor(max(1, min(32, len(self.factories_ips)))) as pool:
            failures = [f for f in pool.map(pull, self.factories_ips, ports) if f]
        if failures:
            raise RuntimeError(f"gathering {folder} from the factories failed:\n  " + "\n  ".join(failures))
