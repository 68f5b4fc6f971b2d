"""Gathering the wheels the hosts install from, on the client, once.

Hosts may have no route to the internet, so they never download anything:
the client gathers wheels for the hosts' platform and Python — its own
flambe-cluster (built as a wheel), its Ray version, their dependencies and
any extensions — into a wheelhouse, and the hosts install offline from it
(``pip install --no-index --find-links``).  Wheelhouses are cached under
``$XDG_CACHE_HOME/flambe-cluster`` (default ``~/.cache/flambe-cluster``): a
second cluster of the same platform costs no download.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

from attrs import frozen
from packaging.requirements import Requirement

from .errors import FlambeClusterError

DISTRIBUTION = "flambe-cluster"


def cache_home() -> Path:
    """Where wheelhouses are cached on the client."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "flambe-cluster"


@frozen
class HostPlatform:
    """What a wheel must match to install on a host: Python version, CPU and C library."""

    python: str  # "3.11"
    machine: str  # "x86_64"
    glibc: str | None  # "2.36"; None for non-glibc systems

    @property
    def tag(self) -> str:
        libc = f"glibc{self.glibc}" if self.glibc else "nolibc"
        return f"cp{self.python.replace('.', '')}-{self.machine}-{libc}"

    def pip_download_args(self) -> list[str]:
        """``pip download`` options selecting wheels for this platform only."""
        short = self.python.replace(".", "")
        args = ["--only-binary=:all:", "--python-version", self.python, "--implementation", "cp",
                "--abi", f"cp{short}", "--abi", "abi3", "--abi", "none", "--platform", "any"]
        if self.glibc:
            major, minor = (int(x) for x in self.glibc.split(".")[:2])
            platforms = [f"manylinux_{major}_{m}_{self.machine}" for m in range(minor, 4, -1)]
            legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
            platforms += [f"{name}_{self.machine}" for m, name in legacy.items() if (major, minor) >= (2, m)]
            platforms.append(f"linux_{self.machine}")
            for platform in platforms:
                args += ["--platform", platform]
        return args


def client_platform() -> HostPlatform:
    """The client's own platform (used when hosts and client match)."""
    import platform

    libc, version = platform.libc_ver()
    return HostPlatform(f"{sys.version_info[0]}.{sys.version_info[1]}", platform.machine(),
                        version if libc == "glibc" else None)


def source_digest() -> str:
    """A digest of the installed flambe_cluster package's files: changes whenever its code does."""
    root = Path(__file__).parent  # the flambe_cluster package
    digest = hashlib.sha256(metadata.version(DISTRIBUTION).encode())
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


#: The lines of pip's output that say what it is fetching (passed on as progress).
PIP_PROGRESS = ("Collecting ", "Downloading ", "Processing ")


def _run_pip(args: Sequence[str], what: str, on_line: Callable[[str], None] | None = None) -> None:
    """Run pip; ``on_line`` gets each of its :data:`PIP_PROGRESS` lines as it comes (run pip without ``-q`` then)."""
    argv = [sys.executable, "-m", "pip", *args]
    if on_line is None:
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        code, stderr = done.returncode, done.stderr
    else:
        with tempfile.TemporaryFile("w+") as errors:
            process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL, text=True)
            try:
                for line in process.stdout or ():
                    if line.strip().startswith(PIP_PROGRESS):
                        verb, _, rest = line.strip().partition(" ")
                        thing, _, size = rest.partition(" ")  # a requirement, file or URL; "(67.1 MB)"
                        on_line(f"{verb.lower()} {thing.rstrip('/').split('/')[-1]} {size}".rstrip())
                code = process.wait()
            finally:
                if process.poll() is None:  # an interrupt: pip stops with this command
                    process.kill()
                    process.wait()
            errors.seek(0)
            stderr = errors.read()
    if code != 0:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        raise FlambeClusterError(f"{what} failed on this machine (pip exit code {code}):\n{tail}")


def build_self_wheel(out_dir: Path) -> Path:
    """flambe-cluster as installed on the client, as a wheel in ``out_dir`` (built once per source digest).

    From a source checkout (editable install) it is built with pip; from an
    installed wheel it is repackaged from the installed files.
    """
    target = out_dir / source_digest()
    existing = sorted(target.glob("flambe_cluster-*.whl"))
    if existing:
        return existing[0]
    target.mkdir(parents=True, exist_ok=True)
    dist = metadata.distribution(DISTRIBUTION)
    origin = json.loads(dist.read_text("direct_url.json") or "{}")
    with tempfile.TemporaryDirectory(dir=target) as scratch:
        if origin.get("url", "").startswith("file://") and "dir_info" in origin:
            source = origin["url"][len("file://"):]
            # without the build backend installed here, pip fetches it into an isolated build environment
            isolation = ["--no-build-isolation"] if _importable("hatchling") else []
            _run_pip(["wheel", "--no-deps", *isolation, "-q", "-w", scratch, source],
                     "building the flambe-cluster wheel")
            (built,) = Path(scratch).glob("flambe_cluster-*.whl")
        else:
            built = _repackage(dist, Path(scratch))
        final = target / built.name
        shutil.move(str(built), final)
    return final


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _repackage(dist: metadata.Distribution, out_dir: Path) -> Path:
    """Zip an installed (non-editable) distribution's files back into a wheel."""
    name = f"flambe_cluster-{dist.version}-py3-none-any.whl"
    skip = ("INSTALLER", "direct_url.json", "REQUESTED", "RECORD")
    path = out_dir / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        records = []
        for file in dist.files or []:
            text = str(file)
            if text.startswith("..") or "__pycache__" in text or text.endswith(skip):
                continue
            data = Path(file.locate()).read_bytes()
            archive.writestr(text, data)
            digest = hashlib.sha256(data).digest()
            records.append(f"{text},sha256={base64.urlsafe_b64encode(digest).rstrip(b'=').decode()},{len(data)}")
        info = f"flambe_cluster-{dist.version}.dist-info"
        records.append(f"{info}/RECORD,,")
        archive.writestr(f"{info}/RECORD", "\n".join(records) + "\n")
    return path


def runtime_requirements() -> list[str]:
    """flambe-cluster's own dependencies (no extras), the client's exact Ray version and uv."""
    requirements = []
    for text in metadata.requires(DISTRIBUTION) or []:
        requirement = Requirement(text)
        if requirement.marker is None or "extra" not in str(requirement.marker):
            requirements.append(str(requirement))
    requirements.append(f"ray=={metadata.version('ray')}")
    requirements.append("uv")  # the hosts' installer (flambe_cluster.remote.offline_install), not installed itself
    return sorted(requirements)


def gather(platform: HostPlatform, requirements: Sequence[str], local_wheels: Sequence[Path] = (),
           on_line: Callable[[str], None] | None = None) -> Path:
    """A folder holding wheels for ``requirements`` (and ``local_wheels``' dependencies) on ``platform``.

    ``on_line`` gets pip's lines saying what it collects and downloads.

    Downloaded once per (platform, requirement set); a completed folder is
    reused without asking any package index.  Raises
    :class:`FlambeClusterError` with pip's message when a wheel cannot be had
    (no network on the client, no wheel for that platform).
    """
    key = hashlib.sha256(
        json.dumps([platform.tag, sorted(requirements), sorted(_file_digest(p) for p in local_wheels)]).encode()
    ).hexdigest()[:16]
    folder = cache_home() / "wheelhouse" / platform.tag / key
    done = folder / ".complete"
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    _run_pip(
        ["download", *([] if on_line else ["-q"]), "--disable-pip-version-check", "--progress-bar", "off",
         "--dest", str(folder), *platform.pip_download_args(), *requirements, *(str(p) for p in local_wheels)],
        f"gathering wheels for the hosts ({platform.tag}: {', '.join(requirements) or 'local packages'})",
        on_line,
    )
    done.write_text(json.dumps({"requirements": sorted(requirements), "platform": platform.tag}))
    return folder


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


#: The file beside the shipped wheels that lists their SHA-256 digests (``sha256sum``'s format).
MANIFEST = "MANIFEST.sha256"


def manifest(sources: Sequence[Path]) -> str:
    """The manifest of the files in ``sources`` merged into one folder: ``<sha256>  <relative path>`` per line.

    The hosts check it before they install or unpack anything
    (:mod:`flambe_cluster.remote.offline_install` ``verify``).
    """
    files = {str(p.relative_to(source)): p for source in map(Path, sources) for p in sorted(source.rglob("*"))
             if p.is_file()}
    return "".join(f"{_file_digest(path)}  {name}\n" for name, path in sorted(files.items()))


def build_local_wheel(source: Path, out_dir: Path) -> Path:
    """Build a local project folder (an extension) into a wheel on the client."""
    digest = hashlib.sha256()
    for path in sorted(Path(source).rglob("*")):
        relative = path.relative_to(source)
        if path.is_file() and not ({"__pycache__", ".git", "build", "dist"} & set(relative.parts)):
            digest.update(str(relative).encode() + b"\0" + path.read_bytes())
    target = out_dir / digest.hexdigest()[:16]
    existing = sorted(target.glob("*.whl"))
    if existing:
        return existing[0]
    target.mkdir(parents=True, exist_ok=True)
    _run_pip(["wheel", "--no-deps", "-q", "-w", str(target), str(source)], f"building the extension {source}")
    (built,) = target.glob("*.whl")
    return built
