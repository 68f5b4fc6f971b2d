"""Flambé 0.4's own ``--cluster`` sequence, replayed call for call (shared/FLAMBE-FLOW.md §1 and §2).

The seed's classes are built positionally, as Flambé's YAML loader builds
them, on 1 orchestrator + 2 factories of real test hosts: ``SSHCluster``
on the hosts directly, ``AWSCluster`` on moto whose instances are test
hosts.  Then exactly the calls of ``flambe/runner/run.py`` and
``Experiment.setup``: ``run()`` (no Ray yet), extensions sent to every host
under the orchestrator's absolute home and installed (a local project folder
and a pip requirement), secrets sent, Ray launched, resources sent,
TensorBoard and the report site launched, and the runnable object executed.
The runnable's ``run()`` sends Ray tasks that land on both factories and
writes its result under the experiment's output folder.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from aws_support import aws_cloud  # noqa: F401 - aws_cloud is a fixture
from flambe_cluster import AWSCluster, SSHCluster
from test_report_site import chromium, chromium_dom, http_get

pytestmark = pytest.mark.hosts

EXPERIMENT, OUTPUT = "flow-exp", "output"
TENSORBOARD_PORT, SITE_PORT = 6016, 49558
EXTENSION = {
    "pyproject.toml": '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n'
                      '[project]\nname = "flowext"\nversion = "0.1"\n',
    "flowext/__init__.py": 'GREETING = "hello from flowext"\n',
}


class TrialsRunnable:
    """What Flambé hands ``execute``: an object with ``run()``; this one spreads Ray tasks and saves their answers."""

    def __init__(self, save_to: str, resource: str) -> None:
        self.save_to, self.resource = save_to, resource

    def run(self) -> None:
        import flowext
        import ray

        ray.init()

        @ray.remote(num_cpus=1, scheduling_strategy="SPREAD")
        def trial(index: int, resource: str) -> dict:
            import flowext as ext
            import sklearn

            time.sleep(0.5)
            return {"trial": index, "node": ray.util.get_node_ip_address(), "sklearn": sklearn.__version__,
                    "greeting": ext.GREETING, "resource": Path(resource).read_text()}

        answers = ray.get([trial.remote(i, self.resource) for i in range(8)])
        secrets = Path(os.environ["FLAMBE_SECRETS"]).read_text()
        result = {"answers": answers, "job_greeting": flowext.GREETING, "secrets_have_token": "token = t0k" in secrets}
        Path(self.save_to, "result.json").write_text(json.dumps(result))


def write_extension(folder: Path) -> Path:
    for name, text in EXTENSION.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    return folder


def replay(cluster, tmp_path: Path, test_hosts) -> None:
    """FLAMBE-FLOW §1 (run.py) and §2 (Experiment.setup), then what the runnable produced.

    ``test_hosts(cluster)`` gives the orchestrator's and the factories' test hosts once instances are loaded.
    """
    extension = write_extension(tmp_path / "flowext")
    resource = tmp_path / "vocab.txt"
    resource.write_text("the resource file\n")
    with cluster:
        # §1 run.py
        cluster.run(force=False, debug=False)
        assert cluster.existing_ray_cluster() == [], "run() prepares the hosts but starts no Ray"
        destiny = os.path.join(cluster.get_orch_home_path(), "extensions")
        extensions = {"flowext": str(extension), "sklearn": "scikit-learn"}
        new_extensions = cluster.send_local_content(extensions, destiny, all_hosts=True)
        assert new_extensions["sklearn"] == "scikit-learn", "pip requirements pass through"
        assert new_extensions["flowext"].startswith(destiny + "/")
        new_secrets = cluster.send_secrets()
        assert new_secrets.startswith(cluster.get_orch_home_path() + "/")
        cluster.install_extensions_in_orchestrator(new_extensions)
        # §2 Experiment.setup
        assert not (cluster.existing_flambe_execution() or cluster.existing_ray_cluster())
        output = f"{EXPERIMENT}/{OUTPUT}"
        assert not cluster.existing_dir(output)
        cluster.install_extensions_in_factories(new_extensions)
        cluster.create_dirs([EXPERIMENT, output, f"{output}/_resources"])
        cluster.launch_ray_cluster()
        assert cluster.check_ray_cluster()
        assert sorted(cluster.orchestrator.worker_nodes()) == sorted(f.private_host for f in cluster.factories)
        home = cluster.orchestrator.get_home_path()
        sent = cluster.send_local_content({"vocab": str(resource)},
                                          os.path.join(home, EXPERIMENT, OUTPUT, "_resources"), all_hosts=True)
        if cluster.orchestrator.is_tensorboard_running():
            cluster.orchestrator.remove_tensorboard()
        cluster.orchestrator.launch_tensorboard(output, TENSORBOARD_PORT)
        if cluster.orchestrator.is_report_site_running():
            cluster.orchestrator.remove_report_site()
        cluster.orchestrator.launch_report_site("progress.txt", port=SITE_PORT, output_log="output.log",
                                                output_dir=output, tensorboard_port=TENSORBOARD_PORT)
        save_to = os.path.join(cluster.orchestrator.get_home_path(), output)
        # §1 run.py, last step
        cluster.execute(TrialsRunnable(save_to, sent["vocab"]), new_extensions, new_secrets, False)
        deadline = time.monotonic() + 300
        while cluster.existing_flambe_execution() and time.monotonic() < deadline:
            time.sleep(1)
        assert cluster.existing_flambe_execution() == [], "the job did not end within 5 minutes"
        # what a person sees: TensorBoard and the report page
        address = cluster.orchestrator.host
        status, _body = http_get(f"http://{address}:{TENSORBOARD_PORT}/")
        assert status == 200
        dom = chromium_dom(chromium(), f"http://{address}:{SITE_PORT}/", tmp_path / "chromium")
        assert "finished" in dom and "result.json" in dom, dom[-3000:]
        cluster.orchestrator.remove_tensorboard()
        cluster.orchestrator.remove_report_site()
        assert not cluster.orchestrator.is_tensorboard_running() and not cluster.orchestrator.is_report_site_running()
        orchestrator_host, factory_hosts = test_hosts(cluster)
    assert cluster.error is None, repr(cluster.error)
    for factory in factory_hosts:
        assert (factory.home / EXPERIMENT / OUTPUT / "_resources" / "vocab" / "vocab.txt").read_text() == (
            "the resource file\n")
    result = json.loads((orchestrator_host.home / EXPERIMENT / OUTPUT / "result.json").read_text())
    assert {a["node"] for a in result["answers"]} == {f.address for f in factory_hosts}, result
    assert ({a["greeting"] for a in result["answers"]} == {"hello from flowext"}
            and result["job_greeting"] == "hello from flowext")
    assert all(a["sklearn"] and a["resource"] == "the resource file\n" for a in result["answers"])
    assert result["secrets_have_token"]


@pytest.fixture
def secrets_file(tmp_path):
    path = tmp_path / "secrets.ini"
    path.write_text("[GITHUB]\ntoken = t0k\n")
    path.chmod(0o600)
    return path


def test_flambe_flow_on_ssh_hosts(flambe_test_hosts, flambe_client_key, flambe_state_home, secrets_file, tmp_path):
    network = flambe_test_hosts(3)
    try:
        orchestrator, *factories = network.hosts
        cluster = SSHCluster("flow-ssh", orchestrator.address, [f.address for f in factories],
                             str(flambe_client_key.path), orchestrator.username, None, True, None,
                             secrets=str(secrets_file))
        try:
            replay(cluster, tmp_path, lambda _cluster: (orchestrator, factories))
        finally:
            cluster.down()
    finally:
        network.close()


def test_flambe_flow_on_aws(aws_cloud, flambe_state_home, secrets_file, tmp_path):
    raw = aws_cloud.config("flow-aws")
    cluster = AWSCluster("flow-aws", 2, raw["factories_type"], raw["orchestrator_type"], raw["key_name"],
                         raw["security_group"], raw["subnet_id"], "flambe-tests", raw["key"], "gp2", raw["region_name"],
                         raw["username"], use_public=False, connect_timeout=60, secrets=str(secrets_file))

    def test_hosts(loaded):
        return (aws_cloud.host_of(loaded.orchestrator.instance_id),
                [aws_cloud.host_of(f.instance_id) for f in loaded.factories])

    try:
        replay(cluster, tmp_path, test_hosts)
    finally:
        cluster.down()
    assert aws_cloud.instances("flow-aws") == [], "down terminated every instance"


def test_the_base_class_built_positionally_runs_on_this_machine(flambe_client_key, flambe_state_home):
    """``Cluster(name, factories_num, key, username)``, the seed's call, builds a local cluster that takes the key."""
    from flambe_cluster import Cluster
    from flambe_cluster.localhosts import require_root_namespaces

    if require_root_namespaces():
        pytest.skip(f"namespaced local hosts: {require_root_namespaces()}")
    cluster = Cluster("flow-base", 1, str(flambe_client_key.path), "flambe")
    try:
        assert cluster.config.provider == "local"
        cluster.load_all_instances()
        cluster.wait_until_accessible()
        assert cluster.orchestrator.get_home_path() == "/home/flambe"
        assert [f.name for f in cluster.factories] == ["flow-base_factory0"]
    finally:
        assert cluster.down()
