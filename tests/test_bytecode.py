"""The bytecode of a Ray node, compiled once on the client (flambe_cluster.bytecode) and unpacked on each host
(flambe_cluster.remote.offline_install ``bytecode``).

End to end on test hosts: test_ray_jobs checks that every host of a fresh
``up`` runs its Ray node on the shipped bytecode.  Here, on this machine's
own files: what the client compiles, and what a host's unpacking writes.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import ray
from flambe_cluster import bytecode, environment

TAG = sys.implementation.cache_tag


def test_the_client_compiles_checked_hash_bytecode_of_the_wheels_sources_once(tmp_path):
    source = (Path(ray.__file__).parent / "scripts" / "scripts.py").read_bytes()  # a module `ray start` loads
    with zipfile.ZipFile(tmp_path / "ray-0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("ray/scripts/scripts.py", source)
        wheel.writestr("ray/not_loaded_by_a_node.py", "x = 1\n")
    python = "%d.%d" % sys.version_info[:2]
    compiling = []
    archive = bytecode.compile_for(tmp_path, python, on_compile=lambda: compiling.append(1))
    assert archive == tmp_path / "bytecode" / f"{TAG}.zip" and compiling == [1]
    with zipfile.ZipFile(archive) as made:
        assert made.namelist() == [f"ray/scripts/__pycache__/scripts.{TAG}.pyc"]
        data = made.read(made.namelist()[0])
    assert data[:4] == importlib.util.MAGIC_NUMBER
    assert int.from_bytes(data[4:8], "little") == 3, "checked-hash: valid only beside this very source"
    assert data[8:16] == importlib.util.source_hash(source)
    assert bytecode.compile_for(tmp_path, python, on_compile=lambda: compiling.append(2)) == archive
    assert compiling == [1], "made once per wheelhouse"


def test_no_bytecode_when_the_wheels_hold_no_module_of_a_ray_node(tmp_path):
    with zipfile.ZipFile(tmp_path / "other-0-py3-none-any.whl", "w") as wheel:
        wheel.writestr("other/module.py", "x = 1\n")
    assert bytecode.compile_for(tmp_path, "%d.%d" % sys.version_info[:2]) is None
    assert not (tmp_path / "bytecode").exists(), "nothing cached: a later up tries again"


def test_no_bytecode_for_hosts_of_another_python(tmp_path):
    assert bytecode.compile_for(tmp_path, "2.7") is None
    assert not (tmp_path / "bytecode").exists()


def test_a_host_unpacks_only_pycache_files_of_sources_it_installed(tmp_path):
    env = tmp_path / "env"
    site = env / "lib" / ("python%d.%d" % sys.version_info[:2]) / "site-packages"
    (site / "pkg").mkdir(parents=True)
    (site / "pkg" / "mod.py").write_text("x = 1\n")
    wheelhouse = tmp_path / "wheelhouse"
    (wheelhouse / "bytecode").mkdir(parents=True)
    with zipfile.ZipFile(wheelhouse / "bytecode" / f"{TAG}.zip", "w") as archive:
        for name in (f"pkg/__pycache__/mod.{TAG}.pyc", f"pkg/__pycache__/gone.{TAG}.pyc", "pkg/mod.pyc",
                     f"../../outside/__pycache__/evil.{TAG}.pyc", f"/tmp/__pycache__/abs.{TAG}.pyc",
                     "pkg/__pycache__/mod.other-99.pyc"):
            archive.writestr(name, b"bytes of " + name.encode())
    done = subprocess.run([sys.executable, "-c", environment.INSTALLER.read_text(), "bytecode", str(tmp_path / "uv"),
                           str(wheelhouse), str(env)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.pyc") if "wheelhouse" not in p.parts)
    assert written == [str((site / "pkg" / "__pycache__" / f"mod.{TAG}.pyc").relative_to(tmp_path))]
    assert (site / "pkg" / "__pycache__" / f"mod.{TAG}.pyc").read_bytes() == (
        f"bytes of pkg/__pycache__/mod.{TAG}.pyc".encode())
    assert not Path(f"/tmp/__pycache__/abs.{TAG}.pyc").exists()


def test_a_damaged_archive_is_a_warning_and_the_install_goes_on(tmp_path):
    env = tmp_path / "env"
    (env / "lib").mkdir(parents=True)
    (tmp_path / "wheelhouse" / "bytecode").mkdir(parents=True)
    (tmp_path / "wheelhouse" / "bytecode" / f"{TAG}.zip").write_bytes(b"not a zip")
    done = subprocess.run([sys.executable, "-c", environment.INSTALLER.read_text(), "bytecode", str(tmp_path / "uv"),
                           str(tmp_path / "wheelhouse"), str(env)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "warning: the shipped bytecode was not unpacked" in done.stderr
    assert not list(env.rglob("*.pyc"))


def test_a_host_without_bytecode_for_its_python_unpacks_nothing(tmp_path):
    env = tmp_path / "env"
    (env / "lib").mkdir(parents=True)
    (tmp_path / "wheelhouse").mkdir()
    done = subprocess.run([sys.executable, "-c", environment.INSTALLER.read_text(), "bytecode", str(tmp_path / "uv"),
                           str(tmp_path / "wheelhouse"), str(env)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert not list(tmp_path.rglob("*.pyc"))
