"""The plan before `up` and the cost record on Compute Engine: google-cloud-compute against the local fake.

No test hosts: instances are created and deleted in the fake only (the
provider's load and rollback, in-process).  Prices come from the file's
`prices:` (the provider asks no price API).
"""

from __future__ import annotations

import json
import time

import pytest
import yaml
from flambe_cluster import Cluster
from flambe_cluster.config import parse_config
from flambe_cluster.state import ClusterState
from gcp_fake import FakeComputeEngine
from helpers import run_cli

ADDRESSES = [f"10.213.251.{i}" for i in range(4, 20)]
PRICES = {"e2-standard-2 spot": 0.067, "n1-standard-4 spot": 0.04}  # spot: true makes every instance spot


@pytest.fixture
def fake():
    with FakeComputeEngine(addresses=ADDRESSES, boot_seconds=0.2) as engine:
        yield engine


@pytest.fixture
def raw(fake, flambe_client_key, tmp_path):
    return {"provider": "gcp", "name": "priced", "key": str(flambe_client_key.path), "username": "flambe",
            "factories_num": 2, "zone": "us-central1-a", "project": fake.project, "api_endpoint": fake.url,
            "use_public": False, "orchestrator_type": "e2-standard-2", "factories_type": "n1-standard-4",
            "spot": True, "prices": PRICES, "state_dir": str(tmp_path / "state" / "clusters")}


def write(tmp_path, raw, **overrides):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**raw, **overrides}))
    return path


def test_dry_run_prints_the_plan_and_creates_nothing(fake, raw, tmp_path):
    done = run_cli("up", str(write(tmp_path, raw)), "--dry-run", state_home=tmp_path / "state", check=0)
    lines = done.stdout.splitlines()
    assert "  launch 1 × e2-standard-2 spot at $0.067/h (orchestrator)" in lines, done.stdout
    assert "  launch 2 × n1-standard-4 spot at $0.04/h each (factories)" in lines, done.stdout
    assert "  +0.147 USD per hour in all" in lines, done.stdout
    assert not [c for c in fake.calls if c["method"] == "instances.insert"]


def test_a_lowered_factories_num_plans_the_member_factories_it_terminates(fake, raw, tmp_path):
    cluster = Cluster.from_config(parse_config(raw))
    cluster.load_all_instances()
    cluster.state.record_members(cluster.all_hosts())  # what an `up` records once its hosts are prepared
    last = cluster.factories[-1].instance_id
    smaller = Cluster.from_config(parse_config({**raw, "factories_num": 1}))
    (change,) = smaller.plan()
    assert change.line() == f"terminate {last} (n1-standard-4 spot at $0.04/h)"
    cluster.state.drop_members()
    assert smaller.plan() == [], "a factory up never recorded as a member is not one it terminates"
    cluster.rollback_env()
    cluster.close()
    smaller.close()


def test_cost_counts_each_instance_from_its_record_and_max_cost_refuses(fake, raw, tmp_path):
    cluster = Cluster.from_config(parse_config(raw))
    cluster.load_all_instances()
    time.sleep(1.5)
    cluster.rollback_env()
    cluster.close()
    entries = ClusterState.for_cluster("priced", tmp_path / "state" / "clusters").journal.entries()
    born = {e["id"]: (e["time"], e["details"]["usd_per_hour"]) for e in entries if e["event"] == "created"}
    died = {e["id"]: e["time"] for e in entries if e["event"] == "destroyed"}
    assert len(born) == 3 and set(born) == set(died), entries
    expected = sum((died[name] - at) / 3600 * price for name, (at, price) in born.items())
    shown = json.loads(run_cli("cost", str(write(tmp_path, raw)), "--json", state_home=tmp_path / "state",
                               check=0).stdout)
    assert shown["usd"] == pytest.approx(expected, rel=1e-6) and shown["running"] == 0, (shown, expected)
    refused = run_cli("up", str(write(tmp_path, raw, max_cost=expected / 3)), state_home=tmp_path / "state", check=2)
    assert "which reaches its max_cost" in refused.stderr and "nothing was changed" in refused.stderr, refused.stderr
    assert len([c for c in fake.calls if c["method"] == "instances.insert"]) == 3, "only the first load inserted"


def test_the_watch_takes_the_cluster_down_once_it_reaches_max_cost(fake, raw, tmp_path):
    cluster = Cluster.from_config(parse_config({**raw, "max_cost": 1e-7, "connect_timeout": 2}))
    said = []
    cluster.on_step = said.append
    cluster.load_all_instances()  # its hosts never answer (none behind the fake): down still deletes the instances
    time.sleep(0.5)
    assert cluster.past_max_cost(), "0.147 USD/h for half a second is past 1e-7 USD"
    cluster.watch(interval=0.5, rounds=3)
    cluster.close()
    assert any("which reaches its max_cost" in line and "taking it down" in line for line in said), said
    assert [i for i in fake.instances.values() if i["status"] != "TERMINATED"] == [], "every instance deleted"
    journal = ClusterState.for_cluster("priced", tmp_path / "state" / "clusters").journal
    assert journal.outstanding() == [] and any(e["event"] == "down" for e in journal.entries())
