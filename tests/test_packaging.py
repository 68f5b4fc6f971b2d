"""The distribution builds as a wheel that works on its own, outside the source tree."""

from __future__ import annotations

import re
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(ROOT)],
                   check=True, capture_output=True)
    (built,) = dist.glob("flambe_cluster-*.whl")
    return built


def install_in_venv(env: Path, wheel: Path, dependencies: list[str]) -> Path:
    """A venv isolated from every base interpreter, its dependencies the folders ``dependencies`` (named in a
    .pth file, which adds them but runs none of their own .pth files), flambe-cluster from ``wheel``; its python."""
    venv.EnvBuilder(system_site_packages=False, with_pip=False).create(env)
    python = env / "bin" / "python"
    env_site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
    Path(env_site, "dependencies-of-the-test-run.pth").write_text("".join(f"{p}\n" for p in dependencies))
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--disable-pip-version-check", str(wheel)], check=True)
    return python


def test_wheel_contains_the_packages_and_works_when_installed(wheel, tmp_path):
    names = zipfile.ZipFile(wheel).namelist()
    assert "flambe_cluster/py.typed" in names
    assert "flambe_cluster/hookspecs.py" in names
    assert "flambe_cluster/testing/conformance.py" in names
    assert "flambe_cluster_ssh/__init__.py" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    fields = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "License-Expression: MIT" in fields and "Classifier: Typing :: Typed" in fields and "Project-URL: " in fields
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[flambe_cluster.providers]" in text and "ssh = flambe_cluster_ssh" in text
    assert "flambe-cluster = flambe_cluster.cli:main" in text

    # A venv isolated from every base interpreter (no system site-packages), whose only other
    # package folder is the one this test runs from (named explicitly in a .pth file, which adds
    # the folder but runs none of its own .pth files, so the checkout's editable install stays
    # out): the dependencies come from the project's own install, flambe-cluster from the wheel.
    env = tmp_path / "venv"
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    python = install_in_venv(env, wheel, sorted(ours))
    env_site = str(env / "lib")
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


def test_without_an_extra_a_provider_is_shown_not_ready_and_its_file_gets_the_hint_and_exit_2(wheel, tmp_path):
    # The test run's packages, minus boto3 (the [aws] extra) and google-cloud-compute's metadata (the [gcp]
    # extra), each entry a link in a folder of its own: a venv over it has neither extra installed.
    hidden = re.compile(r"^(boto3|boto3-.*\.dist-info|google_cloud_compute-.*\.dist-info)$")
    own = re.compile(r"(flambe_cluster|\.pth$)")
    deps = tmp_path / "deps"
    deps.mkdir()
    for folder in sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}):
        for entry in Path(folder).iterdir():
            if not hidden.match(entry.name) and not own.search(entry.name) and not (deps / entry.name).exists():
                (deps / entry.name).symlink_to(entry)
    env = tmp_path / "venv"
    python = install_in_venv(env, wheel, [str(deps)])
    assert subprocess.run([python, "-c", "import boto3"], capture_output=True, cwd=tmp_path).returncode == 1
    environment = {"COLUMNS": "60", "PATH": "/usr/bin:/bin", "FLAMBE_CLUSTER_HOME": str(tmp_path / "state")}

    def cli(*args):
        return subprocess.run([env / "bin" / "flambe-cluster", *args], capture_output=True, text=True, cwd=tmp_path,
                              env=environment)

    listed = cli("providers")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    # at 60 columns, in a pipe: the command to copy is whole, on a line of its own
    assert "aws: install its extra: pip install 'flambe-cluster[aws]'" in lines, listed.stdout
    assert "gcp: install its extra: pip install 'flambe-cluster[gcp]'" in lines, listed.stdout
    rows = {line.split("│")[1].strip(): line for line in lines if line.count("│") > 2}
    assert "no" in rows["aws"] and "yes" not in rows["aws"], listed.stdout

    for provider, body in (("aws", "factories_num: 1\nfactories_type: t3.micro\n"), ("gcp", "zone: europe-west1-b\n")):
        config = tmp_path / f"{provider}.yaml"
        config.write_text(f"provider: {provider}\nname: c\nkey: {tmp_path / 'id'}\nusername: u\n{body}")
        for command in ("up", "status", "down"):
            done = cli(command, str(config))
            assert done.returncode == 2, (command, done.stdout, done.stderr)
            error, log = done.stderr.splitlines()  # the error in one line, then where the run's log is
            assert "Traceback" not in done.stderr and log.startswith("the whole log of this run: "), done.stderr
            assert error.startswith(f"error: provider {provider!r} needs ")
            assert error.endswith(f"pip install 'flambe-cluster[{provider}]'."), done.stderr
