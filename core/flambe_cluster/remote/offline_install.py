"""Build the cluster's environment and install into it offline: with uv when it runs here, else with pip.

Usage (on a host, with the host's own interpreter: stdlib only, the
environment may not exist yet; flambe_cluster.environment sends this file's
text with ``python3 -c``)::

    python3 -c SOURCE venv    TOOLS WHEELHOUSE ENV
    python3 -c SOURCE install TOOLS WHEELHOUSE ENV [--reinstall] REQUIREMENT...
    python3 -c SOURCE bytecode TOOLS WHEELHOUSE ENV
    python3 -c SOURCE verify TOOLS WHEELHOUSE ENV

uv is the ``uv`` binary of the uv wheel in WHEELHOUSE (a wheel is a zip:
``uv-*.data/scripts/uv``), unpacked once into TOOLS, with its cache (the
wheels unpacked once per host) in ``TOOLS/cache``.  Where there is no such
wheel or the binary does not run, ``python3 -m venv`` and pip do the same
work.  Nothing is downloaded: uv runs ``--offline``, both ``--no-index``.
``venv`` makes ENV with ``--system-site-packages``; ``install`` installs the
requirements from WHEELHOUSE, with ``--reinstall`` only them, again, without
dependencies.  Exits with the failing tool's exit code.

``bytecode`` unpacks ``WHEELHOUSE/bytecode/<cache tag>.zip`` (compiled once
on the client, see flambe_cluster.bytecode), if there is one for this
interpreter, into ENV's site-packages: only ``__pycache__`` files whose
source is installed there, never outside it.  Failing to do so is a warning,
not an error (the bytecode only saves compiling).

``verify`` checks WHEELHOUSE against the SHA-256 digests the client listed
in ``WHEELHOUSE/MANIFEST.sha256`` (``sha256sum``'s format), before anything
is installed or unpacked: a file missing, different, or a wheel or archive
the manifest does not list fails it (exit 1, naming each); a file that
differs is removed, so the next shipping sends it whole again.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile


def uv_binary(tools: str, wheelhouse: str) -> str | None:
    """The path of a ``uv`` that runs here, unpacked from the wheelhouse if needed, or None."""
    path = os.path.join(tools, "uv")
    if not os.path.isfile(path):
        wheels = sorted(glob.glob(os.path.join(wheelhouse, "uv-*.whl")))
        if not wheels:
            return None
        with zipfile.ZipFile(wheels[-1]) as archive:
            members = [n for n in archive.namelist() if n.endswith(".data/scripts/uv")]
            if not members:
                return None
            os.makedirs(tools, exist_ok=True)
            partial = path + ".partial"
            with archive.open(members[0]) as source, open(partial, "wb") as target:
                shutil.copyfileobj(source, target)
            os.chmod(partial, 0o755)
            os.replace(partial, path)
    try:
        works = subprocess.run([path, "--version"], capture_output=True, timeout=60).returncode == 0
    except OSError:
        works = False
    return path if works else None


def unpack_bytecode(wheelhouse: str, env: str) -> None:
    """Write the bytecode archive's files whose source ENV holds into ENV's site-packages."""
    archive_path = os.path.join(wheelhouse, "bytecode", sys.implementation.cache_tag + ".zip")
    if not os.path.isfile(archive_path):
        return
    site = os.path.realpath(os.path.join(env, "lib", "python%d.%d" % sys.version_info[:2], "site-packages"))
    with zipfile.ZipFile(archive_path) as archive:
        for name in archive.namelist():
            target = os.path.realpath(os.path.join(site, name))
            if not target.startswith(site + os.sep) or not name.endswith("." + sys.implementation.cache_tag + ".pyc"):
                continue
            try:
                source = importlib.util.source_from_cache(target)
            except ValueError:  # not a __pycache__ file of this interpreter
                continue
            if not os.path.isfile(source):
                continue
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with open(target + ".partial", "wb") as out:
                out.write(archive.read(name))
            os.replace(target + ".partial", target)


MANIFEST = "MANIFEST.sha256"


def verify(wheelhouse: str) -> list[str]:
    """The problems of WHEELHOUSE against its manifest (an empty list when every file matches)."""
    listed: dict[str, str] = {}
    with open(os.path.join(wheelhouse, MANIFEST)) as manifest:
        for line in manifest:
            digest, _, name = line.rstrip("\n").partition("  ")
            listed[name] = digest
    problems: list[str] = []
    for name, digest in sorted(listed.items()):
        path = os.path.join(wheelhouse, name)
        try:
            digest_of = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest_of.update(block)
            actual = digest_of.hexdigest()
        except OSError as exc:
            problems.append("%s: cannot be read (%s)" % (name, exc.strerror))
            continue
        if actual != digest:
            problems.append("%s: its SHA-256 is %s, the client sent %s" % (name, actual, digest))
            os.remove(path)  # so that the next shipping sends it whole again
    for path in glob.glob(os.path.join(wheelhouse, "**", "*"), recursive=True):
        name = os.path.relpath(path, wheelhouse)
        if name.endswith((".whl", ".zip")) and name not in listed:
            problems.append("%s: not sent by the client" % name)
    return problems


def main(argv: list[str]) -> int:
    verb, tools, wheelhouse, env, rest = argv[0], argv[1], argv[2], argv[3], argv[4:]
    if verb == "bytecode":  # an optimisation: the environment is complete without it
        try:
            unpack_bytecode(wheelhouse, env)
        except Exception as exc:  # noqa: BLE001 - only a warning: the environment is complete without it
            print("warning: the shipped bytecode was not unpacked (Python compiles as it imports): %s" % exc,
                  file=sys.stderr)
        return 0
    if verb == "verify":
        try:
            problems = verify(wheelhouse)
        except OSError as exc:
            problems = ["%s cannot be read (%s)" % (MANIFEST, exc)]
        for problem in problems:
            print("the wheelhouse does not match what the client sent: " + problem, file=sys.stderr)
        if problems:
            print("nothing was installed; run `flambe-cluster up` again (it ships the wheelhouse anew)",
                  file=sys.stderr)
        return 1 if problems else 0
    uv = uv_binary(tools, wheelhouse)
    python = os.path.join(env, "bin", "python")
    os.environ.update(UV_CACHE_DIR=os.path.join(tools, "cache"), UV_PYTHON_DOWNLOADS="never", UV_NO_PROGRESS="1")
    if verb == "venv":
        command = ([uv, "venv", "--offline", "--quiet", "--system-site-packages", "--python", sys.executable, env] if uv
                   else [sys.executable, "-m", "venv", "--system-site-packages", env])
    else:
        again = rest[:1] == ["--reinstall"]
        requirements = rest[1:] if again else rest
        if uv:
            command = [uv, "pip", "install", "--offline", "--quiet", "--python", python, "--no-index",
                       "--find-links", wheelhouse, *(["--no-deps", "--reinstall"] if again else []), *requirements]
        else:
            command = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-compile",
                       "--no-index", "--find-links", wheelhouse,
                       *(["--no-deps", "--force-reinstall"] if again else []), *requirements]
    return subprocess.run(command, stdin=subprocess.DEVNULL).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
