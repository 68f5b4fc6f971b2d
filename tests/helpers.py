"""Helpers the test modules import (``from helpers import ...``): the command line, cluster files, timing.

Fixtures live in ``conftest.py``; these are plain functions and constants, importable by name (a
``conftest`` module is not: with more than one test folder, which ``conftest`` an import finds depends on
the order pytest loaded them).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

#: A Ray job spreading tasks over the factories (see its docstring).
WHERE_JOB = Path(__file__).parent / "jobs" / "where.py"


def run_cli(*args, state_home, timeout=600, check=None, env=None) -> subprocess.CompletedProcess:
    """Run the real command line (``python -m flambe_cluster ARGS``) with its own state folder.

    ``check`` is the exit code the run must end with (its output is shown if not).
    """
    environment = {**(env if env is not None else os.environ), "FLAMBE_CLUSTER_HOME": str(state_home), "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-m", "flambe_cluster", *args], capture_output=True, text=True,
                          timeout=timeout, env=environment)
    if check is not None:
        assert done.returncode == check, f"exit {done.returncode}\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return done


def fast_enough(elapsed: float, limit: float, reference: float) -> bool:
    """A speed check that holds on a busy machine too: within ``limit`` seconds (a quiet machine's target), or
    within 3x a ``reference`` the test measured just before on the same machine (``status``: interpreter start,
    connections, one Ray query), so that load, which slows both alike, does not fail it."""
    return elapsed < max(limit, 3 * reference)


def timed(action) -> float:
    """Seconds ``action()`` took."""
    started = time.monotonic()
    action()
    return time.monotonic() - started


#: The environment variable naming this run's temporary folder (see :func:`pytest_configure`).
RUN_TMP_ENV = "FLAMBE_CLUSTER_TEST_TMP"


def install_nvidia_smi(host, gpus: int) -> None:
    """Give a test host a stand-in ``nvidia-smi`` in ``~/bin`` (on a login shell's PATH) listing ``gpus`` GPU indexes.

    No GPU can be had here; the core counts the index lines it prints.
    """
    smi = host.home / "bin" / "nvidia-smi"
    smi.parent.mkdir(exist_ok=True)
    smi.write_text("#!/bin/sh\n# stand-in for tests\n" + "".join(f"echo {i}\n" for i in range(gpus)))
    smi.chmod(0o755)
    subprocess.run(["chown", "-R", f"{host.username}:", str(smi.parent)], check=True)


def ssh_cluster_yaml(path: Path, hosts, key: Path, name: str, **extra) -> Path:
    """Write an `ssh` cluster file: hosts[0] is the orchestrator, the others factories."""
    import yaml

    body = {
        "provider": "ssh",
        "name": name,
        "username": hosts[0].username,
        "key": str(key),
        "orchestrator_ip": hosts[0].address,
        "factories_ips": [h.address for h in hosts[1:]],
        **extra,
    }
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


def page_through_forward(cli, config: Path, state_home: Path, port: int, local_port: int) -> tuple[str, str]:
    """Serve a directory listing on the orchestrator's loopback at ``port`` and fetch it from here at ``local_port``
    through ``flambe-cluster forward`` (interrupted after, as a user's Ctrl-C); returns (page, forward's stderr).

    ``cli(*args, check=...)`` runs the command line on the cluster's state folder ``state_home``.
    """
    import signal
    import urllib.request

    started = cli("exec", str(config), "--on", "orchestrator", "--",
                  f"nohup python3 -m http.server {port} --bind 127.0.0.1 >/dev/null 2>&1 & echo $!", check=0)
    server = started.stdout.split("]")[-1].strip()
    forwarding = subprocess.Popen([sys.executable, "-m", "flambe_cluster", "forward", str(config), str(port),
                                   "--local", str(local_port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, env={**os.environ, "FLAMBE_CLUSTER_HOME": str(state_home)})
    try:
        deadline, page = time.monotonic() + 30, ""
        while not page:
            assert forwarding.poll() is None, forwarding.stderr.read()
            assert time.monotonic() < deadline, "the forwarded port never answered"
            try:
                page = urllib.request.urlopen(f"http://127.0.0.1:{local_port}/", timeout=2).read().decode()
            except OSError:
                time.sleep(0.3)
    finally:
        forwarding.send_signal(signal.SIGINT)
        _, said = forwarding.communicate(timeout=30)
        cli("exec", str(config), "--on", "orchestrator", "--", f"kill {server}")
    assert forwarding.returncode == 0, said
    return page, said
