"""One job at a time on the orchestrator: submit, status, logs, stop, pull.

A job is a file or folder shipped to ``~/.flambe-cluster/<cluster>/job/code``
(a folder's ``.gitignore`` patterns and the ``excludes`` honoured) and run
there by :mod:`flambe_cluster.remote.job`, detached from the SSH session:
the client may go away and the job goes on.  A folder's job runs in its
copy of the folder, a file's in the code folder.  It gets
``RAY_ADDRESS`` (the head), ``FLAMBE_REMOTE_ENV`` (the cluster's
RemoteEnvironment as JSON), ``FLAMBE_SECRETS`` (the secrets file, when sent)
and the cluster environment's Python first on ``PATH``.
"""

from __future__ import annotations

import getpass
import json
import posixpath
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

from attrs import frozen

from . import hostfiles
from .errors import ClusterError, UsageError
from .paths import check_relative_path, home_path
from .session import HostSession
from .sync import warn_if_large

JOB = "job"
RUNNABLE_FILE = "runnable.pkl"
FOLLOW_TIMEOUT = 7 * 24 * 3600.0
#: rsync reads each folder's ``.gitignore`` as exclude patterns for that folder and below.
GITIGNORE_FILTER = "--filter=:- .gitignore"


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
    orchestrator = session.require_orchestrator()
    if not hostfiles.has_environment(session, [orchestrator])[orchestrator]:
        return JobStatus("none")
    result = session.pool.run(orchestrator, session.helper("job", "status", _job_dir(session)))
    data = json.loads(result.stdout)
    return JobStatus(data["state"], data["exit_code"], data["pgid"])


def stop(session: HostSession) -> JobStatus:
    """Stop the running job (its whole process group); idempotent."""
    orchestrator = session.require_orchestrator()
    if not hostfiles.has_environment(session, [orchestrator])[orchestrator]:
        return JobStatus("none")
    session.pool.run(orchestrator, session.helper("job", "stop", _job_dir(session)))
    return status(session)


def command_for(session: HostSession, path: Path, args: Sequence[str], entry: str | None,
                home: str) -> tuple[list[str], str]:
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
    secrets: str | None = None,
    excludes: Sequence[str] = (),
) -> JobStatus:
    """Ship ``path`` (a file or folder) to the orchestrator and start it, detached.

    What the ``.gitignore`` files inside the folder ignore is not shipped,
    nor what matches one of ``excludes`` (rsync patterns, which read as
    ``.gitignore`` lines; rsync does not know git's ``!`` negation).
    Refuses (naming ``--force``) while another job runs; with ``force`` the
    running job is stopped first.  ``secrets`` is the path on the
    orchestrator that :meth:`HostSession.send_secrets` returned (the job gets
    it as ``FLAMBE_SECRETS``).
    """
    path = Path(path).resolve()  # `.` and `..` become named folders
    if not path.exists():
        raise UsageError(f"nothing to submit: {path} does not exist")
    _make_room(session, force)
    argv, workdir = command_for(session, path, args, entry, hostfiles.orchestrator_home(session))
    filters = [GITIGNORE_FILTER, *(f"--exclude={pattern}" for pattern in excludes)]
    return _launch(session, path, argv, workdir, secrets, filters)


def submit_runnable(session: HostSession, runnable: object, *, force: bool = False,
                    secrets: str | None = None) -> JobStatus:
    """Ship any object with a ``run()`` method to the orchestrator, pickled, and call ``run()`` there, detached.

    Flambé's way (``cluster.execute(runnable, ...)``).  The object is pickled
    with cloudpickle (Ray's), its class's module by value, so a class
    defined in the caller's own code needs no install on the hosts; what it
    imports must be installed there (extensions).  ``secrets`` is the path
    on the orchestrator that :meth:`HostSession.send_secrets` returned (the
    job gets it as ``FLAMBE_SECRETS``).
    """
    if not callable(getattr(runnable, "run", None)):
        raise UsageError(f"cannot execute {type(runnable).__name__!r} objects: they have no run() method")
    _make_room(session, force)
    with tempfile.TemporaryDirectory(prefix="flambe-runnable-") as scratch:
        folder = Path(scratch) / "runnable"
        folder.mkdir()
        (folder / RUNNABLE_FILE).write_bytes(_pickled(runnable))
        code = posixpath.join(hostfiles.orchestrator_home(session), _job_dir(session), "code", folder.name)
        argv = [posixpath.join(hostfiles.orchestrator_home(session), session.remote_root, "env", "bin", "python"),
                "-m", "flambe_cluster.remote.runnable", posixpath.join(code, RUNNABLE_FILE)]
        return _launch(session, folder, argv, code, secrets)


def _pickled(runnable: object) -> bytes:
    from ray import cloudpickle  # Ray brings cloudpickle; imported only when an object is shipped

    # Ray's cloudpickle is untyped: its functions, as used here
    register: Callable[[ModuleType], None] = cloudpickle.register_pickle_by_value
    unregister: Callable[[ModuleType], None] = cloudpickle.unregister_pickle_by_value
    dumps: Callable[[object], bytes] = cloudpickle.dumps
    module = sys.modules.get(type(runnable).__module__)
    by_value = module if module is not None and module.__name__ not in ("__main__", "builtins") \
        and not module.__name__.startswith("flambe_cluster") else None
    if by_value is not None:
        register(by_value)
    try:
        return dumps(runnable)
    finally:
        if by_value is not None:
            unregister(by_value)


def _make_room(session: HostSession, force: bool) -> None:
    """Refuse while a job runs (naming ``--force``), or stop it with ``force``."""
    if status(session).state != "running":
        return
    if not force:
        raise ClusterError(
            f"a job is already running on cluster {session.name!r}; follow it with `flambe-cluster logs CONFIG "
            "--follow`, or stop it and run this one with `flambe-cluster submit --force`"
        )
    session.on_step("stopping the running job (--force)")
    stop(session)


def _launch(session: HostSession, path: Path, argv: list[str], workdir: str, secrets: str | None,
            filters: Sequence[str] = ()) -> JobStatus:
    """Ship ``path`` into the job's code folder (``filters``: rsync options choosing what goes), write the job's
    spec and start it detached; warns when what is shipped is large."""
    home = hostfiles.orchestrator_home(session)
    orchestrator = session.require_orchestrator()
    env = {
        "RAY_ADDRESS": session.ray_head_address,
        "FLAMBE_CLUSTER_NAME": session.name,
        "FLAMBE_REMOTE_ENV": json.dumps(session.remote_environment(getpass.getuser()).as_dict()),
        "PATH": f"{posixpath.join(home, session.remote_root, 'env', 'bin')}:/usr/local/bin:/usr/bin:/bin",
        "PYTHONUNBUFFERED": "1",
    }
    if secrets is not None:
        env["FLAMBE_SECRETS"] = posixpath.join(home, secrets)
    code = posixpath.join(_job_dir(session), "code")
    session.on_step(f"shipping {path} to the orchestrator")
    warn_if_large([path], filters)
    hostfiles.create_dirs_on(session, [orchestrator], [code])
    session.upload(orchestrator, [path], code + "/", delete=True, extra=filters)
    spec = {"argv": argv, "cwd": workdir, "env": env}
    session.pool.run(orchestrator, f"cat > {session.remote_path(JOB + '/spec.json')}", stdin=json.dumps(spec).encode())
    session.pool.run(orchestrator, session.helper("job", "launch", _job_dir(session)))
    session.on_step(f"job started on the orchestrator: {' '.join(argv)}")
    return status(session)


def logs(session: HostSession, write: Callable[[bytes], None], follow: bool = False,
         tail: int | None = None) -> JobStatus:
    """Write the job's output so far to ``write`` (its last ``tail`` lines only, when given); with ``follow``,
    keep going until the job ends."""
    current = status(session)
    if current.state == "none":
        raise UsageError(f"no job was submitted to cluster {session.name!r}; submit one with `flambe-cluster submit`")
    orchestrator = session.require_orchestrator()  # status() required it
    log = session.remote_path(JOB + "/output.log")
    start = "-c +1" if tail is None else f"-n {int(tail)}"
    if follow and current.state == "running":
        assert current.pgid is not None  # a running job has its process group
        command = f"tail {start} -f --pid={int(current.pgid)} {log}"
        session.pool.run(orchestrator, command, timeout=FOLLOW_TIMEOUT, on_stdout=write)
        return status(session)
    session.pool.run(orchestrator, f"tail {start} {log}", on_stdout=write)
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
    session.download(session.require_orchestrator(), remote + "/", Path(local))

