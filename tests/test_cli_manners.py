"""The command line's manners, through the real CLI: `down` asks on a terminal, `-q`, `list` (the state
folder's clusters, and the AWS sweep for clusters none knows), and what `submit` ships.

The AWS clusters live on moto (their machines never answer SSH: nothing here needs them to); the `ssh`
cluster on real test hosts.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aws_support import moto_cloud  # noqa: F401 - a fixture
from flambe_cluster.state import ClusterState
from helpers import run_cli, ssh_cluster_yaml

CREATOR = "tester"


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """One state folder for the module: `list` sees every cluster the tests made."""
    return tmp_path_factory.mktemp("flambe-state")


def aws_cluster(cloud, home: Path, folder: Path, name: str) -> Path:
    """An AWS cluster of 1 orchestrator and 1 factory as `up` leaves it: tagged instances, its file remembered."""
    config = cloud.write_config(folder / f"{name}.yaml", name, factories_num=1, creator=CREATOR, connect_timeout=5)
    for role in ("orchestrator", "factory"):
        cloud.make_instance({"flambe-cluster:cluster": name, "flambe-cluster:creator": CREATOR,
                             "flambe-cluster:role": role, "Name": f"{name}_{role}"})
    ClusterState.for_cluster(name, home / "clusters").remember_config(config)
    return config


def running(cloud, name: str) -> list[str]:
    return [i["InstanceId"] for i in cloud.instances(name, states=("pending", "running"))]


def read_until(fd: int, wanted: bytes, timeout: float) -> bytes:
    """What the pseudo-terminal ``fd`` shows until ``wanted`` appears (or it closes, or ``timeout`` passes)."""
    seen, deadline = b"", time.monotonic() + timeout
    while wanted not in seen and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.5)[0]:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the other side is closed
                break
            if not chunk:
                break
            seen += chunk
    return seen


def answered_on_a_terminal(args: list[str], env: dict, answer: bytes, timeout: float = 120) -> tuple[str, int]:
    """`flambe-cluster ARGS...` on a pseudo-terminal, its question answered with ``answer``: (what the terminal
    showed, with plain line ends; the exit code)."""
    master, slave = os.openpty()
    process = subprocess.Popen([sys.executable, "-m", "flambe_cluster", *args],
                               stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    try:
        shown = read_until(master, b"[y/N]", timeout=timeout)
        os.write(master, answer)
        shown += read_until(master, b"\x00", timeout=timeout)  # until it ends
        code = process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(master)
    return shown.decode(errors="replace").replace("\r\n", "\n"), code


def test_down_asks_on_a_terminal_and_does_nothing_on_no(moto_cloud, home, tmp_path):
    config = aws_cluster(moto_cloud, home, tmp_path, "asked")
    machines = running(moto_cloud, "asked")
    shown, code = answered_on_a_terminal(["down", str(config)], moto_cloud.cli_env(home), b"n\n")
    assert "Destroy the 2 machines of cluster 'asked' (aws: asked_orchestrator, asked_factory0)?" in shown, shown
    assert "left as it is" in shown and code == 1, shown
    assert running(moto_cloud, "asked") == machines


def test_down_without_a_terminal_does_not_ask_and_quiet_prints_nothing_but_errors(moto_cloud, home, tmp_path):
    config = aws_cluster(moto_cloud, home, tmp_path, "scripted")
    done = moto_cloud.cli("down", str(config), "-q", home=home, check=0)
    assert running(moto_cloud, "scripted") == []
    assert done.stdout == "" and done.stderr == "", done.stderr
    done = moto_cloud.cli("-q", "status", "no-such-file.yaml", home=home, check=2)
    assert done.stderr.startswith("error: ") and done.stdout == ""


def test_list_json_shows_clusters_of_two_providers(three_hosts, flambe_client_key, moto_cloud, home, tmp_path):
    config = ssh_cluster_yaml(tmp_path / "onhosts.yaml", three_hosts.hosts, flambe_client_key.path, "onhosts")
    run_cli("up", str(config), state_home=home, check=0)
    aws_cluster(moto_cloud, home, tmp_path, "cloudy")
    listed = json.loads(moto_cloud.cli("list", "--json", home=home, check=0).stdout)["clusters"]
    by_name = {c["name"]: c for c in listed}
    ssh, aws = by_name["onhosts"], by_name["cloudy"]
    assert (ssh["provider"], ssh["exists"], ssh["error"]) == ("ssh", True, None)
    assert [(h["role"], h["ssh"]) for h in ssh["hosts"]] == [
        ("orchestrator", "ok"), ("factory", "ok"), ("factory", "ok")]
    assert ssh["ray"]["alive_workers"] == 2 and ssh["job"]["state"] == "none"
    assert ssh["config"] == str(config.resolve())
    assert (aws["provider"], aws["exists"], aws["ray"]) == ("aws", True, None)
    assert sorted(h["instance_id"] for h in aws["hosts"]) == sorted(running(moto_cloud, "cloudy"))
    assert all(h["ssh"].startswith("error") for h in aws["hosts"])
    table = moto_cloud.cli("list", home=home, check=0).stdout
    assert "onhosts" in table and "cloudy" in table


def test_the_aws_sweep_finds_a_cluster_whose_state_folder_was_deleted(moto_cloud, home, tmp_path):
    aws_cluster(moto_cloud, home, tmp_path, "remembered")
    aws_cluster(moto_cloud, home, tmp_path, "lost")
    shutil.rmtree(home / "clusters" / "lost")
    swept = json.loads(moto_cloud.cli("list", "--provider", "aws", "--region", "us-east-1", "--json",
                                      home=home, check=0).stdout)
    by_name = {c["name"]: c for c in swept["untracked"]}
    assert "remembered" not in by_name
    ids = running(moto_cloud, "lost")
    assert sorted(m.split()[0] for m in by_name["lost"]["machines"]) == sorted(ids)
    assert by_name["lost"]["remove"].startswith("aws ec2 terminate-instances --region us-east-1 --instance-ids ")
    assert sorted(by_name["lost"]["remove"].split("--instance-ids ")[1].split()) == sorted(ids)
    text = moto_cloud.cli("list", "--provider", "aws", home=home, check=0).stdout
    assert "cluster 'lost'" in text and "remove with: aws ec2 terminate-instances" in text
    done = moto_cloud.cli("list", "--provider", "ssh", home=home, check=2)
    assert "cannot look for machines by tags" in done.stderr


def test_the_aws_sweep_tells_two_users_clusters_of_one_name_apart(moto_cloud, home, tmp_path):
    """alice's and bob's `exp1` are two clusters: this state folder knows alice's; bob's is listed on its own."""
    aws_cluster(moto_cloud, home, tmp_path, "exp1")  # made by CREATOR, remembered here
    for role in ("orchestrator", "factory"):
        moto_cloud.make_instance({"flambe-cluster:cluster": "exp1", "flambe-cluster:creator": "bob",
                                  "flambe-cluster:role": role, "Name": f"exp1_{role}"})
    mine = {i["InstanceId"] for i in moto_cloud.instances("exp1", states=("pending", "running"))
            if {"Key": "flambe-cluster:creator", "Value": CREATOR} in i.get("Tags", [])}
    swept = json.loads(moto_cloud.cli("list", "--provider", "aws", "--region", "us-east-1", "--json",
                                      home=home, check=0).stdout)["untracked"]
    swept = [c for c in swept if c["name"] == "exp1"]  # the module's other tests leave clusters of their own
    assert [c["place"]["creator"] for c in swept] == ["bob"], swept
    bobs = set(swept[0]["remove"].split("--instance-ids ")[1].split())
    assert len(bobs) == 2 and not bobs & mine, "one terminate line for bob's machines only"
    text = moto_cloud.cli("list", "--provider", "aws", home=home, check=0).stdout
    assert "cluster 'exp1' (creator bob, region us-east-1)" in text, text


def test_submit_ships_what_gitignore_and_exclude_leave_and_logs_follow_exits_with_the_jobs_code(
        three_hosts, flambe_client_key, home, tmp_path):
    config = ssh_cluster_yaml(tmp_path / "onhosts.yaml", three_hosts.hosts, flambe_client_key.path, "onhosts")
    run_cli("up", str(config), state_home=home, check=0)
    job = tmp_path / "project"
    (job / "data").mkdir(parents=True)
    (job / "notes").mkdir()
    (job / "main.py").write_text("import os\nprint('working in', os.getcwd())\nraise SystemExit(3)\n")
    (job / ".gitignore").write_text("data/\n*.ckpt\n")
    with open(job / "data" / "big.bin", "wb") as big:
        big.write(os.urandom(50 * 2**20))
    (job / "model.ckpt").write_bytes(os.urandom(2**20))
    (job / "notes" / "draft.txt").write_text("private\n")
    done = run_cli("submit", str(config), "--exclude", "notes", str(job), state_home=home, check=0)
    assert "Uploading" not in done.stderr, done.stderr
    code = three_hosts.hosts[0].home / ".flambe-cluster" / "onhosts" / "job" / "code" / "project"
    shipped = {str(p.relative_to(code)): p.stat().st_size for p in code.rglob("*") if p.is_file()}
    assert sum(shipped.values()) < 2**20, shipped
    assert set(shipped) == {"main.py", ".gitignore"}, shipped
    follow = run_cli("logs", str(config), "--follow", state_home=home, check=3)
    assert follow.stdout.strip().startswith("working in /") and follow.stdout.strip().endswith(
        "/.flambe-cluster/onhosts/job/code/project"), follow.stdout


# --- the help's manners, a cluster never brought up, the packaging's metadata (no hosts, no cloud)

ROOT = Path(__file__).resolve().parents[1]


def help_at_80_columns(*words: str, home: Path) -> str:
    """What ``flambe-cluster WORDS... --help`` prints on an 80-column terminal."""
    done = subprocess.run([sys.executable, "-m", "flambe_cluster", *words, "--help"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "FLAMBE_CLUSTER_HOME": str(home), "COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    return done.stdout


def command_summaries(text: str) -> tuple[list[str], dict[str, str]]:
    """The Commands section of the group's help: (its lines; each command's summary, wrapped lines joined)."""
    lines = text.split("\nCommands:\n", 1)[1].splitlines()
    summaries: dict[str, str] = {}
    name = None
    for line in lines:
        words = line.split()
        if not words:
            continue
        if line.startswith("  ") and not line.startswith("   "):  # "  name  summary"; wrapped lines start further in
            name = words[0]
            summaries[name] = " ".join(words[1:])
        elif name is not None:
            summaries[name] += " " + " ".join(words)
    return lines, summaries


def test_every_command_summary_in_the_help_is_whole_at_80_columns(tmp_path):
    from flambe_cluster.cli import cli

    lines, summaries = command_summaries(help_at_80_columns(home=tmp_path))
    assert set(summaries) == set(cli.commands), summaries
    cut = [line for line in lines if line.rstrip().endswith("...")]
    assert not cut, "summaries cut short:\n" + "\n".join(cut)
    assert all(summaries.values()), summaries


def test_ups_summary_and_help_say_it_prepares_the_software_and_starts_ray(tmp_path):
    _, summaries = command_summaries(help_at_80_columns(home=tmp_path))
    assert "software" in summaries["up"] and "Ray" in summaries["up"], summaries["up"]
    first = " ".join(help_at_80_columns("up", home=tmp_path).split("\n\n")[1].split())
    assert "software" in first and "Ray" in first, first


def test_exec_on_says_which_hosts_each_value_picks(tmp_path):
    from flambe_cluster.cli import exec_

    on = next(p for p in exec_.params if p.name == "target")
    assert on.help and all(choice in on.help for choice in on.type.choices), on.help
    shown = " ".join(help_at_80_columns("exec", home=tmp_path).split())
    assert " ".join(on.help.split()) in shown, shown


def unreachable_cluster_file(path: Path, provider: str, name: str) -> Path:
    """A cluster file no `up` ever used: ``ssh`` at made-up addresses (TEST-NET-1: nothing answers), or ``local``."""
    import yaml
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    if provider == "local":
        body = {"provider": "local", "name": name, "factories_num": 1}
    else:
        key = path.parent / "id_ed25519"
        key.write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()))
        key.chmod(0o600)
        body = {"provider": "ssh", "name": name, "username": "nobody", "key": str(key), "connect_timeout": 5,
                "orchestrator_ip": "192.0.2.1", "factories_ips": ["192.0.2.2"]}
    path.write_text(yaml.safe_dump(body, sort_keys=False))
    return path


@pytest.mark.parametrize("provider", ["ssh", "local"])
def test_status_and_logs_of_a_cluster_never_brought_up_create_nothing_and_list_shows_no_row(provider, tmp_path):
    home, name = tmp_path / "state", f"never-{provider}"
    config = unreachable_cluster_file(tmp_path / "never.yaml", provider, name)

    def nothing_made() -> None:
        made = sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.relative_to(home).parts[0] != "logs")
        assert made == [], f"a look created {made}"  # the run logs aside: no state folder, no key pair
        listed = json.loads(run_cli("list", "--json", state_home=home, check=0).stdout)["clusters"]
        assert listed == [], listed

    status = run_cli("status", str(config), state_home=home, timeout=120)
    nothing_made()
    assert status.returncode == 0 and f"cluster {name!r} does not exist: it was never brought up" in status.stdout, \
        (status.returncode, status.stdout, status.stderr)
    shown = json.loads(run_cli("status", str(config), "--json", state_home=home, timeout=120, check=0).stdout)
    assert (shown["name"], shown["exists"], shown["hosts"]) == (name, False, []), shown
    done = run_cli("logs", str(config), state_home=home, timeout=120, check=2)
    assert done.stderr.startswith(f"error: cluster {name!r} does not exist: it was never brought up"), done.stderr
    nothing_made()
    assert "no clusters in this state folder" in run_cli("list", state_home=home, check=0).stdout


def test_the_build_needs_a_hatchling_that_knows_license_files_and_the_project_links_its_changelog():
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement
    from packaging.version import Version

    for pyproject in (ROOT / "pyproject.toml", ROOT / "examples" / "inventory-provider" / "pyproject.toml"):
        data = tomllib.loads(pyproject.read_text())
        if "license-files" not in data["project"]:
            continue
        hatchling = [Requirement(r) for r in data["build-system"]["requires"] if Requirement(r).name == "hatchling"]
        floors = [Version(s.version) for r in hatchling for s in r.specifier if s.operator in (">=", "==", "~=")]
        assert floors and min(floors) >= Version("1.26"), (pyproject, data["build-system"]["requires"])
    urls = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]
    changelog = [url for label, url in urls.items() if label.lower() == "changelog"]
    assert changelog and changelog[0].endswith("/CHANGELOG.md"), urls
    assert (ROOT / "CHANGELOG.md").read_text().startswith("# Changelog\n")
