"""The distribution builds as a wheel that works on its own, outside the source tree."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_contains_the_packages_and_works_when_installed(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(ROOT)],
        check=True, capture_output=True,
    )
    (wheel,) = (tmp_path / "dist").glob("flambe_cluster-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "flambe_cluster/py.typed" in names
    assert "flambe_cluster/hookspecs.py" in names
    assert "flambe_cluster/testing/conformance.py" in names
    assert "flambe_cluster_ssh/__init__.py" in names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[flambe_cluster.providers]" in text and "ssh = flambe_cluster_ssh" in text
    assert "flambe-cluster = flambe_cluster.cli:main" in text

    # a venv that sees this interpreter's dependencies but gets flambe-cluster only from the wheel
    env = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=True).create(env)
    python = env / "bin" / "python"
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    where = subprocess.run(
        [python, "-c", "import flambe_cluster, flambe_cluster_ssh; print(flambe_cluster.__file__)"],
        check=True, capture_output=True, text=True, cwd=tmp_path,
    ).stdout
    assert where.startswith(str(env)), where
    listed = subprocess.run([env / "bin" / "flambe-cluster", "providers"], check=True, capture_output=True, text=True,
                            env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}).stdout
    assert "ssh" in listed and "flambe-cluster" in listed
