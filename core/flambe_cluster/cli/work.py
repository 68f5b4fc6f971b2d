"""The commands that use a running cluster: ``exec``, ``submit``, ``logs``, ``stop``, ``attach``, ``forward``,
``pull``."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO, cast

import click

from .. import hostfiles, jobs
from ..commands import CommandResult, shell_join
from ..records import Instance
from ..session import HostSession
from .common import CONFIG, EXIT_FAILED, EXIT_OK, LOCK_WAIT, VerbatimTail, cli, err, note, opened, out
from .labelled import LabelledLines


@cli.command(name="exec", cls=VerbatimTail, word=2, inclusive=True,
             short_help="Run a command on the hosts, output labelled by host.")
@CONFIG
@click.option("--on", "target", type=click.Choice(["all", "orchestrator", "factories"]), default="all",
              show_default=True,
              help="Where to run it: all (every host), orchestrator (that host alone) or factories (every factory).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(config: str, target: str, command: Sequence[str]) -> int:
    """Run a command on the cluster's hosts; prints each host's output labelled by host.

    Usage: exec CONFIG [--on WHICH] [--] COMMAND...  Everything from the
    command's first word on is the command's, options included.  One
    argument is a shell command line; several are an argv whose items are
    each quoted (`exec -- echo 'a;b'` prints `a;b`).  The command runs in
    the user's home folder on each host.
    """
    line = command[0] if len(command) == 1 else shell_join(command)
    with opened(config) as cluster:
        session = cluster.session
        hosts = {"all": session.hosts(), "orchestrator": [session.require_orchestrator()],
                 "factories": session.factories}[target]
        out.file.flush()
        err.file.flush()
        lock = threading.Lock()

        # output is printed as it arrives, never gathered: endless output costs no memory
        def run(instance: Instance) -> CommandResult:
            # the consoles write to sys.stdout and sys.stderr: text streams, each over its binary buffer
            lines = [LabelledLines(instance.name, cast(TextIO, console.file).buffer, lock) for console in (out, err)]
            try:
                return session.pool.run(instance, line, check=False, on_stdout=lines[0].add, on_stderr=lines[1].add,
                                        keep=1 << 16)
            finally:
                for labelled in lines:
                    labelled.finish()

        results = session.pool.map(hosts, run)
        for instance, result in results.items():
            if result.exit_code is None:
                err.print(f"[{instance.name}] timed out after {result.timeout:g} s (command_timeout)", markup=False)
            elif not result.ok:
                err.print(f"[{instance.name}] exit code {result.exit_code}", markup=False)
        return EXIT_OK if all(r.ok for r in results.values()) else EXIT_FAILED


@cli.command(cls=VerbatimTail, word=2, inclusive=False,
             short_help="Ship a file or folder and run it on the orchestrator.")
@CONFIG
@click.argument("path", type=click.Path(exists=True))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--force", is_flag=True, help="Stop the running job first.")
@click.option("--entry", help="For a folder: the file to run (default main.py).")
@click.option("--exclude", "excludes", multiple=True, metavar="PATTERN",
              help="Do not ship what matches this pattern (rsync's, as in .gitignore; repeatable).")
@click.option("--ext", "extensions", multiple=True, metavar="SPEC",
              help="Install an extension first on every host: a local project folder or a pip requirement "
                   "(repeatable).")
@click.option("--secret", "secret_sections", multiple=True, metavar="SECTION",
              help="Send only this section of the secrets file (repeatable; default: all sections).")
@LOCK_WAIT
def submit(config: str, path: str, args: Sequence[str], force: bool, entry: str | None, excludes: Sequence[str],
           extensions: Sequence[str], secret_sections: Sequence[str], lock_wait: float) -> int:
    """Ship a file or folder to the orchestrator and run it there, detached.

    Usage: submit CONFIG [OPTIONS] PATH [ARGS]...  Options of submit go
    before PATH; every word after PATH is the job's, options included
    (`submit c.yaml job.py --epochs 3 --force` passes `--epochs 3 --force`
    to the job).  A folder's `.gitignore` files are honoured (what they
    ignore is not shipped), and so is each `--exclude`.  A folder job runs
    in its copy of the folder; a file job in the folder it was shipped to.
    """
    with opened(config) as cluster:
        with cluster.locked(lock_wait):
            cluster.install_extensions({spec: spec for spec in extensions})
            secrets = (hostfiles.send_secrets(cluster.session, list(secret_sections) or None)
                       if cluster.config.secrets is not None else None)
            status = jobs.submit(cluster.session, Path(path), args, force=force, entry=entry, secrets=secrets,
                                 excludes=excludes)
        note.print(f"job {status.describe()} on cluster {cluster.name!r}; "
                   f"follow it with: flambe-cluster logs {config} --follow")
        return EXIT_OK


@cli.command(short_help="Print the job's output (all, or its last N lines).")
@CONFIG
@click.option("--follow", "-f", is_flag=True,
              help="Keep printing until the job ends; exit with its code (128 + N when signal N ended it).")
@click.option("--tail", "-n", type=click.IntRange(min=0), default=None, metavar="N",
              help="Only the last N lines (then, with --follow, what comes).")
def logs(config: str, follow: bool, tail: int | None) -> int:
    """Print the job's output (everything since it started, or its last N lines)."""
    with opened(config, looks_only=True) as cluster:
        stream = sys.stdout.buffer

        def write(chunk: bytes) -> None:
            stream.write(chunk)
            stream.flush()

        final = jobs.logs(cluster.session, write, follow=follow, tail=tail)
        if follow:
            note.print(f"job {final.describe()}")
            return job_exit_code(final)
        return EXIT_OK


@cli.command(short_help="Stop the running job; the cluster and Ray stay up.")
@CONFIG
def stop(config: str) -> int:
    """Stop the running job (its whole process group); the cluster and Ray stay up. Idempotent."""
    with opened(config) as cluster:
        before = jobs.status(cluster.session)
        if before.state != "running":
            note.print(f"no job runs on cluster {cluster.name!r} (the last one: {before.describe()})")
            return EXIT_OK
        final = jobs.stop(cluster.session)
        note.print(f"stopped the job on cluster {cluster.name!r}: {final.describe()}")
        return EXIT_OK


@cli.command(cls=VerbatimTail, word=2, inclusive=True, short_help="Open a shell (or run a command) on a host.")
@CONFIG
@click.option("--on", "target", default="orchestrator", show_default=True, metavar="HOST",
              help="orchestrator, or a factory by name (factory0, or the full name) or address.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def attach(config: str, target: str, command: Sequence[str]) -> int:
    """Open a shell on the orchestrator (or a factory), or run COMMAND there with a terminal of its own.

    Usage: attach CONFIG [--on HOST] [-- COMMAND...].  As for `exec`, one
    argument is a shell command line, several an argv.  OpenSSH with the
    cluster's route (bastion, proxy), your key and the host keys pinned for
    the cluster: a changed host key is refused, as everywhere.  Exits with
    the shell's (or COMMAND's) exit code.
    """
    with opened(config) as cluster:
        session = cluster.session
        host = _host_named(session, target)
        session.pool.connection(host)  # pins the host keys (jump hosts' too) before OpenSSH checks them strictly
        route = session.pool.route(host)
        argv = ["ssh", "-t" if sys.stdin.isatty() else "-T", *session.ssh_options(host), "-p", str(route.target.port),
                f"{route.target.user}@{route.target.host}",
                *([command[0] if len(command) == 1 else shell_join(command)] if command else [])]
    out.file.flush()
    err.file.flush()
    return subprocess.run(argv).returncode


@cli.command(short_help="Reach a host's port at 127.0.0.1 on this machine.")
@CONFIG
@click.argument("port", type=click.IntRange(1, 65535))
@click.option("--on", "target", default="orchestrator", show_default=True, metavar="HOST",
              help="orchestrator, or a factory by name (factory0, or the full name) or address.")
@click.option("--local", "local_port", type=click.IntRange(1, 65535), default=None, metavar="PORT",
              help="The port on this machine (default: PORT).")
def forward(config: str, port: int, target: str, local_port: int | None) -> int:
    """Reach PORT of a host (TensorBoard, the report site) at http://127.0.0.1:LOCAL on this machine, until Ctrl-C.

    OpenSSH local forwarding through the cluster's route (bastion, proxy)
    and pinned host keys; the host's PORT is reached on its loopback.
    """
    local_port = local_port or port
    with opened(config) as cluster:
        session = cluster.session
        host = _host_named(session, target)
        session.pool.connection(host)  # pins the host keys (jump hosts' too) before OpenSSH checks them strictly
        route = session.pool.route(host)
        argv = ["ssh", "-N", "-o", "ExitOnForwardFailure=yes", "-L", f"127.0.0.1:{local_port}:127.0.0.1:{port}",
                *session.ssh_options(host), "-p", str(route.target.port), f"{route.target.user}@{route.target.host}"]
    note.print(f"http://127.0.0.1:{local_port}/ reaches port {port} of {host.label}; Ctrl-C stops", markup=False)
    out.file.flush()
    err.file.flush()
    try:
        return subprocess.run(argv).returncode
    except KeyboardInterrupt:
        return EXIT_OK


def _host_named(session: HostSession, target: str) -> Instance:
    """The host ``--on`` names: ``orchestrator``, a factory's name (or its short ``factoryN``), or an address."""
    for host in session.hosts():
        short = host.name.rsplit("_", 1)[-1]
        if target in (host.name, short, host.role.value, host.public.host, host.private.host):
            return host
    names = ", ".join(["orchestrator", *(f.name.rsplit("_", 1)[-1] for f in session.factories)])
    raise click.BadParameter(f"no host {target!r} in cluster {session.name!r}; one of: {names}", param_hint="--on")


def job_exit_code(status: jobs.JobStatus) -> int:
    """The job's exit code as a process's: its own, 128 + N when signal N ended it, 1 when it was lost."""
    if status.state != "finished" or status.exit_code is None:
        return EXIT_FAILED
    return status.exit_code if status.exit_code >= 0 else 128 - status.exit_code


@cli.command(short_help="Gather REMOTE from the hosts into LOCAL on this machine.")
@CONFIG
@click.argument("remote")
@click.argument("local", type=click.Path(file_okay=False))
def pull(config: str, remote: str, local: str) -> int:
    """Bring REMOTE back into LOCAL, after gathering the factories' copies on the orchestrator.

    REMOTE is relative to the user's home folder on the hosts (not to the
    job's working folder): a job writing to `$HOME/results` is pulled with
    `pull CONFIG results ./results`.
    """
    with opened(config) as cluster:
        jobs.pull(cluster.session, remote, Path(local))
        note.print(f"pulled {remote} into {local}")
        return EXIT_OK
