"""What a cluster has cost, from its journal alone (flambe_cluster.costs): spans, re-created machines, the budget."""

from __future__ import annotations

import pytest
from flambe_cluster import costs

OFFER = {"instance_type": "n1-standard-4", "market": "spot", "usd_per_hour": 2.0}


def created(at, resource, **details):
    return {"event": "created", "run": "r1", "kind": "instance", "id": resource, "time": at,
            "details": {**OFFER, **details}}


def test_a_machine_made_again_under_its_name_is_a_new_machine():
    entries = [created(0, "f0"), created(7200, "f0")]  # GCP: the same name, re-created two hours later
    assert costs.bought(entries)["f0"].since == 7200, "its age starts again"
    (run,) = costs.run_costs(entries, now=7200 + 3600)
    assert run.machine_hours == pytest.approx(3.0) and run.usd == pytest.approx(6.0)


def test_a_launch_whose_answer_was_never_journaled_counts_what_it_asked_for():
    launch = {"event": "created", "run": "r1", "kind": "launch", "id": "t", "time": 0,
              "details": {**OFFER, "count": 2, "instance_ids": []}}
    (run,) = costs.run_costs([launch], now=3600)
    assert run.running == 2 and run.usd == pytest.approx(4.0), "erring high: the instances may exist"
    refused = {**launch, "details": {**launch["details"], "refused": True}}
    assert costs.run_costs([refused], now=3600)[0].usd == 0


def test_the_budget_counts_since_the_last_down():
    entries = [created(0, "a"), {"event": "destroyed", "kind": "instance", "id": "a", "time": 3600},
               {"event": "down", "kind": "cluster", "id": "down", "time": 3600}, created(4000, "b")]
    since = costs.since_last_down(entries)
    assert [e.get("id") for e in since] == ["b"]
    assert costs.total_usd(since, now=4000 + 1800) == pytest.approx(1.0)
    assert costs.total_usd(entries, now=4000 + 1800) == pytest.approx(3.0), "the cost view keeps the whole history"
