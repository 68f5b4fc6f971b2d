"""`flambe-cluster list --provider gcp`: the GCP sweep for clusters no state folder knows, through the real CLI.

Clusters are made in-process on the local Compute Engine fake (tests/gcp_fake.py), as `up` makes them (their
state folder records their place); the CLI finds the fake through ``FLAMBE_GCP_API_ENDPOINT`` and the project
through ``GOOGLE_CLOUD_PROJECT``.  No test hosts.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil

import pytest
from flambe_cluster import Cluster, plugins
from flambe_cluster.config import parse_config
from flambe_cluster.errors import UsageError
from flambe_cluster_gcp.api import GCPError
from gcp_fake import FakeComputeEngine
from helpers import run_cli

ADDRESSES = [f"10.213.251.{i}" for i in range(4, 30)]
#: The methods a sweep may call: lists only.
LISTS = {"instances.aggregatedList", "instances.list"}


@pytest.fixture
def fake():
    with FakeComputeEngine(addresses=ADDRESSES, boot_seconds=0.3) as engine:
        yield engine


@pytest.fixture
def make(fake, flambe_client_key, flambe_state_home):
    """``make(name, zone, creator, known)``: a cluster of 1 + 1 instances on the fake; ``known=False`` deletes its
    state folder afterwards (a leak: the machines are there, no state folder knows them)."""

    def make_cluster(name: str, zone: str = "us-central1-a", creator: str = "tester", known: bool = True) -> list[str]:
        raw = {"provider": "gcp", "name": name, "key": str(flambe_client_key.path), "username": "flambe",
               "factories_num": 1, "zone": zone, "project": fake.project, "api_endpoint": fake.url,
               "use_public": False, "creator": creator, "orchestrator_type": "e2-standard-2",
               "factories_type": "e2-standard-2"}
        Cluster.from_config(parse_config(raw)).load_all_instances()
        if not known:
            shutil.rmtree(flambe_state_home / "clusters" / name)
        return sorted(i["name"] for i in fake.live_instances() if i["labels"]["flambe-cluster"] == name)

    return make_cluster


def cli_env(fake, project: str | None = "same") -> dict:
    """The environment of a CLI run that talks to ``fake`` (its project, unless ``project`` says otherwise)."""
    env = {k: v for k, v in os.environ.items() if k not in ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT",
                                                             "GCLOUD_PROJECT", "FLAMBE_GCP_API_ENDPOINT")}
    env["FLAMBE_GCP_API_ENDPOINT"] = fake.url
    if project is not None:
        env["GOOGLE_CLOUD_PROJECT"] = fake.project if project == "same" else project
    return env


def swept(fake, home, *args, check=0) -> list[dict]:
    done = run_cli("list", "--provider", "gcp", "--json", *args, state_home=home, env=cli_env(fake), check=check)
    answer = json.loads(done.stdout)
    assert answer["provider"] == "gcp"
    return answer["untracked"]


def test_the_gcp_sweep_lists_only_the_cluster_no_state_folder_knows_with_its_gcloud_delete_line(
        fake, make, flambe_state_home):
    make("remembered")
    lost = make("lost", known=False)
    fake.stop_instance(lost[1])  # a stopped instance's disk still costs: listed, with its status
    before = len(fake.calls)
    untracked = swept(fake, flambe_state_home)
    assert [c["name"] for c in untracked] == ["lost"], untracked
    entry = untracked[0]
    assert entry["place"] == {"project": fake.project, "zone": "us-central1-a", "creator": "tester"}
    statuses = {i["name"]: i["status"] for i in fake.live_instances()}
    assert sorted(entry["machines"]) == sorted(
        f"{n} ({statuses[n]}, {'orchestrator' if 'orchestrator' in n else 'factory'}, creator tester)" for n in lost)
    assert any("(TERMINATED, " in m for m in entry["machines"]), entry["machines"]
    words = shlex.split(entry["remove"])
    assert words[:4] == ["gcloud", "compute", "instances", "delete"]
    assert sorted(words[4:-5]) == lost
    assert words[-5:] == ["--zone", "us-central1-a", "--project", fake.project, "--quiet"]
    # it only looked: list requests alone, every instance still there
    assert {c["method"] for c in fake.calls[before:]} == {"instances.aggregatedList"}
    assert all(c["verb"] == "GET" for c in fake.calls[before:])
    assert sorted(statuses) == sorted(i["name"] for i in fake.live_instances())
    text = run_cli("list", "--provider", "gcp", state_home=flambe_state_home, env=cli_env(fake), check=0).stdout
    assert f"cluster 'lost' (creator tester, project {fake.project}, zone us-central1-a): " in text, text
    assert f"remove with: {entry['remove']}" in text and "remembered" not in text
    assert {c["method"] for c in fake.calls[before:]} <= LISTS


def test_the_gcp_sweep_tells_one_name_in_two_zones_apart_and_region_narrows_it(fake, make, flambe_state_home):
    leaked_b = make("exp1", zone="us-central1-b", known=False)
    make("exp1", zone="us-central1-a")  # known here (its state folder records zone us-central1-a)
    leaked_eu = make("other", zone="europe-west4-a", known=False)
    everywhere = swept(fake, flambe_state_home)
    assert [(c["name"], c["place"]["zone"]) for c in everywhere] == [("exp1", "us-central1-b"),
                                                                     ("other", "europe-west4-a")], everywhere
    before = len(fake.calls)
    in_region = swept(fake, flambe_state_home, "--region", "us-central1")
    assert [(c["name"], c["place"]["zone"]) for c in in_region] == [("exp1", "us-central1-b")]
    assert sorted(shlex.split(in_region[0]["remove"])[4:-5]) == leaked_b
    in_zone = swept(fake, flambe_state_home, "--region", "europe-west4-a")
    assert [(c["name"], c["place"]["zone"]) for c in in_zone] == [("other", "europe-west4-a")]
    assert sorted(shlex.split(in_zone[0]["remove"])[4:-5]) == leaked_eu
    assert swept(fake, flambe_state_home, "--region", "us-central1-a") == []  # exp1 there is known
    zone_lists = [c for c in fake.calls[before:] if c["method"] == "instances.list"]
    assert [c["path"].split("/")[-2] for c in zone_lists] == ["europe-west4-a", "us-central1-a"]
    assert {c["method"] for c in fake.calls[before:]} <= LISTS


def test_the_gcp_sweep_says_what_failed_in_one_line(fake, make, flambe_state_home):
    make("lost", known=False)
    home = flambe_state_home
    fake.fail_next("instances.aggregatedList", 403, "Required 'compute.instances.list' permission for "
                   f"'projects/{fake.project}'", reason="forbidden")
    done = run_cli("list", "--provider", "gcp", "--json", state_home=home, env=cli_env(fake), check=1)
    first, *rest = done.stderr.splitlines()
    assert first.startswith(f"error: looking for flambe-cluster's instances in every zone of project {fake.project} "
                            "failed: HTTP 403: Required 'compute.instances.list' permission"), done.stderr
    assert "roles/compute.viewer" in first and done.stdout == ""
    assert all(line.startswith("the whole log of this run: ") for line in rest), done.stderr
    assert {c["method"] for c in fake.calls if c["method"].startswith("instances.")} <= LISTS | {
        "instances.insert", "instances.get"} and fake.count("instances.delete") == 0


def test_the_gcp_sweep_refuses_an_unknown_project_region_or_value_and_needs_a_project(fake, monkeypatch):
    """In-process, through the provider's hook: errors are GCPError (exit 1), a malformed --region UsageError
    (exit 2)."""
    hook = plugins.make_plugin_manager("gcp").hook
    monkeypatch.setenv("FLAMBE_GCP_API_ENDPOINT", fake.url)
    for name in ("GOOGLE_CLOUD_PROJECT", "CLOUDSDK_CORE_PROJECT", "GCLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(GCPError, match=r"^no project to look in: set GOOGLE_CLOUD_PROJECT"):
        hook.flambe_cluster_sweep(where={})
    monkeypatch.setenv("CLOUDSDK_CORE_PROJECT", "nope")
    with pytest.raises(GCPError, match=r"^looking for flambe-cluster's instances in every zone of project nope "
                                       r"failed: HTTP 404"):
        hook.flambe_cluster_sweep(where={})
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", fake.project)  # wins over CLOUDSDK_CORE_PROJECT
    assert hook.flambe_cluster_sweep(where={}) == []
    with pytest.raises(GCPError, match=rf"^project {fake.project} has no zone in region 'asia-east1'"):
        hook.flambe_cluster_sweep(where={"region": "asia-east1"})
    with pytest.raises(GCPError, match=r"^looking for flambe-cluster's instances in zone asia-east1-a .* HTTP 404"):
        hook.flambe_cluster_sweep(where={"region": "asia-east1-a"})
    with pytest.raises(UsageError, match=r"^--region for gcp: expected a region \(us-central1\) or a zone"):
        hook.flambe_cluster_sweep(where={"region": "Central"})
    assert {c["method"] for c in fake.calls} <= LISTS


def test_a_known_cluster_whose_file_leaves_the_project_to_the_credentials_is_not_a_leak():
    from flambe_cluster.cli.listing import is_known
    from flambe_cluster.records import TaggedCluster

    swept = TaggedCluster("exp1", ("exp1-orchestrator-ab (RUNNING, orchestrator)",), "gcloud ...",
                          {"project": "proj-7", "zone": "us-central1-a"})
    recorded = {"provider": "gcp", "project": "(the credentials' project)", "zone": "us-central1-a"}
    assert is_known(swept, "exp1", recorded)
    assert is_known(swept, "exp1", None), "a cluster known by name alone is never listed as a leak"
    assert not is_known(swept, "exp1", {**recorded, "zone": "europe-west4-a"}), "another zone: another cluster"
    assert not is_known(swept, "exp1", {**recorded, "project": "proj-8"})
    assert not is_known(swept, "exp2", recorded)


def test_another_owners_cluster_of_the_same_name_is_not_known():
    from flambe_cluster.cli.listing import is_known
    from flambe_cluster.records import TaggedCluster

    alice = TaggedCluster("exp", ("exp-orchestrator-a (RUNNING, orchestrator)",), "gcloud ...",
                          {"project": "p", "zone": "us-central1-a", "creator": "alice"})
    recorded = {"provider": "gcp", "project": "p", "zone": "us-central1-a", "creator": "bob"}
    assert not is_known(alice, "exp", recorded), "bob's state folder does not know alice's cluster"
    assert is_known(alice, "exp", {**recorded, "creator": "alice"})
