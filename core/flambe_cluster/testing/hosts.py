"""Real SSH test hosts on one Linux machine: the namespaced local hosts plus fault injection.

:class:`TestHostNetwork` is a :class:`~flambe_cluster.localhosts.namespaces.NamespaceNetwork`
(a private bridge and N hosts, each an ``sshd`` in its own network, PID and
mount namespaces; see that module for what a host is) whose hosts are
:class:`TestHost`\\ s, which a test can break on purpose: stop and restart
(:meth:`~flambe_cluster.localhosts.nshost.NamespaceHost.stop`/``start``),
cut off the bridge and heal (:meth:`TestHost.partition`/:meth:`TestHost.heal`),
give a new host key (:meth:`TestHost.replace_host_key`), and inspect from
inside (:meth:`TestHost.run_in_namespace`).

:class:`LoopbackTestNetwork` is the unprivileged kind: N OpenSSH servers run
as the current user on loopback addresses (see
:mod:`~flambe_cluster.localhosts.loopback`), with a home folder each but a
shared ``/tmp`` and process table and no fault injection.  It is what an
ordinary user (a plugin author's laptop, an unprivileged CI) can build.

Every network registers itself for an ``atexit`` clean-up, so an interpreter
that exits without ``close()`` leaves nothing behind.
:func:`require_root_namespaces` says whether this process can build hosts
(tests skip with its sentence otherwise).  Failures raise
:class:`~flambe_cluster.errors.LocalHostsError` (a RuntimeError).
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attrs import define, field, frozen

from ..errors import LocalHostsError
from ..localhosts import loopback
from ..localhosts.machine import require_root_namespaces
from ..localhosts.namespaces import NamespaceNetwork
from ..localhosts.nshost import NamespaceHost
from ..localhosts.system import generate_host_key, key_list, run

__all__ = ["LoopbackTestHost", "LoopbackTestNetwork", "TestHost", "TestHostNetwork", "require_root_namespaces"]


@define(eq=False)
class TestHost(NamespaceHost):
    """One SSH test host (a :class:`NamespaceHost`) with fault injection.
    Made by :class:`TestHostNetwork`; not meant to be constructed directly."""

    __test__ = False  # not a pytest test class

    def partition(self) -> None:
        """Cut the host off the bridge (``ip link set <veth> down``): its packets and
        packets to it are silently dropped; processes keep running."""
        run(["ip", "link", "set", self.veth, "down"])

    def heal(self) -> None:
        """Undo :meth:`partition` (``ip link set <veth> up``)."""
        run(["ip", "link", "set", self.veth, "up"])

    def replace_host_key(self) -> None:
        """Generate a new ed25519 host key (``ssh-keygen``), replacing the old one,
        and restart sshd; clients with the old key in known_hosts must then refuse
        the host."""
        self.stop()
        for path in (self.host_key_path, self.host_key_path.with_name(self.host_key_path.name + ".pub")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        generate_host_key(self.host_key_path, self.name)
        self.start()

    def run_in_namespace(self, argv: list[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` as root inside the host's network, mount and PID namespaces
        (``nsenter --target <PID 1> -n -m -p``), e.g. ``ps -e`` to see the host's
        processes. Keyword arguments go to :func:`subprocess.run`; by default output
        is captured as text, the timeout is 60 s and the exit status is not
        checked. Raises LocalHostsError when the host is not running."""
        pid1 = self.sshd_pid
        if pid1 is None:
            raise LocalHostsError(f"test host {self.name} is not running")
        if "stdout" not in kw and "stderr" not in kw:
            kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 60)
        if "input" not in kw:
            kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(
            ["nsenter", "--target", str(pid1), "--net", "--mount", "--pid", "--", *argv], **kw
        )


_LIVE: list[TestHostNetwork | LoopbackTestNetwork] = []
#: Called before any network is built (the pytest plugin adds its check that the running test is marked ``hosts``).
BUILD_CHECKS: list[Callable[[], None]] = []


def _close_live_networks() -> None:
    for net in list(_LIVE):
        if net._owner_pid == os.getpid():  # never from a forked child
            with contextlib.suppress(Exception):
                net.close()


atexit.register(_close_live_networks)


@define(eq=False)
class TestHostNetwork(NamespaceNetwork):
    """A bridge plus N :class:`TestHost`\\ s (arguments: those of
    :class:`NamespaceNetwork`). Networks not closed are closed at interpreter exit
    (``atexit``, in the creating process only); :meth:`detach` lets them live on."""

    __test__ = False  # not a pytest test class
    host_class = TestHost

    _owner_pid: int = field(factory=os.getpid, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        for check in BUILD_CHECKS:
            check()
        _LIVE.append(self)
        try:
            super().__attrs_post_init__()
        except BaseException:
            self._forget()
            raise

    def _forget(self) -> None:
        with contextlib.suppress(ValueError):
            _LIVE.remove(self)

    def close(self) -> None:
        super().close()
        self._forget()

    def detach(self) -> dict[str, Any]:
        record = super().detach()
        self._forget()
        return record


@frozen
class LoopbackTestHost:
    """One unprivileged SSH test host: an ``sshd`` run as this user on its own loopback address."""

    __test__ = False  # not a pytest test class

    name: str
    address: str
    """Its own loopback address, e.g. ``"127.77.5.10"``."""
    port: int
    home: Path
    """The host's home folder (every SSH command on the host starts there, with ``HOME`` set to it)."""
    username: str


@define(eq=False)
class LoopbackTestNetwork:
    """``count`` :class:`LoopbackTestHost`\\ s accepting ``authorized_keys``; built by the constructor.

    Needs no privilege, only OpenSSH's server.  Its record is kept as
    ``network.json`` in the hosts' folder (under ``$TMPDIR``), so another
    process can stop them (:func:`~flambe_cluster.localhosts.loopback.destroy`).
    Closed at interpreter exit
    when not closed before (in the creating process only); :meth:`close`
    stops each host's sshd and what flambe-cluster started from its home, by
    recorded process IDs, and removes the hosts' folders.
    """

    __test__ = False  # not a pytest test class

    count: int
    authorized_keys: list[str] = field(converter=key_list)
    hosts: list[LoopbackTestHost] = field(factory=list, init=False)
    _record: dict[str, Any] | None = field(default=None, init=False, repr=False)
    _owner_pid: int = field(factory=os.getpid, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        for check in BUILD_CHECKS:
            check()
        workdir = Path(tempfile.mkdtemp(prefix="flambe-loopback-hosts-"))
        try:
            network = loopback.LoopbackNetwork(self.count, self.authorized_keys, workdir)
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        self._record = network.record()
        (workdir / "network.json").write_text(json.dumps(self._record))  # for a clean-up by another process
        _LIVE.append(self)
        user = getpass.getuser()
        self.hosts = [LoopbackTestHost(h["name"], h["address"], h["port"], Path(h["home"]), user)
                      for h in network.hosts]

    def close(self) -> None:
        """Stop every host and remove its folder. Idempotent."""
        if self._record is not None:
            loopback.destroy(self._record)
            self._record = None
        with contextlib.suppress(ValueError):
            _LIVE.remove(self)
