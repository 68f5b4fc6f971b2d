"""The distribution builds as a wheel that works on its own, outside the source tree."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
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

    # A venv isolated from every base interpreter (no system site-packages), whose only other
    # package folder is the one this test runs from (named explicitly in a .pth file, which adds
    # the folder but runs none of its own .pth files, so the checkout's editable install stays
    # out): the dependencies come from the project's own install, flambe-cluster from the wheel.
    env = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=False, with_pip=False).create(env)
    python = env / "bin" / "python"
    env_site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(env_site, "dependencies-of-the-test-run.pth").write_text("".join(f"{p}\n" for p in sorted(ours)))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--disable-pip-version-check", str(wheel)], check=True)
    where = subprocess.run(
        [python, "-c", "import flambe_cluster, flambe_cluster_ssh, rich; "
                       "print(flambe_cluster.__file__); print(flambe_cluster_ssh.__file__); print(rich.__file__)"],
        check=True, capture_output=True, text=True, cwd=tmp_path,
    ).stdout.splitlines()
    assert where[0].startswith(env_site) and where[1].startswith(env_site), where
    assert any(where[2].startswith(p) for p in ours), where
    listed = subprocess.run([env / "bin" / "flambe-cluster", "providers"], check=True, capture_output=True, text=True,
                            cwd=tmp_path, env={"COLUMNS": "200", "PATH": "/usr/bin:/bin"}).stdout
    assert "ssh" in listed and "flambe-cluster" in listed
