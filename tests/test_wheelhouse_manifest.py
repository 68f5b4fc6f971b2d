"""The wheelhouse's manifest: the client lists the SHA-256 of every file it ships, and each host checks the files
it received against it before it installs or unpacks anything (offline_install ``verify``, run here as the hosts
run it: the host's interpreter, ``python3 -c SOURCE``)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from flambe_cluster import environment, wheelhouse


def shipped(tmp_path: Path) -> Path:
    """A wheelhouse as a host holds it: two sources merged, and the manifest the client made of them."""
    deps, own = tmp_path / "deps", tmp_path / "own"
    (deps / "bytecode").mkdir(parents=True)
    (deps / "ray-2.0-py3-none-any.whl").write_bytes(b"ray wheel" * 1000)
    (deps / "bytecode" / "cpython-311.zip").write_bytes(b"bytecode")
    own.mkdir()
    (own / "flambe_cluster-1.0-py3-none-any.whl").write_bytes(b"our wheel")
    host = tmp_path / "host-wheelhouse"
    host.mkdir()
    for source in (deps, own):
        shutil.copytree(source, host, dirs_exist_ok=True)
    (host / wheelhouse.MANIFEST).write_text(wheelhouse.manifest([deps, own]))
    return host


def verify(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", environment.INSTALLER.read_text(), "verify", str(folder / "tools"),
                           str(folder), str(folder / "env")], capture_output=True, text=True, timeout=60)


def test_the_manifest_lists_every_shipped_file_with_its_sha256(tmp_path):
    folder = shipped(tmp_path)
    lines = (folder / wheelhouse.MANIFEST).read_text().splitlines()
    assert [line.split("  ")[1] for line in lines] == [
        "bytecode/cpython-311.zip", "flambe_cluster-1.0-py3-none-any.whl", "ray-2.0-py3-none-any.whl"]
    check = subprocess.run(["sha256sum", "--check", "--quiet", wheelhouse.MANIFEST], cwd=folder, capture_output=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert verify(folder).returncode == 0


def test_a_wheel_that_differs_or_was_not_sent_fails_before_anything_is_installed(tmp_path):
    folder = shipped(tmp_path)
    (folder / "ray-2.0-py3-none-any.whl").write_bytes(b"ray wheel, cut short")
    (folder / "evil-1.0-py3-none-any.whl").write_bytes(b"not sent by the client")
    done = verify(folder)
    assert done.returncode == 1
    assert "ray-2.0-py3-none-any.whl: its SHA-256 is" in done.stderr, done.stderr
    assert "evil-1.0-py3-none-any.whl: not sent by the client" in done.stderr, done.stderr
    assert "nothing was installed" in done.stderr
    assert not (folder / "ray-2.0-py3-none-any.whl").exists(), "removed, so the next shipping sends it whole"
    assert not (folder / "env").exists()

