"""The local state of a cluster: one folder per cluster on the client, written by this module only.

It holds the pinned host keys (``known_hosts``), the per-cluster key pair,
the journal of every resource a run created, the path of the cluster's
configuration file (remembered by ``up``, for ``list``), the members the last
``up`` left (``members.json``, see :mod:`flambe_cluster.resize`), providers'
own records (:meth:`ClusterState.write_record`), and the lock that keeps two
processes from changing the same cluster at once.  The folder is
``$FLAMBE_CLUSTER_HOME/clusters/<name>`` (default ``~/.flambe-cluster``), or
``<state_dir>/<name>`` when the configuration sets ``state_dir``.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from attrs import define, frozen
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from .errors import ClusterBusyError, UsageError
from .records import CreatedResource, Instance, identity

STATE_HOME_ENV = "FLAMBE_CLUSTER_HOME"
logger = logging.getLogger(__name__)


def state_home() -> Path:
    """The root of all clusters' state: ``$FLAMBE_CLUSTER_HOME`` or ``~/.flambe-cluster``."""
    return Path(os.environ.get(STATE_HOME_ENV) or Path.home() / ".flambe-cluster")


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``, mode 0600, atomically.

    The data goes to a temporary file in the same folder (created 0600, so
    never readable by others), is flushed to disk, then renamed over
    ``path``: a reader, or a crash at any moment, sees the old file or the
    new one, whole — never an empty or half-written one.
    """
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise


def without_host_names(text: str, names: set[str]) -> str:
    """A known_hosts ``text`` less every line naming one of ``names``."""
    lines = text.splitlines(keepends=True)
    return "".join(line for line in lines if not set(line.split(" ", 1)[0].split(",")) & names)


def edit_private(path: Path, edit: Callable[[str], str]) -> None:
    """Rewrite the text file ``path`` as ``edit(current text)`` ("" when missing), atomically.

    Holds an exclusive lock on the folder while reading and replacing, so
    edits by concurrent processes are applied one after the other, none
    lost.  The new text is written with :func:`write_private`; an empty
    result removes the file instead, so an existing empty file is never
    something these functions left.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        try:
            current = path.read_text()
        except FileNotFoundError:
            current = ""
        new = edit(current)
        if new == current:
            return
        if new:
            write_private(path, new.encode())
        else:
            path.unlink()
    finally:
        os.close(folder)  # releases the lock


@frozen
class KeyPair:
    """The per-cluster SSH key pair (ed25519)."""

    private_path: Path
    public_line: str

    @property
    def public_path(self) -> Path:
        return self.private_path.with_suffix(".pub")


@define
class Journal:
    """Append-only record of what runs created and what was destroyed since.

    One JSON object per line, flushed and fsynced before ``record`` returns,
    so a crash right after creating a resource still leaves it on disk.  A
    line cut short by a crash is skipped with a warning naming the file and
    line, and what is appended after it starts on a line of its own.
    """

    path: Path

    def start_run(self) -> RunJournal:
        """A journal handle for a new run, with a fresh unique ``run_id``."""
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S")
        return RunJournal(self, f"{stamp}-{uuid.uuid4().hex[:8]}")

    def _append(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, sort_keys=True) + "\n"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":  # a torn last line: never glue an entry onto it
                line = "\n" + line
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def entries(self) -> list[dict[str, Any]]:
        """Every entry, oldest first (an empty list when nothing was recorded).

        A damaged line (cut short by a crash) is skipped and logged as a
        warning naming the file and the line.
        """
        try:
            text = self.path.read_text(errors="replace")
        except FileNotFoundError:
            return []
        entries = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                entry = None
            if isinstance(entry, dict):
                entries.append(entry)
            else:
                logger.warning(
                    "%s line %d is damaged (cut short by a crash?) and was skipped: %.80r",
                    self.path, number, line,
                )
        return entries

    def outstanding(self, run_id: str | None = None) -> list[CreatedResource]:
        """Resources created (by ``run_id``, or by any run) and not marked destroyed, oldest first."""
        live: dict[tuple[str, str], CreatedResource] = {}
        for entry in self.entries():
            key = (entry["kind"], entry["id"])
            if entry["event"] == "created" and (run_id is None or entry["run"] == run_id):
                live[key] = CreatedResource(entry["kind"], entry["id"], entry.get("details") or {})
            elif entry["event"] == "destroyed":
                live.pop(key, None)
        return list(live.values())

    def record_created(self, run_id: str, resource: CreatedResource) -> None:
        self._append(
            {"event": "created", "run": run_id, "kind": resource.kind, "id": resource.resource_id,
             "details": resource.details, "time": time.time()}
        )

    def forget_instances(self, instance_ids: set[str]) -> None:
        """Forget instances released one by one (a resize), leaving what else the records hold.

        A live record of one of them (its id, or ``details["instance_id"]``)
        is marked destroyed; a record of several (``details["instance_ids"]``,
        one launch) is written again, by the same run, with the others only —
        or marked destroyed when none is left.
        """
        live: dict[tuple[str, str], dict[str, Any]] = {}
        for entry in self.entries():
            key = (entry["kind"], entry["id"])
            if entry["event"] == "created":
                live[key] = entry
            elif entry["event"] == "destroyed":
                live.pop(key, None)
        for (kind, resource_id), entry in live.items():
            details = entry.get("details") or {}
            several = list(details.get("instance_ids") or ())
            left = [i for i in several if i not in instance_ids]
            if resource_id in instance_ids or details.get("instance_id") in instance_ids or (several and not left):
                self.record_destroyed([CreatedResource(kind, resource_id)], run_id=entry["run"])
            elif len(left) < len(several):
                self.record_created(entry["run"], CreatedResource(kind, resource_id, {**details, "instance_ids": left}))

    def note(self, run_id: str, action: str, details: dict[str, Any]) -> None:
        """Record an action that created nothing by itself (a watch's: a factory lost, replaced, ...)."""
        self._append({"event": "watch", "run": run_id, "kind": "watch", "id": action, "action": action,
                      "details": details, "time": time.time()})

    def record_down(self) -> None:
        """Record that the cluster is being taken down (``down``): a watch that started earlier ends."""
        self._append({"event": "down", "run": None, "kind": "cluster", "id": "down", "time": time.time()})

    def taken_down_since(self, since: float) -> bool:
        """Whether ``down`` began at or after ``since`` (a :func:`time.time` value)."""
        return any(e["event"] == "down" and e.get("time", 0.0) >= since for e in self.entries())

    def record_destroyed(self, resources: list[CreatedResource], run_id: str | None = None) -> None:
        """Mark ``resources`` as gone (rolled back or terminated)."""
        for resource in resources:
            self._append(
                {"event": "destroyed", "run": run_id, "kind": resource.kind, "id": resource.resource_id,
                 "time": time.time()}
            )


@define
class RunJournal:
    """The journal as one run sees it: what it records carries its ``run_id``."""

    journal: Journal
    run_id: str

    def record(self, resource: CreatedResource) -> None:
        """Record that this run created ``resource``; durable when this returns."""
        self.journal.record_created(self.run_id, resource)

    def created(self) -> list[CreatedResource]:
        """What this run created and is not yet destroyed."""
        return self.journal.outstanding(self.run_id)


#: The file of a state folder that records where its cluster lives (see ClusterState.check_place).
PLACE = "place.json"
RAY_PORT = "ray.json"  # the port the cluster's Ray head was started on
MEMBERS = "members.json"  # the cluster's members as the last `up` left them (see ClusterState.members)


@define
class ClusterState:
    """The state folder of one cluster (created on first use, mode 0700)."""

    root: Path

    @classmethod
    def for_cluster(cls, name: str, state_dir: Path | None = None) -> ClusterState:
        base = state_dir if state_dir is not None else state_home() / "clusters"
        return cls(base / name)

    @classmethod
    def every_cluster(cls) -> list[ClusterState]:
        """The state folders of the state home (``state_home()/clusters``), sorted by name.

        Clusters whose configuration sets ``state_dir`` keep their state
        elsewhere and are not among them.
        """
        base = state_home() / "clusters"
        return [cls(path) for path in sorted(base.iterdir()) if path.is_dir()] if base.is_dir() else []

    def remember_config(self, path: str | os.PathLike[str]) -> None:
        """Remember the absolute path of the cluster's configuration file."""
        self.ensure()
        write_private(self.root / "config_path", f"{Path(path).resolve()}\n".encode())

    @property
    def config_path(self) -> Path | None:
        """The configuration file :meth:`remember_config` remembered (``None`` when none was)."""
        try:
            return Path((self.root / "config_path").read_text().strip())
        except FileNotFoundError:
            return None

    def ensure(self) -> ClusterState:
        """Create the folder (and parents) if missing; returns self."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.root, 0o700)
        return self

    @property
    def known_hosts(self) -> Path:
        """This cluster's pinned host keys, in OpenSSH known_hosts format."""
        return self.root / "known_hosts"

    def forget_host_keys(self, names: set[str]) -> None:
        """Drop the pinned keys of ``names`` (known_hosts names) — for machines that were destroyed."""
        edit_private(self.known_hosts, lambda text: without_host_names(text, names))

    @property
    def journal(self) -> Journal:
        return Journal(self.root / "journal.jsonl")

    def key_pair(self, comment: str, file_name: str = "cluster_key") -> KeyPair:
        """An ed25519 key pair of this cluster, generated on first call, reused after.

        ``cluster_key`` is the per-cluster key the hosts share; the private
        key is written 0600, atomically, and never leaves this folder except
        to the cluster's own hosts.  The public line is derived from the
        private key each time (the ``.pub`` beside it is rewritten, atomically,
        when it differs).
        """
        self.ensure()
        private_path = self.root / file_name
        public_path = private_path.with_suffix(".pub")
        if private_path.exists():
            key = serialization.load_ssh_private_key(private_path.read_bytes(), password=None)
        else:
            key = ed25519.Ed25519PrivateKey.generate()
            write_private(private_path, key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        line = f"{public.decode()} {comment}"
        # the public line always comes from the private key: a .pub cut short by a crash is never authorized
        if not public_path.exists() or public_path.read_text().strip() != line:
            write_private(public_path, f"{line}\n".encode())
        return KeyPair(private_path, line)

    def recorded_place(self) -> dict[str, str] | None:
        """The place :meth:`check_place` recorded (None when none is, or the record is unreadable)."""
        try:
            recorded = json.loads((self.root / PLACE).read_text())
        except (OSError, ValueError):
            return None
        return recorded if isinstance(recorded, dict) else None

    def check_place(self, place: dict[str, str], record: bool, in_use: bool) -> None:
        """Refuse a cluster of this name in another place while the recorded one is ``in_use``; with ``record``,
        remember ``place`` (replacing a record of a place no longer in use).

        ``place`` is the provider's name with where it puts the cluster (see
        ``flambe_cluster_place``).  Raises :class:`UsageError` naming both
        places and what to do.
        """
        recorded = self.recorded_place()
        if recorded is not None and recorded != place and in_use:
            def spelled(where: dict[str, str]) -> str:
                return ", ".join(f"{k} {v}" for k, v in sorted(where.items()))

            raise UsageError(
                f"cluster {self.root.name!r} of this state folder ({self.root}) is in another place: "
                f"{spelled(recorded)}; this file names {spelled(place)}. Nothing was touched. Give this cluster "
                "another `name:`, or take the other one down first (flambe-cluster down with its own file), or use "
                "another state folder (FLAMBE_CLUSTER_HOME)")
        if record and recorded != place:
            write_private(self.ensure().root / PLACE, json.dumps(place, sort_keys=True).encode())

    def forget_place(self) -> None:
        """Forget the recorded place and Ray port (the cluster was taken down: the name is free again); idempotent."""
        (self.root / PLACE).unlink(missing_ok=True)
        self.forget_ray_port()

    def forget_ray_port(self) -> None:
        """Forget the Ray head's port (its head was stopped); idempotent."""
        (self.root / RAY_PORT).unlink(missing_ok=True)

    def recorded_ray_port(self) -> int | None:
        """The port this cluster's Ray head was last started on (None when none is recorded)."""
        try:
            return int(json.loads((self.root / RAY_PORT).read_text())["port"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def record_ray_port(self, port: int) -> None:
        """Remember the port the Ray head was started on (a later ``up`` with another ``ray_port`` is refused)."""
        write_private(self.ensure().root / RAY_PORT, json.dumps({"port": port}).encode())

    def members(self) -> list[Instance] | None:
        """The members the record holds (None without a record, or with one that cannot be read: nothing to shrink)."""
        try:
            return [Instance.from_json(item) for item in json.loads((self.root / MEMBERS).read_text())]
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning("ignoring the damaged member record %s (%s)", self.root / MEMBERS, exc)
            return None

    def record_members(self, hosts: Sequence[Instance]) -> None:
        """Replace the member record with ``hosts`` (written only when it changes, atomically)."""
        text = json.dumps([h.to_json() for h in hosts], indent=1, sort_keys=True) + "\n"
        path = self.ensure().root / MEMBERS
        with contextlib.suppress(FileNotFoundError):
            if path.read_text() == text:
                return
        write_private(path, text.encode())

    def drop_members(self, gone: Sequence[Instance] | None = None) -> None:
        """Drop ``gone`` from the member record (rolled back, released); all of it when ``gone`` is None (``down``)."""
        if gone is None:
            (self.root / MEMBERS).unlink(missing_ok=True)
            return
        recorded = self.members()
        if recorded is not None:
            removed = {identity(h) for h in gone}
            self.record_members([h for h in recorded if identity(h) not in removed])

    def _record(self, file_name: str) -> Path:
        """A provider's own record: a plain ``*.json`` name in the folder that none of the core's files has."""
        if "/" in file_name or file_name.startswith(".") or not file_name.endswith(".json") \
                or file_name in (PLACE, RAY_PORT, MEMBERS):
            raise ValueError(f"{file_name!r} cannot name a provider's record: a plain *.json name the core does "
                             "not use is needed")
        return self.root / file_name

    def read_record(self, file_name: str) -> Any | None:
        """The JSON a provider's own record ``file_name`` holds (None when there is none; a damaged one raises)."""
        try:
            return json.loads(self._record(file_name).read_text())
        except FileNotFoundError:
            return None

    def write_record(self, file_name: str, data: Any) -> None:
        """Replace a provider's own record ``file_name`` with ``data`` as JSON (atomically, mode 0600)."""
        path = self._record(file_name)
        self.ensure()
        write_private(path, json.dumps(data).encode())

    def drop_record(self, file_name: str) -> None:
        """Remove a provider's own record ``file_name``; idempotent."""
        self._record(file_name).unlink(missing_ok=True)

    def forget_key_pair(self, file_name: str = "cluster_key") -> None:
        """Remove the key pair ``file_name`` (the next :meth:`key_pair` generates a new one); idempotent."""
        for path in (self.root / file_name, (self.root / file_name).with_suffix(".pub")):
            path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def lock(self, wait: float = 0.0, on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
        """Hold the cluster's exclusive lock for the duration of the block.

        If another process holds it, wait up to ``wait`` seconds (calling
        ``on_wait`` once with who holds it), then raise
        :class:`ClusterBusyError` naming the holder.  Released on exit, also
        when the holder dies.
        """
        self.ensure()
        path = self.root / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + wait
            told = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                    holder = path.read_text().strip() or "another process"
                    if time.monotonic() >= deadline:
                        raise ClusterBusyError(
                            f"cluster {self.root.name!r} is busy: {holder} holds its lock ({path}). "
                            "Wait for it to finish, or pass --wait SECONDS to wait for it."
                        ) from None
                    if on_wait and not told:
                        on_wait(holder)
                        told = True
                    time.sleep(0.2)
            os.ftruncate(fd, 0)
            os.write(fd, f"PID {os.getpid()} on {os.uname().nodename}".encode())
            yield
        finally:
            os.close(fd)


def public_key_line(key_path: Path | None) -> str:
    """``"ssh-ed25519 AAAA..."``: the public half of the private key at ``key_path``.

    Derived from the private key; an encrypted key needs its public key next
    to it (``<key>.pub``).  Raises ``ValueError`` saying what to do otherwise,
    also for no key (``None``: a cluster whose logins use ssh-agent's keys).
    """
    if key_path is None:
        raise ValueError("this provider authorises your public key on the hosts it makes: set `key` to your "
                         "private key (its public half is read from it or from <key>.pub)")
    data = key_path.read_bytes()
    key = None
    for load in (serialization.load_ssh_private_key, serialization.load_pem_private_key):
        try:
            key = load(data, password=None)
            break
        except (ValueError, TypeError, UnsupportedAlgorithm):
            continue
    if key is not None:
        return key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                             serialization.PublicFormat.OpenSSH).decode()
    public = key_path.with_name(key_path.name + ".pub")
    if public.is_file():
        fields = public.read_text().split()
        if len(fields) >= 2:
            return " ".join(fields[:2])
    raise ValueError(
        f"cannot read the private key {str(key_path)!r} (encrypted or not a key); put its public key next to it "
        f"as {str(public)!r}"
    )
