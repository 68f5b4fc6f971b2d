"""Compiling, once on the client, the bytecode a Ray node needs, so that fresh hosts do not each compile it.

A fresh host has Ray's sources and no bytecode: its first ``ray start``
(the CLI, the dashboard, the agents, the log monitor) compiles some seven
hundred modules, about 3 CPU seconds on every host.  Instead the client
compiles them once per wheelhouse, from the wheels themselves, into
``<wheelhouse>/bytecode/<cache tag>.zip`` (e.g. ``cpython-311.zip``), which
travels with the wheelhouse; each host unpacks it into its environment
after installing (``flambe_cluster.remote.offline_install``).

The bytecode is *checked-hash* (PEP 552): Python validates each file against
the hash of the source it sits beside, whatever the files' times, and
compiles afresh where they differ, so a file that does not match is never
used.  Which modules: those the client's own interpreter loads when it
imports the entry points of a Ray node's processes (:data:`RAY_NODE_ENTRIES`;
the client runs the same Ray version as the hosts), found in the wheels.
Nothing is made when the client's Python is not the hosts' (the hosts then
compile as before).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import py_compile
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

# The modules whose imports a Ray node's processes run: `ray start` itself, the dashboard, the per-node agents (which
# load every module under ray.dashboard.modules: ".*" means a package and all its submodules), the log monitor, the
# autoscaler's monitor (head), the process reaper, workers, and flambe-cluster's own node helper (for its
# dependencies: flambe-cluster itself is rebuilt with every change of its code and not compiled here).
RAY_NODE_ENTRIES = (
    "ray.scripts.scripts",
    "ray.dashboard.dashboard",
    "ray.dashboard.agent",
    "ray.dashboard.modules.*",
    "ray._private.runtime_env.agent.main",
    "ray._private.log_monitor",
    "ray.autoscaler._private.monitor",
    "ray.autoscaler.v2.monitor",
    "ray._private.ray_process_reaper",
    "ray._private.workers.default_worker",
    "flambe_cluster.remote.raynode",
)

FOLDER = "bytecode"

log = logging.getLogger(__name__)

_LOADED_SOURCES = """
import importlib, json, os, pkgutil, site, sys, sysconfig
out, entries = sys.argv[1], sys.argv[2:]
files = []  # a node reads walked modules' sources whether or not they load, as this process does
for name in entries:
    try:
        module = importlib.import_module(name.removesuffix(".*"))
        if name.endswith(".*"):
            for found in pkgutil.walk_packages(module.__path__, module.__name__ + ".", onerror=lambda name: None):
                last = found.name.rpartition(".")[2]
                files.append(os.path.join(found.module_finder.path, last, "__init__.py") if found.ispkg
                             else os.path.join(found.module_finder.path, last + ".py"))
                try:
                    importlib.import_module(found.name)
                except BaseException:
                    pass
    except BaseException:
        pass
files += [str(getattr(m, "__file__", None)) for m in list(sys.modules.values())]
roots = {os.path.realpath(sysconfig.get_paths()[key]) + os.sep for key in ("purelib", "platlib")}
roots.add(os.path.realpath(site.getusersitepackages()) + os.sep)
relative = {os.path.realpath(f)[len(root):] for f in files if f.endswith(".py") for root in roots
            if os.path.realpath(f).startswith(root)}
with open(out, "w") as listing:
    json.dump(sorted(relative), listing)
os._exit(0)  # no waiting for threads an imported module may have started
"""


def archive_path(wheelhouse: Path) -> Path:
    """Where the bytecode of ``wheelhouse`` lies (for this interpreter's cache tag)."""
    return wheelhouse / FOLDER / f"{sys.implementation.cache_tag}.zip"


def compile_for(wheelhouse: Path, python: str, on_compile: Callable[[], None] = lambda: None) -> Path | None:
    """The bytecode archive for the wheels in ``wheelhouse``, made once; None when hosts of Python ``python``
    ("3.11") cannot use it.

    Cached beside the wheels: a wheelhouse's content never changes once
    gathered, and neither does its bytecode.  ``on_compile()`` is called
    before compiling (not when the archive is cached).  When no module can be
    found (the client's Ray does not import), nothing is made or cached.  The
    bytecode only saves the hosts compiling: a failure to make it is logged
    and returns None, never raises.
    """
    if sys.implementation.name != "cpython" or python != f"{sys.version_info[0]}.{sys.version_info[1]}":
        return None
    target = archive_path(wheelhouse)
    if target.exists():
        return target
    on_compile()
    try:
        sources = _sources_in_wheels(wheelhouse, _loaded_sources(RAY_NODE_ENTRIES))
        if not sources:
            return None
        # Written beside the wheelhouse, not in it (the wheelhouse folder is shipped as it is), then moved in whole.
        handle, partial = tempfile.mkstemp(prefix=f".{wheelhouse.name}-bytecode-", dir=wheelhouse.parent)
        os.close(handle)
        try:
            with (tempfile.TemporaryDirectory(prefix="flambe-cluster-bytecode-") as scratch,
                  zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as out):
                for wheel, members in sources.items():
                    with zipfile.ZipFile(wheel) as archive:
                        for member in members:
                            compiled = _compile(archive.read(member), member, scratch)
                            if compiled is not None:
                                out.writestr(importlib.util.cache_from_source(member, optimization=""), compiled)
            os.chmod(partial, 0o644)  # as the wheels (mkstemp made it 0600)
            target.parent.mkdir(exist_ok=True)
            os.replace(partial, target)
        finally:
            Path(partial).unlink(missing_ok=True)
    except (OSError, zipfile.BadZipFile) as exc:
        log.warning("no bytecode for the hosts (they compile as they import): %s", exc)
        return None
    return target


def _loaded_sources(entries: tuple[str, ...]) -> set[str]:
    """The source files (relative to site-packages: ``ray/_private/services.py``) this interpreter reads importing
    ``entries``, in a child process; modules that fail to import are skipped, and a child that fails finds none."""
    with tempfile.TemporaryDirectory(prefix="flambe-cluster-bytecode-") as scratch:
        listing = Path(scratch) / "sources.json"
        try:
            subprocess.run([sys.executable, "-c", _LOADED_SOURCES, str(listing), *entries], capture_output=True,
                           check=False, stdin=subprocess.DEVNULL, timeout=120, cwd=scratch,
                           env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
            return set(json.loads(listing.read_text()))
        except (OSError, ValueError, subprocess.TimeoutExpired):
            return set()


def _sources_in_wheels(wheelhouse: Path, sources: set[str]) -> dict[Path, list[str]]:
    """Per wheel in ``wheelhouse``, its members among ``sources``."""
    found: dict[Path, list[str]] = {}
    for wheel in sorted(wheelhouse.glob("*.whl")):
        with zipfile.ZipFile(wheel) as archive:
            members = [m for m in archive.namelist() if m in sources]
        if members:
            found[wheel] = members
    return found


def _compile(source: bytes, member: str, scratch: str) -> bytes | None:
    """Checked-hash bytecode of ``source`` (the wheel member ``member``), compiled by py_compile in ``scratch``;
    None for a source this interpreter cannot compile (the host then reports it as it would have)."""
    path, compiled = os.path.join(scratch, "source.py"), os.path.join(scratch, "source.pyc")
    Path(path).write_bytes(source)
    try:
        py_compile.compile(path, cfile=compiled, dfile=member, doraise=True, optimize=0,
                           invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)
    except py_compile.PyCompileError:
        return None
    return Path(compiled).read_bytes()
