"""Unprivileged local hosts: one ``sshd`` per host, run as the current user on loopback.

For the ``local`` provider when this process is not root.  Host ``i`` is an
OpenSSH server listening on ``127.77.<n>.<10+i>`` (its own loopback address,
so Ray sees distinct nodes), with its own host key and its own home folder:
a forced command sets ``HOME`` to the host's folder and starts there, so
everything flambe-cluster puts "in the home" of one host stays apart from the
others and from the user's real home.  The hosts share the machine's ``/tmp``
and process table; they are not isolated the way namespaced hosts are.

A network is described by a JSON-serialisable record (:meth:`LoopbackNetwork.record`)
so a later process can find it (:func:`alive`) and stop it (:func:`destroy`)
by the process IDs it recorded — never by matching names.  Failures raise
:class:`~flambe_cluster.errors.LocalHostsError` (one line), after stopping
what was started.
"""

from __future__ import annotations

import contextlib
import getpass
import ipaddress
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from attrs import define, field

from ..errors import LocalHostsError
from ..remote.processes import read_json, recorded_alive, stop_group
from . import system
from .system import generate_host_key, host_key_line, key_list, process_is, run, wait_for_sshd

_SSHD_CONFIG = """\
# Written by flambe-cluster for local host {name}; listens on loopback only.
ListenAddress {address}:{port}
HostKey {directory}/host_key
PidFile none
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
AuthorizedKeysFile {directory}/home/.ssh/authorized_keys
StrictModes no
AllowUsers {username}
PermitUserEnvironment no
ForceCommand {directory}/enter
MaxSessions 64
MaxStartups 100
LogLevel ERROR
UseDNS no
PrintMotd no
PrintLastLog no
"""

_ENTER = """\
#!/bin/sh
# The host's own home: every command of this local host starts here.
HOME={home}
export HOME
cd "$HOME" || exit 1
if [ -n "$SSH_ORIGINAL_COMMAND" ]; then exec /bin/bash -c "$SSH_ORIGINAL_COMMAND"; fi
exec /bin/bash -l
"""


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        port: int = sock.getsockname()[1]
        return port


def _pick_subnet() -> ipaddress.IPv4Network:
    """A 127.77.N.0/24 no listening socket of this machine uses."""
    busy = run(["ss", "-Htln"], check=False).stdout if shutil.which("ss") else ""
    candidates = list(range(1, 255))
    random.shuffle(candidates)
    for third in candidates:
        if f"127.77.{third}." not in busy:
            return ipaddress.IPv4Network(f"127.77.{third}.0/24")
    raise LocalHostsError("no free loopback subnet left in 127.77.0.0/16")


@define
class LoopbackNetwork:
    """``count`` unprivileged SSH hosts on loopback; built and started by the constructor.

    ``authorized_keys`` are the public-key lines every host accepts;
    ``workdir`` holds one folder per host (config, host key, home, log).  On
    a failure during start, what was started is stopped and the error raised.
    """

    count: int
    authorized_keys: list[str] = field(converter=key_list)
    workdir: Path = field(converter=Path)
    hosts: list[dict[str, Any]] = field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        if not os.access(system.SSHD, os.X_OK):
            raise LocalHostsError(
                f"{system.SSHD} is missing; install OpenSSH's server (apt-get install openssh-server)")
        subnet = _pick_subnet()
        try:
            for index in range(self.count):
                self._start(index, str(subnet.network_address + 10 + index))
        except BaseException:
            destroy(self.record())
            raise

    def _start(self, index: int, address: str) -> None:
        name = f"h{index}"
        directory = self.workdir / name
        home = directory / "home"
        (home / ".ssh").mkdir(parents=True, exist_ok=True)
        os.chmod(home / ".ssh", 0o700)
        (home / ".ssh" / "authorized_keys").write_text("".join(k.strip() + "\n" for k in self.authorized_keys))
        if not (directory / "host_key").exists():
            generate_host_key(directory / "host_key", name)
        enter = directory / "enter"
        enter.write_text(_ENTER.format(home=shlex.quote(str(home))))
        enter.chmod(0o755)
        port = _free_port(address)
        (directory / "sshd_config").write_text(_SSHD_CONFIG.format(
            name=name, address=address, port=port, directory=directory, username=getpass.getuser()))
        log_path = directory / "sshd.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen([system.SSHD, "-D", "-e", "-f", str(directory / "sshd_config")],
                                       stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        host = {"name": name, "address": address, "port": port, "home": str(home), "directory": str(directory),
                "host_key": host_key_line(directory / "host_key"), "pid": process.pid}
        self.hosts.append(host)  # recorded at once: a failure from here on still stops it
        wait_for_sshd(process, address, port, f"local host {name}", log_path)

    def record(self) -> dict[str, Any]:
        """A JSON-serialisable description: enough for :func:`alive` and :func:`destroy`."""
        return {"mode": "loopback", "workdir": str(self.workdir), "hosts": list(self.hosts)}


def alive(record: dict[str, Any]) -> bool:
    """Whether every host of the record still runs its sshd."""
    return bool(record["hosts"]) and all(process_is(h["pid"], "sshd") for h in record["hosts"])


def _stop_recorded_groups(home: Path) -> None:
    """Stop the Ray nodes and the running job, TensorBoard or report site flambe-cluster started from this home.

    Loopback hosts share the machine's process table, so stopping a host's
    sshd does not end what ran on it (namespaced hosts need no such step).
    Only groups whose records are still alive (same boot, group running) are
    signalled; a job that finished is left alone.
    """
    markers = list(home.glob(".flambe-cluster/ray/*.json"))
    # every helper's record (remote/processes.py): <cluster>/job, <cluster>/tensorboard, <cluster>/report-site, ...
    markers += [p for p in home.glob(".flambe-cluster/*/*/process.json") if not p.with_name("exit_code.json").exists()]
    for marker in markers:
        data = read_json(marker)
        if recorded_alive(data):
            stop_group(int(data["pgid"]), grace=2.0)


def destroy(record: dict[str, Any]) -> None:
    """Stop every recorded host: what ran on it, then its sshd (verified by name); remove the folder. Idempotent."""
    for host in record["hosts"]:
        _stop_recorded_groups(Path(host["home"]))
    for host in record["hosts"]:
        pid = int(host["pid"])
        if process_is(pid, "sshd"):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
            for _ in range(50):
                if not process_is(pid, "sshd"):
                    break
                time.sleep(0.1)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    shutil.rmtree(record["workdir"], ignore_errors=True)
