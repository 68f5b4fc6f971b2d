"""One job at a time on the orchestrator: submit, status, logs, stop, pull.

A job is a file or folder shipped to ``~/.flambe-cluster/<cluster>/job/code``
and run there by :mod:`flambe_cluster.remote.job`, detached from the SSH
session: the client may go away and the job goes on.  It gets
``RAY_ADDRESS`` (the head), ``FLAMBE_REMOTE_ENV`` (the cluster's
RemoteEnvironment as JSON), ``FLAMBE_SECRETS`` (the secrets file, when sent)
and the cluster environment's Python first on ``PATH``.
"""

from __future__ import annotations

import getpass
import json
import posixpath
from pathlib import Path
from typing import Callable, Sequence

from attrs import frozen

from .errors import ClusterError, UsageError
from .paths import check_relative_path, home_path
from .session import HostSession

JOB = "job"
FOLLOW_TIMEOUT = 7 * 24 * 3600.0


@frozen
class JobStatus:
    """``state`` is ``none``, ``running``, ``finished`` or ``lost`` (ended without an exit code)."""

    state: str
    exit_code: int | None = None
    pgid: int | None = None

    def describe(self) -> str:
        if self.state == "finished":
            return f"finished with exit code {self.exit_code}" if self.exit_code != -15 else "stopped"
        return {"none": "no job submitted", "running": "running", "lost": "ended without an exit code"}[self.state]


def _job_dir(session: HostSession) -> str:
    return posixpath.join(session.remote_root, JOB)


def status(session: HostSession) -> JobStatus:
    """The job's state on the orchestrator (``none`` before the environment exists)."""
    if not session.has_environment([session.orchestrator])[session.orchestrator]:
        return JobStatus("none")
    result = session.pool.run(session.orchestrator, session.helper("job", "status", _job_dir(session)))
    data = json.loads(result.stdout)
    return JobStatus(data["state"], data["exit_code"], data["pgid"])


def stop(session: HostSession) -> JobStatus:
    """Stop the running job (its whole process group); idempotent."""
    if not session.has_environment([session.orchestrator])[session.orchestrator]:
        return JobStatus("none")
    session.pool.run(session.orchestrator, session.helper("job", "stop", _job_dir(session)))
    return status(session)


def command_for(session: HostSession, path: Path, args: Sequence[str], entry: str | None, home: str) -> tuple[list[str], str]:
    """The argv and working folder (absolute, on the orchestrator) of a job shipped from ``path``.

    A ``.py`` file runs with the cluster environment's Python, a ``.sh`` file
    with bash, anything else as an executable; a folder runs its ``entry``
    (default ``main.py``) with the folder as working directory.
    """
    code = posixpath.join(home, _job_dir(session), "code")
    python = posixpath.join(home, session.remote_root, "env", "bin", "python")
    if path.is_dir():
        entry = check_relative_path(entry or "main.py", "--entry")
        if not (path / entry).is_file():
            raise UsageError(f"{path} is a folder without {entry}; add it or name the entry point with --entry")
        folder = posixpath.join(code, path.name)
        target = posixpath.join(folder, entry)
    else:
        if entry:
            raise UsageError("--entry only applies when a folder is submitted")
        folder, target = code, posixpath.join(code, path.name)
    runner = [python] if target.endswith(".py") else (["bash"] if target.endswith(".sh") else [])
    return [*runner, target, *args], folder


def submit(
    session: HostSession,
    path: Path,
    args: Sequence[str] = (),
    *,
    force: bool = False,
    entry: str | None = None,
    secrets_whitelist: Sequence[str] | None = None,
) -> JobStatus:
    """Ship ``path`` (a file or folder) to the orchestrator and start it, detached.

    Refuses (naming ``--force``) while another job runs; with ``force`` the
    running job is stopped first.  Secrets are sent first when the cluster
    has a secrets file.
    """
    path = Path(path).resolve()  # `.` and `..` become named folders
    if not path.exists():
        raise UsageError(f"nothing to submit: {path} does not exist")
    current = status(session)
    if current.state == "running":
        if not force:
            raise ClusterError(
                f"a job is already running on cluster {session.name!r}; follow it with `flambe-cluster logs CONFIG "
                "--follow`, or stop it and run this one with `flambe-cluster submit --force`"
            )
        session.on_step("stopping the running job (--force)")
        stop(session)
    home = session.orchestrator_home()
    argv, workdir = command_for(session, path, args, entry, home)
    env = {
        "RAY_ADDRESS": session.ray_head_address,
        "FLAMBE_CLUSTER_NAME": session.name,
        "FLAMBE_REMOTE_ENV": json.dumps(session.remote_environment(getpass.getuser()).as_dict()),
        "PATH": f"{posixpath.join(home, session.remote_root, 'env', 'bin')}:/usr/local/bin:/usr/bin:/bin",
        "PYTHONUNBUFFERED": "1",
    }
    if session.config.secrets is not None:
        env["FLAMBE_SECRETS"] = posixpath.join(home, session.send_secrets(secrets_whitelist))
    code = posixpath.join(_job_dir(session), "code")
    session.on_step(f"shipping {path} to the orchestrator")
    session.create_dirs_on([session.orchestrator], [code])
    session.upload(session.orchestrator, [path], code + "/", delete=True)
    spec = {"argv": argv, "cwd": workdir, "env": env}
    session.pool.run(session.orchestrator, f"cat > {session.remote_path(JOB + '/spec.json')}",
                     stdin=json.dumps(spec).encode())
    session.pool.run(session.orchestrator, session.helper("job", "launch", _job_dir(session)))
    session.on_step(f"job started on the orchestrator: {' '.join(argv)}")
    return status(session)


def logs(session: HostSession, write: Callable[[bytes], None], follow: bool = False) -> JobStatus:
    """Write the job's output so far to ``write``; with ``follow``, keep going until the job ends."""
    current = status(session)
    if current.state == "none":
        raise UsageError(f"no job was submitted to cluster {session.name!r}; submit one with `flambe-cluster submit`")
    log = session.remote_path(JOB + "/output.log")
    if follow and current.state == "running":
        command = f"tail -c +1 -f --pid={int(current.pgid)} {log}"
        session.pool.run(session.orchestrator, command, timeout=FOLLOW_TIMEOUT, on_stdout=write)
        return status(session)
    session.pool.run(session.orchestrator, f"cat {log}", on_stdout=write)
    return current


def pull(session: HostSession, remote: str, local: Path) -> None:
    """Gather ``~/<remote>`` from every factory into the orchestrator's, then copy it to ``local``."""
    remote = check_relative_path(remote, "remote folder")
    present = session.pool.run_all(session.factories, f"test -d {home_path(remote)}", check=False)
    sources = [factory for factory, result in present.items() if result.ok]
    if sources:
        session.on_step(f"gathering {remote} from {len(sources)} factories on the orchestrator")
        session.gather(remote, sources)
    session.on_step(f"copying {remote} from the orchestrator to {local}")
    Path(local).mkdir(parents=True, exist_ok=True)
    session.download(session.orchestrator, remote + "/", Path(local))

