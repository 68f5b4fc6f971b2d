"""The GCP provider against the local Compute Engine fake (tests/gcp_fake.py), without test hosts.

Options, validation, provisioning (find, reuse, create, retry, wait), rollback
and down, through the real google-cloud-compute client talking HTTP to the
fake.  End-to-end runs on real hosts are in test_gcp_e2e.py and
test_gcp_faults.py.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from flambe_cluster import Cluster, ClusterConfigurationError, UsageError
from flambe_cluster.config import load_config, parse_config
from flambe_cluster.errors import ClusterError
from flambe_cluster.records import ClusterInstances
from flambe_cluster_gcp import provision
from flambe_cluster_gcp.api import GCPError
from gcp_fake import FakeComputeEngine

ADDRESSES = [f"10.213.250.{i}" for i in range(4, 20)]


@pytest.fixture
def fake():
    with FakeComputeEngine(addresses=ADDRESSES, boot_seconds=0.3) as engine:
        yield engine


@pytest.fixture
def raw(fake, flambe_client_key, flambe_state_home):
    """A valid cluster mapping pointing at the fake."""
    return {
        "provider": "gcp", "name": "unit", "key": str(flambe_client_key.path), "username": "flambe",
        "factories_num": 2, "zone": "us-central1-a", "project": fake.project, "api_endpoint": fake.url,
        "use_public": False,
    }


def cluster_of(raw, **overrides) -> Cluster:
    return Cluster.from_config(parse_config({**raw, **overrides}))


def inserts(fake):
    return [c for c in fake.calls if c["method"] == "instances.insert"]


# --- options and validation


def test_registered_and_the_seed_tag_selects_it(tmp_path, fake, raw):
    path = tmp_path / "cluster.yaml"
    body = {k: v for k, v in raw.items() if k != "provider"}
    path.write_text("!GCPCluster\n" + "".join(f"{k}: {json.dumps(v)}\n" for k, v in body.items()))
    config = load_config(path)
    assert config.provider == "gcp" and config.options.zone == "us-central1-a"
    assert config.options.orchestrator_image == "ubuntu-os-cloud/ubuntu-2204-lts"


def test_bad_values_are_reported_together(raw):
    with pytest.raises(ClusterConfigurationError) as info:
        parse_config({**raw, "disk_size": 5, "labels": {"Team": "x", "flambe-cluster": "y"}, "spot": "yes",
                      "factories_timeout": -3, "orchestrator_image": "ubuntu", "zone": None})
    text = str(info.value)
    for expected in ("disk_size: expected an integer >= 10", "labels: label key 'Team'", "spot: expected true or false",
                     "factories_timeout: expected a number of hours", "orchestrator_image: expected an image family",
                     "zone: expected a non-empty string"):
        assert expected in text, text


def test_wrong_zone_machine_type_and_image_are_reported_together_before_anything_is_created(fake, raw):
    with pytest.raises(ClusterConfigurationError) as info:
        parse_config({**raw, "zone": "us-central1-z", "factories_type": "n2-bogus-8",
                      "factories_image": "ubuntu-os-cloud/no-such-family"})
    problems = info.value.problems
    assert len(problems) == 3, problems
    assert problems[0].startswith("zone: 'us-central1-z' is not a zone of project 'flambe-test'; did you mean")
    assert "factories_type: 'n2-bogus-8' is not a machine type offered in any zone" in problems[1]
    assert "factories_image: image family 'no-such-family' of project 'ubuntu-os-cloud' does not exist" in problems[2]
    assert fake.count("instances.insert") == 0 and fake.live_instances() == []


def test_types_not_offered_in_the_zone_name_the_zones_that_offer_them(raw):
    with pytest.raises(ClusterConfigurationError) as info:
        parse_config({**raw, "zone": "us-central1-b", "factories_gpu_type": "nvidia-tesla-t4", "disk_type": "pd-fast",
                      "network": "nope", "disk_size": 10, "orchestrator_image": "debian-cloud/debian-12"})
    text = str(info.value)
    assert "factories_gpu_type: 'nvidia-tesla-t4' is not offered in zone 'us-central1-b'; zones offering it: " \
           "europe-west4-a, us-central1-a" in text
    assert "disk_type: 'pd-fast' is not a disk type of zone 'us-central1-b'" in text
    assert "network: there is no network 'nope' in project 'flambe-test'" in text
    with pytest.raises(ClusterConfigurationError, match="at most 4 nvidia-tesla-t4 per instance, got 9"):
        parse_config({**raw, "factories_gpu_type": "nvidia-tesla-t4", "factories_gpu_count": 9})
    with pytest.raises(ClusterConfigurationError,
                       match="factories_gpu_count: 2 GPUs asked for without factories_gpu_type"):
        parse_config({**raw, "factories_gpu_count": 2})


def test_custom_networks_need_a_subnetwork_of_the_region(fake, raw):
    fake.add_network("lab", subnetworks={"us-central1": ["lab-us"], "europe-west4": ["lab-eu"]})
    with pytest.raises(ClusterConfigurationError, match="subnetwork: network 'lab' has custom subnetworks"):
        parse_config({**raw, "network": "lab"})
    with pytest.raises(ClusterConfigurationError, match="no subnetwork 'lab-eu' in region 'us-central1'"):
        parse_config({**raw, "network": "lab", "subnetwork": "lab-eu"})
    assert parse_config({**raw, "network": "lab", "subnetwork": "lab-us"}).options.subnetwork == "lab-us"


def test_gcp_name_rules_and_image_size(fake, raw):
    fake.add_image(fake.project, "big-image-v1", family="big", disk_size_gb=200)
    with pytest.raises(ClusterConfigurationError) as info:
        parse_config({**raw, "name": "My_Cluster", "factories_image": "flambe-test/big", "preemptible": True,
                      "spot": True})
    text = str(info.value)
    assert "name: GCP instance names and labels need" in text
    assert "disk_size: image 'big-image-v1' needs a disk of at least 200 GB, got 100" in text
    assert "spot: choose either preemptible: true or spot: true, not both" in text


def test_missing_credentials_say_what_to_run(raw, monkeypatch, tmp_path):
    for variable in ("GOOGLE_APPLICATION_CREDENTIALS", "FLAMBE_GCP_API_ENDPOINT", "CLOUDSDK_CONFIG"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("NO_GCE_CHECK", "True")
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "no-gcloud"))
    with pytest.raises(ClusterConfigurationError) as info:
        parse_config({**{k: v for k, v in raw.items() if k != "api_endpoint"}, "zone": "us-central1-c"})
    assert "credentials: no Google Cloud credentials found" in str(info.value)
    assert "gcloud auth application-default login" in str(info.value)


# --- provisioning


def test_up_creates_labelled_instances_with_the_key_in_metadata_and_reuses_them(fake, raw, flambe_client_key):
    cluster = cluster_of(raw, labels={"team": "nlp"})
    cluster.load_all_instances()
    live = fake.live_instances()
    assert len(live) == 3 and all(i["status"] == "RUNNING" for i in live)
    roles = sorted((i["labels"]["flambe-role"], i["labels"].get("flambe-index")) for i in live)
    assert roles == [("factory", "0"), ("factory", "1"), ("orchestrator", None)]
    for instance in live:
        assert instance["labels"]["flambe-cluster"] == "unit" and instance["labels"]["team"] == "nlp"
        items = {i["key"]: i["value"] for i in instance["metadata"]["items"]}
        assert items["ssh-keys"] == f"flambe:{flambe_client_key.public_line} flambe"
    assert [h.endpoint.host for h in cluster.all_hosts()] == ADDRESSES[:3]
    assert [r.resource_id for r in cluster.journal.created()] == [i.instance_id for i in cluster.all_hosts()]
    request_ids = [c["query"]["requestId"] for c in inserts(fake)]
    assert len(set(request_ids)) == 3

    again = cluster_of(raw)
    lists_before = fake.count("instances.list")
    again.load_all_instances()
    assert fake.count("instances.insert") == 3, "a second up creates nothing"
    assert fake.count("instances.list") == lists_before + 1, "reuse takes one list request"
    assert again.all_hosts() == cluster.all_hosts()
    assert again.journal.created() == []


def test_a_retried_insert_whose_first_response_was_lost_creates_no_second_instance(fake, raw):
    fake.lose_next_response("instances.insert", after=1)  # the first factory's answer never arrives
    cluster = cluster_of(raw)
    cluster.load_all_instances()
    calls = inserts(fake)
    assert len(calls) == 4, "the lost insert was retried once"
    assert calls[1]["query"]["requestId"] == calls[2]["query"]["requestId"], "with the same request id"
    assert calls[1]["body"]["name"] == calls[2]["body"]["name"]
    assert len(fake.live_instances()) == 3
    assert len(cluster.factories) == 2


def test_transient_api_errors_are_retried(fake, raw):
    fake.fail_next("instances.insert", code=503, after=1, times=2)
    fake.fail_next("instances.list", code=429)
    cluster = cluster_of(raw)
    cluster.load_all_instances()
    assert len(fake.live_instances()) == 3 and fake.count("instances.insert") == 5


def test_only_missing_instances_are_created_and_a_failure_removes_only_those(fake, raw):
    first = cluster_of(raw, factories_num=1)
    first.load_all_instances()
    kept = {i["name"] for i in fake.live_instances()}
    fake.fail_next("instances.insert", code=400, message="Quota 'CPUS' exceeded. Limit: 24.0 in region us-central1.",
                   reason="quotaExceeded", after=1)
    second = cluster_of(raw, factories_num=3)
    with second:
        second.load_all_instances()
    assert isinstance(second.error, GCPError)
    message = str(second.error)
    assert "creating instance unit-factory2-" in message and "Quota 'CPUS' exceeded" in message
    assert "rolled back" in message
    assert {i["name"] for i in fake.live_instances()} == kept, "the instances of the earlier run stay"
    assert second.journal.created() == []


def test_an_operation_error_names_the_instance_and_rolls_back(fake, raw):
    fake.fail_operation("ZONE_RESOURCE_POOL_EXHAUSTED", after=1)
    cluster = cluster_of(raw)
    with cluster:
        cluster.load_all_instances()
    message = str(cluster.error)
    assert "unit-factory0-" in message and "ZONE_RESOURCE_POOL_EXHAUSTED" in message and "another zone" in message
    assert fake.live_instances() == []


def test_instances_that_never_run_fail_within_create_timeout(fake, raw):
    fake.stall("factory1", status="STAGING")
    cluster = cluster_of(raw, create_timeout=2)
    started = time.monotonic()
    with cluster:
        cluster.load_all_instances()
    assert time.monotonic() - started < 15
    message = str(cluster.error)
    assert "did not reach RUNNING within create_timeout (2 s)" in message
    assert "unit-factory1-" in message and "is STAGING" in message
    assert fake.live_instances() == []


def test_an_interrupt_while_waiting_rolls_back(fake, raw, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt()

    monkeypatch.setattr(provision, "wait_running", interrupted)
    cluster = cluster_of(raw)
    with pytest.raises(KeyboardInterrupt), cluster:  # rolled back, then the interrupt goes on
        cluster.load_all_instances()
    assert isinstance(cluster.error, KeyboardInterrupt)
    assert fake.live_instances() == [] and fake.count("instances.delete") == 3


def test_rollback_while_inserts_are_running_retries_until_the_instances_can_go(fake, raw):
    fake.boot_seconds = 3.0
    fake.fail_next("instances.insert", code=400, message="bad request", after=2)
    cluster = cluster_of(raw)
    with cluster:
        cluster.load_all_instances()
    assert "bad request" in str(cluster.error)
    assert fake.live_instances() == []
    assert any(c["method"] == "instances.delete" for c in fake.calls)


def test_rollback_is_idempotent_when_instances_are_already_gone(fake, raw):
    cluster = cluster_of(raw)
    cluster.load_all_instances()
    created = cluster.journal.created()
    cluster.hooks.terminate(config=cluster.config, instances=ClusterInstances(cluster.orchestrator, cluster.factories))
    cluster.hooks.rollback(config=cluster.config, created=created)
    cluster.rollback_env()
    assert fake.live_instances() == []


def test_find_says_none_exist_and_explains_a_partial_cluster(fake, raw):
    cluster = cluster_of(raw)
    assert cluster.find_instances() is False
    cluster_of(raw, factories_num=1).load_all_instances()
    with pytest.raises(ClusterError,
                       match=r"lacks factory 1 .*`flambe-cluster up` to complete it.*gcloud compute instances delete"):
        cluster.find_instances()


def test_down_deletes_every_instance_of_the_cluster_and_waits(fake, raw):
    cluster_of(raw, factories_num=3).load_all_instances()
    other = cluster_of(raw, name="other", factories_num=0)
    other.load_all_instances()
    cluster = cluster_of(raw)
    assert cluster.find_instances()
    cluster.hooks.terminate(config=cluster.config, instances=ClusterInstances(cluster.orchestrator, cluster.factories))
    assert [i["name"] for i in fake.live_instances()] == [other.orchestrator.instance_id], \
        "all four (the surplus factory too) are gone, the other cluster stays"


def test_a_stopped_instance_is_started_again(fake, raw):
    cluster = cluster_of(raw)
    cluster.load_all_instances()
    fake.stop_instance(cluster.factories[1].instance_id)
    again = cluster_of(raw)
    again.load_all_instances()
    assert fake.count("instances.start") == 1 and fake.count("instances.insert") == 3
    assert fake.instance(cluster.factories[1].instance_id)["status"] == "RUNNING"


def test_request_body_scheduling_accelerators_and_public_addresses(fake, raw):
    cluster = cluster_of(raw, use_public=True, spot=True, factories_gpu_type="nvidia-tesla-t4", factories_gpu_count=2,
                         service_account="runner@flambe-test.iam.gserviceaccount.com")
    cluster.load_all_instances()
    bodies = {c["body"]["labels"]["flambe-role"] + c["body"]["labels"].get("flambe-index", ""): c["body"]
              for c in inserts(fake)}
    factory = bodies["factory0"]
    assert factory["scheduling"] == {"automaticRestart": False, "onHostMaintenance": "TERMINATE", "preemptible": False,
                                     "provisioningModel": "SPOT", "instanceTerminationAction": "DELETE"}
    assert factory["guestAccelerators"][0]["acceleratorCount"] == 2
    assert "guestAccelerators" not in bodies["orchestrator"]
    assert factory["serviceAccounts"][0]["email"] == "runner@flambe-test.iam.gserviceaccount.com"
    assert factory["disks"][0]["initializeParams"]["sourceImage"].endswith(
        "projects/deeplearning-platform-release/global/images/common-cu128-ubuntu-2204-nvidia-570-v20250326"), \
        "a GPU factory's default: the Deep Learning VM family with the driver, resolved to an image"
    assert bodies["orchestrator"]["disks"][0]["initializeParams"]["sourceImage"].endswith(
        "projects/ubuntu-os-cloud/global/images/ubuntu-2204-jammy-v20240319"), "the family is resolved to an image"
    assert {"key": "install-nvidia-driver", "value": "True"} in factory["metadata"]["items"]
    assert all(i["key"] != "install-nvidia-driver" for i in bodies["orchestrator"]["metadata"]["items"])
    assert factory["networkInterfaces"][0]["accessConfigs"][0]["type"] == "ONE_TO_ONE_NAT"
    assert [f.gpus for f in cluster.factories] == [2, 2] and cluster.orchestrator.gpus == 0


def test_promised_gpus_come_from_the_accelerator_configuration_without_ssh(fake, raw):
    cluster = cluster_of(raw, factories_gpu_type="nvidia-tesla-t4")
    cluster.load_all_instances()
    answers = [cluster.hooks.promised_gpus(config=cluster.config, instance=f) for f in cluster.factories]
    assert answers == [1, 1]
    bundled = cluster_of(raw, name="bundled", factories_type="a2-highgpu-1g", factories_num=1)
    bundled.load_all_instances()
    assert bundled.factories[0].gpus == 1, "GPUs bundled with the machine type count too"


def test_gpu_factories_default_to_the_newest_deep_learning_family_with_the_driver(fake, raw):
    from flambe_cluster.records import Role
    from flambe_cluster_gcp.api import connect

    fake.add_image("deeplearning-platform-release", "common-cu129-ubuntu-2204-nvidia-580-v20250901",
                   "common-cu129-ubuntu-2204-nvidia-580")
    fake.add_image("deeplearning-platform-release", "common-cu130-ubuntu-2204-nvidia-590-v20251001",
                   "common-cu130-ubuntu-2204-nvidia-590", deprecated="DEPRECATED")
    fake.add_image("deeplearning-platform-release", "common-cu130-debian-12-v20251001", "common-cu130-debian-12")
    options = parse_config(raw).options
    compute = connect(options)
    gpu = parse_config({**raw, "factories_gpu_type": "nvidia-tesla-t4"}).options
    assert provision.image_spec(compute, gpu, Role.FACTORY) == \
        "deeplearning-platform-release/common-cu129-ubuntu-2204-nvidia-580", "newest usable, same Ubuntu"
    assert provision.image_spec(compute, gpu, Role.ORCHESTRATOR) == "ubuntu-os-cloud/ubuntu-2204-lts"
    assert provision.image_spec(compute, options, Role.FACTORY) == "ubuntu-os-cloud/ubuntu-2204-lts", "no GPU: plain"
    given = parse_config({**raw, "factories_gpu_type": "nvidia-tesla-t4", "factories_image": "debian-cloud/debian-12"})
    assert provision.image_spec(compute, given.options, Role.FACTORY) == "debian-cloud/debian-12"
    for (project, name), _image in list(fake.images.items()):
        if project == "deeplearning-platform-release":
            del fake.images[(project, name)]
    with pytest.raises(ClusterConfigurationError, match=r"factories_image: no image of a family matching"):
        parse_config({**raw, "factories_gpu_type": "nvidia-tesla-t4"})


def test_the_fake_paginates_and_filters_like_the_api(fake, raw):
    from flambe_cluster_gcp.api import connect
    from google.cloud import compute_v1

    cluster_of(raw, factories_num=4).load_all_instances()
    compute = connect(parse_config(raw).options)
    request = compute_v1.ListInstancesRequest(project=fake.project, zone="us-central1-a", max_results=2,
                                              filter='(labels.flambe-role = "factory") (labels.flambe-index != "3")')
    names = [i.name for i in compute.instances.list(request=request)]
    assert len(names) == 3 and all("factory" in n and "factory3" not in n for n in names)
    assert fake.count("instances.list") >= 3


def test_host_keys_come_from_the_guest_attributes_the_instance_published(fake, raw):
    cluster = cluster_of(raw, factories_num=0)
    cluster.load_all_instances()
    orchestrator = cluster.orchestrator
    hook = cluster.hooks.host_keys
    assert hook(config=cluster.config, instance=orchestrator) is None, "nothing published: the policy decides"
    fake.publish_host_keys(orchestrator.private.host, ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA"])
    assert hook(config=cluster.config, instance=orchestrator) == ["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA"]
    body = inserts(fake)[0]["body"]
    assert {"key": "enable-guest-attributes", "value": "TRUE"} in body["metadata"]["items"]


def test_without_google_cloud_compute_the_error_names_the_extra():
    import subprocess
    import sys

    code = ("import sys; sys.modules['google.cloud.compute_v1'] = None\n"
            "from flambe_cluster import plugins\n"
            "try:\n    plugins.load_provider('gcp')\nexcept Exception as exc:\n    print(exc)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "pip install 'flambe-cluster[gcp]'" in done.stdout, done.stdout + done.stderr


# --- two clients, owners, service accounts, exact rollback


def test_two_clients_with_two_state_folders_end_with_one_cluster(fake, raw, tmp_path, monkeypatch):
    """No shared lock (two machines): both find nothing and both create; they converge on one set of instances."""
    from flambe_cluster.progress import log_progress
    from flambe_cluster.state import Journal
    from flambe_cluster_gcp import flambe_cluster_load_instances

    config = parse_config(raw)
    barrier = threading.Barrier(2)
    listed = threading.local()
    real_list = provision.list_cluster

    def list_together(*args, **kwargs):
        found = real_list(*args, **kwargs)
        if not getattr(listed, "once", False):  # each client's first look: both see no instance
            listed.once = True
            barrier.wait(30)
        return found

    monkeypatch.setattr(provision, "list_cluster", list_together)
    results: dict[int, object] = {}

    def up(index):
        folder = tmp_path / f"state{index}"
        folder.mkdir()
        try:
            results[index] = flambe_cluster_load_instances(config=config,
                                                           journal=Journal(folder / "journal").start_run(),
                                                           progress=log_progress)
        except BaseException as exc:  # noqa: BLE001 - reported below
            results[index] = exc

    threads = [threading.Thread(target=up, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    first, second = results[0], results[1]
    assert not isinstance(first, BaseException), first
    assert not isinstance(second, BaseException), second
    assert [i.instance_id for i in first] == [i.instance_id for i in second]
    assert sorted(i["name"] for i in fake.live_instances()) == sorted(i.instance_id for i in first), "one cluster"


def test_the_owner_is_part_of_the_identity_so_another_users_down_leaves_the_cluster_alone(fake, raw, tmp_path):
    alice = cluster_of(raw, creator="alice")
    alice.load_all_instances()
    assert {i["labels"]["flambe-creator"] for i in fake.live_instances()} == {"alice"}
    with pytest.raises(UsageError, match="is in another place: creator alice"):  # alice's state folder: refused
        cluster_of(raw, creator="bob").find_instances()
    bob = cluster_of(raw, creator="bob", state_dir=str(tmp_path / "bob"))  # bob's own state folder
    assert bob.find_instances() is False, "bob has no cluster of that name"
    bob.hooks.terminate(config=bob.config, instances=None)
    assert len(fake.live_instances()) == 3, "bob's down deleted none of alice's instances"
    assert cluster_of(raw).config.options.creator, "the creator defaults to the local user"


def test_instances_get_a_service_account_only_for_the_idle_watchdog_and_only_the_compute_scope(fake, raw):
    cluster_of(raw, orchestrator_timeout=-1, factories_timeout=1).load_all_instances()
    bodies = {c["body"]["labels"]["flambe-role"]: c["body"] for c in inserts(fake)}
    assert "serviceAccounts" not in bodies["orchestrator"], "no idle shutdown: no service account"
    assert bodies["factory"]["serviceAccounts"] == [
        {"email": "default", "scopes": ["https://www.googleapis.com/auth/compute"]}]
    cluster_of(raw, name="calm", factories_timeout=-1).load_all_instances()
    assert all("serviceAccounts" not in c["body"] for c in inserts(fake)
               if c["body"]["labels"]["flambe-cluster"] == "calm")


def test_rollback_stops_again_the_stopped_instances_this_run_started(fake, raw):
    cluster_of(raw).load_all_instances()
    stopped = sorted(i["name"] for i in fake.live_instances() if i["labels"].get("flambe-index") == "1")[0]
    fake.stop_instance(stopped)
    again = cluster_of(raw)
    with again:
        again.load_all_instances()
        assert fake.instance(stopped)["status"] == "RUNNING"
        raise RuntimeError("a later step failed")
    assert "a later step failed" in str(again.error)
    statuses = {i["name"]: i["status"] for i in fake.live_instances()}
    assert statuses.pop(stopped) == "TERMINATED", "started by the run, stopped again by its rollback"
    assert set(statuses.values()) == {"RUNNING"} and len(statuses) == 2
    assert fake.count("instances.insert") == 3


def test_booting_instances_report_their_state_through_the_progress_callable(fake, raw):
    """Each instance's way from insert to RUNNING comes through the hook's ``progress``, by its host name."""
    fake.boot_seconds = 2.0  # the insert is DONE after 1 s, the instance STAGING until 2 s: a poll sees it booting
    cluster = cluster_of(raw)
    events: list[tuple[str, str]] = []
    cluster.on_progress = lambda subject, state, **counts: events.append((subject, state))
    cluster.load_all_instances()
    hosts = cluster.all_hosts()
    assert [h.name for h in hosts] == ["unit_orchestrator", "unit_factory0", "unit_factory1"]
    assert {subject for subject, _ in events} == {h.name for h in hosts}
    for host in hosts:
        states = [state for subject, state in events if subject == host.name]
        name = host.instance_id
        assert states[:2] == [f"creating ({name})", f"created ({name})"], states
        assert f"staging ({name})" in states, states
        assert states[-1] == f"running ({name})", states
