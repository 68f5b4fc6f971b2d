"""The layering contract (.importlinter) holds, and a back-import breaks it."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
PACKAGES = ["core", "providers/ssh", "providers/local", "providers/aws", "providers/gcp", "examples/inventory-provider"]


def lint_imports(source_root: Path) -> subprocess.CompletedProcess:
    """Run import-linter on the packages found under ``source_root`` (the checkout's layout)."""
    path = os.pathsep.join(str(source_root / p) for p in PACKAGES)
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", str(ROOT / ".importlinter")], capture_output=True,
                          text=True, cwd=source_root, env={**os.environ, "PYTHONPATH": path}, timeout=300)


def test_the_import_contracts_hold():
    done = lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 3 kept, 0 broken" in done.stdout, done.stdout


def test_a_module_importing_one_above_it_breaks_the_layers(tmp_path):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    records = tmp_path / "core" / "flambe_cluster" / "records.py"
    records.write_text(records.read_text() + "\nfrom . import session  # a deliberate back-import\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0, done.stdout
    assert "flambe_cluster.records is not allowed to import flambe_cluster.session" in done.stdout, done.stdout


def test_a_provider_reaching_past_the_face_breaks_the_contract(tmp_path):
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    ssh = tmp_path / "providers" / "ssh" / "flambe_cluster_ssh" / "__init__.py"
    ssh.write_text(ssh.read_text() + "\nfrom flambe_cluster import session  # reaching past the face\n")
    done = lint_imports(tmp_path)
    assert done.returncode != 0, done.stdout
    assert "flambe_cluster_ssh is not allowed to import flambe_cluster.session" in done.stdout, done.stdout


def core_modules() -> set[str]:
    """Every module and subpackage of the core (``__init__``/``__main__`` aside)."""
    package = ROOT / "core" / "flambe_cluster"
    return ({p.stem for p in package.glob("*.py") if p.stem not in ("__init__", "__main__")}
            | {p.name for p in package.iterdir() if (p / "__init__.py").exists()})


def contract(name: str) -> configparser.SectionProxy:
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    return config[f"importlinter:contract:{name}"]


def test_the_face_contract_forbids_every_core_module_but_the_face():
    forbidden = {m.removeprefix("flambe_cluster.")
                 for m in contract("providers-use-the-face")["forbidden_modules"].split()}
    assert forbidden == core_modules() - {"provider"}, "a new core module must be forbidden to providers too"


def test_every_core_module_has_its_layer_and_a_line_in_the_readme_layout():
    section = contract("core-layers")
    layered = {m.strip() for line in section["layers"].splitlines() for m in line.split("|") if m.strip()}
    assert core_modules() - set(section["exhaustive_ignores"].split()) == layered
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout"):]
    assert [m for m in sorted(core_modules()) if not re.search(rf"\b{m}\b", layout)] == [], "README's Layout names each"


def test_the_session_holds_hosts_connections_layout_and_transfers_only():
    from flambe_cluster.session import HostSession

    public = [n for n, v in vars(HostSession).items()
              if not n.startswith("_") and (callable(v) or isinstance(v, property))]
    assert len(public) <= 25, f"HostSession grew to {len(public)} public methods: put a step's work in its module"
    source = (ROOT / "core" / "flambe_cluster" / "session.py").read_text()
    assert not re.findall(r"ray_node_hosts|early_ray_nodes|resources|sent_content", source), \
        "a step's state goes in its module's stash key, not on the session"
