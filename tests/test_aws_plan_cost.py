"""Before `up` changes paid machines it says what and at what price; the cost of a cluster comes from its record.

boto3 over HTTP against moto (no test hosts): the plan lines and the
question on a pseudo-terminal, `--dry-run`, the cost view against the
journal's own lifetimes × prices, and `max_cost`.  Spot prices come from
moto's spot price history (it answers 0.00001 USD for every type); on-demand
prices from the file's `prices:` (moto has no Price List API).
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import time

import pytest
from aws_support import moto_cloud  # noqa: F401 - a fixture
from flambe_cluster import Cluster
from flambe_cluster.config import parse_config
from flambe_cluster.state import ClusterState

PRICES = {"prices": {"t3.micro": 0.0104, "t3.small": 0.0208}}


def launches(cloud) -> int:
    return cloud.server.count("RunInstances")


def test_dry_run_prints_the_plan_with_prices_and_launches_nothing(moto_cloud, tmp_path):
    path = moto_cloud.write_config(tmp_path / "c.yaml", "planned", factories_spot=True, orchestrator_type="t3.small",
                                   **PRICES)
    before = launches(moto_cloud)
    done = moto_cloud.cli("up", str(path), "--dry-run", home=tmp_path / "state", check=0)
    lines = done.stdout.splitlines()
    assert lines[0] == "up would change the paid machines of cluster 'planned':", done.stdout
    assert "  launch 1 × t3.small on-demand at $0.0208/h (orchestrator)" in lines, done.stdout
    assert "  launch 2 × t3.micro spot at $1e-05/h each (factories)" in lines, done.stdout  # moto's spot history
    assert "  +0.02082 USD per hour in all" in lines, done.stdout
    assert launches(moto_cloud) == before and moto_cloud.instances("planned") == []
    assert ClusterState.for_cluster("planned", tmp_path / "state" / "clusters").journal.entries() == []


def test_on_a_terminal_up_asks_and_a_no_launches_nothing(moto_cloud, tmp_path):
    path = moto_cloud.write_config(tmp_path / "c.yaml", "asked", **PRICES)
    before = launches(moto_cloud)
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "flambe_cluster", "up", str(path)], stdin=follower,
                               stdout=subprocess.PIPE, stderr=follower, env=moto_cloud.cli_env(tmp_path / "state"))
    os.close(follower)
    said = b""
    deadline = time.monotonic() + 120
    while b"Go ahead?" not in said and time.monotonic() < deadline:
        if select.select([leader], [], [], 1)[0]:
            said += os.read(leader, 4096)
    assert b"Go ahead? [y/N]" in said, said
    os.write(leader, b"n\n")
    stdout, _ = process.communicate(timeout=60)
    os.close(leader)
    assert process.returncode == 2
    assert "launch 2 × t3.micro on-demand at $0.0104/h each (factories)" in stdout.decode(), stdout
    assert launches(moto_cloud) == before and moto_cloud.instances("asked") == []


def test_without_a_terminal_up_does_not_ask_and_a_plan_without_changes_prints_nothing(moto_cloud, tmp_path):
    path = moto_cloud.write_config(tmp_path / "c.yaml", "unasked", factories_num=1, **PRICES)
    config = parse_config(moto_cloud.config("unasked", factories_num=1, state_dir=str(tmp_path / "state" / "clusters"),
                                            **PRICES))
    cluster = Cluster.from_config(config)
    cluster.load_all_instances()  # the machines exist (no hosts behind them: nothing connects here)
    assert cluster.plan() == [], "nothing to launch or terminate"
    done = moto_cloud.cli("up", str(path), "--dry-run", home=tmp_path / "state", check=0)
    assert done.stdout == "up would launch and terminate no paid machine of cluster 'unasked'\n", done.stdout
    cluster.rollback_env()
    cluster.close()


def test_cost_adds_up_lifetimes_times_prices_and_max_cost_refuses(moto_cloud, tmp_path):
    home = tmp_path / "state"
    raw = moto_cloud.config("costed", factories_num=2, state_dir=str(home / "clusters"), **PRICES)
    cluster = Cluster.from_config(parse_config(raw))
    cluster.load_all_instances()
    time.sleep(2.0)
    cluster.rollback_env()  # every span closed: the cost is fixed from here on
    cluster.close()
    entries = ClusterState.for_cluster("costed", home / "clusters").journal.entries()
    # independently of flambe_cluster.costs: each launch's instances, from its first record (before the call:
    # as many as asked, erring high, then as many as EC2 answered) to the record of their end, × the price
    born, machines, died = {}, {}, {}
    for entry in entries:
        if entry["event"] == "created" and entry["kind"] == "launch":
            assert entry["details"]["count"] == len(entry["details"]["instance_ids"]
                                                    or [None] * entry["details"]["count"])
            born.setdefault(entry["id"], entry["time"])
            machines[entry["id"]] = (len(entry["details"]["instance_ids"]), entry["details"]["usd_per_hour"])
        elif entry["event"] == "destroyed":
            died[entry["id"]] = entry["time"]
    assert set(born) == set(died) and len(born) == 2, entries
    expected = sum((died[k] - born[k]) / 3600 * count * price for k, (count, price) in machines.items())
    assert expected > 0
    path = moto_cloud.write_config(tmp_path / "c.yaml", "costed", **PRICES)
    shown = json.loads(moto_cloud.cli("cost", str(path), "--json", home=home, check=0).stdout)
    assert shown["usd"] == pytest.approx(expected, rel=1e-6), (shown, expected)
    assert shown["running"] == 0 and shown["usd_per_hour_now"] == 0
    assert [r["machine_hours"] for r in shown["runs"]] == [pytest.approx(sum(
        (died[k] - born[k]) / 3600 * count for k, (count, _) in machines.items()), rel=1e-6)]
    table = moto_cloud.cli("cost", str(path), home=home, check=0).stdout
    assert f"total ${expected:.4f} so far; $0.0000 per hour now (0 machines recorded running)" in table, table

    before = launches(moto_cloud)
    capped = moto_cloud.write_config(tmp_path / "capped.yaml", "costed", max_cost=expected / 2, **PRICES)
    refused = moto_cloud.cli("up", str(capped), "-y", home=home, check=2)
    assert f"has cost ${expected:.2f} since it was brought up, by its record, which reaches its max_cost" \
        in refused.stderr, refused.stderr
    assert "nothing was changed" in refused.stderr and launches(moto_cloud) == before


def test_a_price_no_source_answers_is_said_to_be_unknown(moto_cloud, tmp_path):
    path = moto_cloud.write_config(tmp_path / "c.yaml", "unpriced")  # no prices: and moto has no Price List API
    started = time.monotonic()
    done = moto_cloud.cli("up", str(path), "--dry-run", home=tmp_path / "state", check=0)
    assert "  launch 1 × t3.micro on-demand price unknown (orchestrator)" in done.stdout.splitlines(), done.stdout
    assert "USD per hour in all" not in done.stdout
    assert time.monotonic() - started < 60, "a price source that does not answer must not hold up the plan"
