"""The ``flambe-cluster`` command line.

Exit codes: 0 success, 1 something failed on a host or in a cloud, 2 bad
usage or configuration.  Every error message says what to do next.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import sys
import time
from typing import Any, Iterator, List, Optional, Sequence

import click
from rich.console import Console
from rich.table import Table

from pathlib import Path

from . import __version__, jobs, plugins, raycluster
from .cluster import Cluster
from .errors import FlambeClusterError, UsageError
from .records import Instance
from .commands import shell_join

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
#: Signals that stop a command the way Ctrl-C does: work stops, what the run created is rolled back, exit 128 + signal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived (``signum``); unwinds like Ctrl-C, so every layer rolls back and closes as for it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop_on_signals() -> None:
    """Make SIGINT, SIGTERM and SIGHUP raise :class:`Interrupted` in the main thread, once.

    Later signals are reported and ignored: the first one's rollback runs to
    its end, under the cluster's lock, exactly once (SIGKILL still ends the
    process at once).
    """
    def stop(signum: int, _frame: object) -> None:
        for each in STOP_SIGNALS:
            signal.signal(each, already_stopping)
        raise Interrupted(signum)

    def already_stopping(signum: int, _frame: object) -> None:
        err.print(f"{signal.Signals(signum).name}: already stopping (undoing what this run started)")

    for each in STOP_SIGNALS:
        signal.signal(each, stop)


class Progress:
    """Shows each step of a long operation on stderr, with the time the previous one took."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.last = self.started

    def __call__(self, message: str) -> None:
        now = time.monotonic()
        err.print(f"[dim]{now - self.started:6.1f}s[/dim] {message}", markup=True, highlight=False)
        self.last = now


def _load(config_path: str, validate: bool = False) -> Cluster:
    cluster = Cluster.from_yaml(config_path, validate=validate)
    cluster.on_step = Progress()
    return cluster


@contextlib.contextmanager
def _opened(config_path: str, must_exist: bool = True) -> Iterator[Cluster]:
    """The cluster of a file, its existing instances loaded (or UsageError), connections closed after."""
    cluster = _load(config_path)
    try:
        if must_exist and not cluster.find_instances():
            raise UsageError(f"cluster {cluster.name!r} does not exist yet; create it with `flambe-cluster up CONFIG`")
        yield cluster
    finally:
        cluster.close()


class VerbatimTail(click.Command):
    """A command whose last argument takes every word from its start on, options included, verbatim.

    The tail starts at the ``word``-th positional word (``inclusive``) or
    right after it; options before it are the command's own.  A ``--``
    before the tail starts it too (and one right after an exclusive start
    word is dropped: ``submit CONFIG PATH -- ARGS`` still works).
    """

    def __init__(self, *args: Any, word: int, inclusive: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.word, self.inclusive = word, inclusive

    def parse_args(self, ctx: click.Context, args: List[str]) -> List[str]:
        takes_value = {name for p in self.params if isinstance(p, click.Option) and not p.is_flag for name in p.opts}
        seen, index = 0, 0
        while index < len(args) and args[index] != "--":
            if args[index] in takes_value:
                index += 2
                continue
            if not args[index].startswith("-") or args[index] == "-":
                seen += 1
                if seen == self.word:
                    start = index if self.inclusive else index + 1
                    tail = args[start:]
                    if not self.inclusive and tail[:1] == ["--"]:
                        tail = tail[1:]
                    args = [*args[:start], "--", *tail]
                    break
            index += 1
        return super().parse_args(ctx, args)


LOCK_WAIT = click.option("--wait", "lock_wait", type=float, default=0.0, show_default=True, metavar="SECONDS",
                         help="Seconds to wait when another process is changing this cluster.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="flambe-cluster")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Create, use and tear down flambe clusters: one orchestrator and N factories."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("paramiko").setLevel(max(level, logging.WARNING))


@cli.command()
def providers() -> int:
    """List the installed providers (nothing is imported)."""
    table = Table("provider", "distribution", "version", "module")
    for info in plugins.installed_providers():
        table.add_row(info.name, info.distribution, info.version, info.target)
    out.print(table)
    return EXIT_OK


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Stop a running job.")
@LOCK_WAIT
def up(config: str, force: bool, lock_wait: float) -> int:
    """Create or reuse the cluster's hosts, distribute keys and run the setup commands (idempotent).

    A failure or an interrupt rolls back what this run created (once, under
    the cluster's lock) before the command exits.
    """
    cluster = _load(config, validate=True)
    try:
        cluster.up(force=force, lock_wait=lock_wait)
    finally:
        cluster.close()
    err.print(f"cluster {cluster.name!r} is up: 1 orchestrator, {len(cluster.factories)} factories "
              f"({time.monotonic() - cluster.on_step.started:.1f}s)")
    _print_hosts(cluster)
    return EXIT_OK


def _print_hosts(cluster: Cluster, reachable: Optional[dict] = None) -> None:
    table = Table("role", "name", "address", "private address", *(["ssh"] if reachable is not None else []))
    for instance in cluster.all_hosts():
        row = [instance.role.value, instance.name, str(instance.endpoint), str(instance.private)]
        if reachable is not None:
            row.append(reachable[instance])
        table.add_row(*row)
    out.print(table)


def _probe(cluster: Cluster, instance: Instance) -> str:
    try:
        cluster.pool.run(instance, "true", timeout=10)
        return "ok"
    except FlambeClusterError as exc:
        return f"error: {exc}"


def _ray_and_job(cluster: Cluster) -> dict:
    """Ray nodes and job state, when the orchestrator has the cluster's environment."""
    orchestrator = cluster.session.require_orchestrator()
    if not cluster.session.has_environment([orchestrator])[orchestrator]:
        return {"ray": None, "job": {"state": "none", "exit_code": None}, "services": {}}
    known = raycluster.nodes(cluster.session)
    job = jobs.status(cluster.session)
    ray = None if known is None else {
        "head": cluster.session.ray_head_address,
        "alive_workers": len(raycluster.alive_workers(known)),
        "nodes": known,
    }
    return {"ray": ray, "job": {"state": job.state, "exit_code": job.exit_code},
            "services": cluster.orchestrator.service_addresses()}


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(config: str, as_json: bool) -> int:
    """Show the hosts (roles, addresses, SSH), the Ray nodes alive and the job.

    Exits 1 when the cluster exists but a host does not answer or Ray is
    not fully up (fewer workers alive than factories).
    """
    with _opened(config, must_exist=False) as cluster:
        exists = cluster.find_instances()
        hosts = cluster.all_hosts() if exists else []
        reachable = {}
        if hosts:
            cluster.pool.connect_timeout = min(cluster.config.connect_timeout, 10.0)
            reachable = cluster.pool.map(hosts, lambda h: _probe(cluster, h))
        reached = hosts and reachable[cluster.session.orchestrator] == "ok"
        extra = _ray_and_job(cluster) if reached else {"ray": None, "job": None, "services": {}}
        if as_json:
            payload = {
                "name": cluster.name,
                "provider": cluster.config.provider,
                "exists": exists,
                "hosts": [
                    {"name": h.name, "role": h.role.value, "address": str(h.endpoint), "public": str(h.public),
                     "private": str(h.private), "instance_id": h.instance_id, "ssh": reachable[h]}
                    for h in hosts
                ],
                **extra,
            }
            out.print_json(json.dumps(payload))
        elif not exists:
            out.print(f"cluster {cluster.name!r} does not exist")
        else:
            _print_hosts(cluster, reachable)
            ray = extra["ray"]
            if ray is None:
                out.print("ray: not running")
            else:
                out.print(f"ray: head {ray['head']}, {ray['alive_workers']}/{cluster.factories_num} workers alive")
            if extra["job"] is not None:
                out.print(f"job: {jobs.JobStatus(extra['job']['state'], extra['job']['exit_code']).describe()}")
            for name, address in extra["services"].items():
                out.print(f"{name.replace('_', ' ')}: {address}")
        ray_up = extra["ray"] is not None and extra["ray"]["alive_workers"] == cluster.factories_num
        healthy = not exists or (ray_up and all(v == "ok" for v in reachable.values()))
        return EXIT_OK if healthy else EXIT_FAILED


@cli.command(name="exec", cls=VerbatimTail, word=2, inclusive=True)
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--on", "target", type=click.Choice(["all", "orchestrator", "factories"]), default="all", show_default=True)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(config: str, target: str, command: Sequence[str]) -> int:
    """Run a command on the cluster's hosts; prints each host's output labelled by host.

    Usage: exec CONFIG [--on WHICH] [--] COMMAND...  Everything from the
    command's first word on is the command's, options included.  One
    argument is a shell command line; several are an argv whose items are
    each quoted (`exec -- echo 'a;b'` prints `a;b`).
    """
    line = command[0] if len(command) == 1 else shell_join(command)
    with _opened(config) as cluster:
        session = cluster.session
        hosts = {"all": session.hosts(), "orchestrator": [session.require_orchestrator()], "factories": session.factories}[target]
        results = cluster.execute_on(hosts, line, check=False)
        for instance, result in results.items():
            for text, console in ((result.stdout, out), (result.stderr, err)):
                for row in text.splitlines():
                    console.print(f"[{instance.name}] {row}", markup=False)
            if not result.ok:
                err.print(f"[{instance.name}] exit code {result.exit_code}", markup=False)
        return EXIT_OK if all(r.ok for r in results.values()) else EXIT_FAILED


@cli.command(cls=VerbatimTail, word=2, inclusive=False)
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("path", type=click.Path(exists=True))
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@click.option("--force", is_flag=True, help="Stop the running job first.")
@click.option("--entry", help="For a folder: the file to run (default main.py).")
@click.option("--ext", "extensions", multiple=True, metavar="SPEC",
              help="Install an extension first on every host: a local project folder or a pip requirement (repeatable).")
@click.option("--secret", "secret_sections", multiple=True, metavar="SECTION",
              help="Send only this section of the secrets file (repeatable; default: all sections).")
@LOCK_WAIT
def submit(config: str, path: str, args: Sequence[str], force: bool, entry: Optional[str],
           extensions: Sequence[str], secret_sections: Sequence[str], lock_wait: float) -> int:
    """Ship a file or folder to the orchestrator and run it there, detached.

    Usage: submit CONFIG [OPTIONS] PATH [ARGS]...  Options of submit go
    before PATH; every word after PATH is the job's, options included
    (`submit c.yaml job.py --epochs 3 --force` passes `--epochs 3 --force`
    to the job).
    """
    with _opened(config) as cluster:
        with cluster.locked(lock_wait):
            cluster.install_extensions({spec: spec for spec in extensions})
            secrets = (cluster.session.send_secrets(list(secret_sections) or None)
                       if cluster.config.secrets is not None else None)
            status = jobs.submit(cluster.session, Path(path), args, force=force, entry=entry, secrets=secrets)
        err.print(f"job {status.describe()} on cluster {cluster.name!r}; follow it with: flambe-cluster logs {config} --follow")
        return EXIT_OK


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends; exit with its code.")
def logs(config: str, follow: bool) -> int:
    """Print the job's output (everything since it started)."""
    with _opened(config) as cluster:
        stream = sys.stdout.buffer

        def write(chunk: bytes) -> None:
            stream.write(chunk)
            stream.flush()

        final = jobs.logs(cluster.session, write, follow=follow)
        if follow:
            err.print(f"job {final.describe()}")
            return EXIT_OK if final.exit_code == 0 else EXIT_FAILED
        return EXIT_OK


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.argument("remote")
@click.argument("local", type=click.Path(file_okay=False))
def pull(config: str, remote: str, local: str) -> int:
    """Bring REMOTE (relative to the home) back into LOCAL, after gathering the factories' copies on the orchestrator."""
    with _opened(config) as cluster:
        jobs.pull(cluster.session, remote, Path(local))
        err.print(f"pulled {remote} into {local}")
        return EXIT_OK


@cli.command()
@click.argument("config", type=click.Path(dir_okay=False))
@LOCK_WAIT
def down(config: str, lock_wait: float) -> int:
    """Stop the job and Ray on every host, then release the machines the provider manages."""
    with _opened(config, must_exist=False) as cluster:
        if not cluster.down(wait=lock_wait):
            err.print(f"cluster {cluster.name!r} does not exist; nothing to do")
        else:
            err.print(f"cluster {cluster.name!r} is down")
        return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Entry point of the console script; exits with 0, 1 or 2."""
    _stop_on_signals()
    try:
        code = cli.main(args=list(argv) if argv is not None else None, prog_name="flambe-cluster", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        _interrupted(exc.__cause__ if isinstance(exc, click.exceptions.Abort) else exc)
    except click.ClickException as exc:
        exc.show()
        sys.exit(EXIT_USAGE)
    except UsageError as exc:
        err.print(f"error: {exc}", markup=False)
        sys.exit(EXIT_USAGE)
    except FlambeClusterError as exc:
        err.print(f"error: {exc}", markup=False)
        sys.exit(EXIT_FAILED)
    sys.exit(code if isinstance(code, int) else EXIT_OK)


def _interrupted(cause: Optional[BaseException]) -> None:
    """Exit 128 + the signal's number (130 for Ctrl-C), saying so; what the run started was already undone."""
    signum = cause.signum if isinstance(cause, Interrupted) else signal.SIGINT
    err.print(f"interrupted ({signal.Signals(signum).name}); stopped")
    sys.exit(128 + signum)
