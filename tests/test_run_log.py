"""Every command line run leaves its whole log in the state folder: what was shown, and the debug detail."""

from __future__ import annotations

import json
import stat

from helpers import run_cli


def test_a_failed_run_leaves_its_log_with_the_traceback(tmp_path):
    home = tmp_path / "state"
    config = tmp_path / "c.yaml"
    config.write_text("provider: ssh\nname: logged\nusername: nobody\nkey: /no/such/key\n"
                      "orchestrator_ip: 192.0.2.1\nfactories_ips: [192.0.2.2]\n")
    done = run_cli("up", str(config), state_home=home)
    assert done.returncode == 2, done.stderr
    (log,) = (home / "logs").glob("*-up.log")
    text = log.read_text()
    assert "flambe-cluster" in text and "up" in text.splitlines()[0]
    assert "Traceback" in text and "ClusterConfigurationError" in text and "/no/such/key" in text, text
    assert "Traceback" not in done.stderr, "the detail goes to the log, not the screen"
    assert done.stderr.splitlines()[-1] == f"the whole log of this run: {log}", "the error says where the log is"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600 and stat.S_IMODE((home / "logs").stat().st_mode) == 0o700


def test_only_the_newest_logs_are_kept(tmp_path):
    from flambe_cluster.cli.common import RUN_LOGS_KEPT

    home = tmp_path / "state"
    (home / "logs").mkdir(parents=True)
    for index in range(RUN_LOGS_KEPT + 5):
        (home / "logs" / f"20000101-0000{index:02d}-1-old.log").write_text("old")
    run_cli("providers", state_home=home, check=0)
    logs = sorted((home / "logs").glob("*.log"))
    assert len(logs) == RUN_LOGS_KEPT + 1 and logs[-1].name.endswith("-providers.log")


def test_history_shows_what_each_run_created_and_destroyed(tmp_path):
    from flambe_cluster.records import CreatedResource
    from flambe_cluster.state import ClusterState

    home = tmp_path / "state"
    config = tmp_path / "c.yaml"
    (tmp_path / "key").write_text("a key file; history reads no key\n")
    (tmp_path / "key").chmod(0o600)
    config.write_text(f"provider: ssh\nname: told\nusername: nobody\nkey: {tmp_path / 'key'}\n"
                      "orchestrator_ip: 192.0.2.1\nfactories_ips: [192.0.2.2]\n")
    assert "nothing recorded" in run_cli("history", str(config), state_home=home, check=0).stdout
    assert not (home / "clusters" / "told").exists(), "reading the history creates no state"
    journal = ClusterState.for_cluster("told", home / "clusters").ensure().journal
    first, second = journal.start_run(), journal.start_run()
    first.record(CreatedResource("launch", "t-orchestrator", {"role": "orchestrator", "count": 1,
                                                              "instance_ids": ["i-1"]}))
    first.record(CreatedResource("launch", "t-factory", {"role": "factory", "count": 2, "instance_ids": ["i-2", "i-3"],
                                                        "region": "us-east-1"}))
    journal.note(second.run_id, "factory lost", {"instance_id": "i-3"})
    journal.record_destroyed([CreatedResource("launch", "t-factory")], run_id=second.run_id)
    shown = run_cli("history", str(config), state_home=home, check=0).stdout
    lines = shown.splitlines()
    created = next(line for line in lines if "launch t-factory" in line and "created" in line)
    assert first.run_id in created and "role=factory" in created and "instance_ids=i-2,i-3" in created, shown
    assert "region=us-east-1" in created
    assert any("destroyed" in line and "launch t-factory" in line and second.run_id in line for line in lines), shown
    assert any("watch" in line and "factory lost" in line and "instance_id=i-3" in line for line in lines), shown
    assert lines[-1] == "1 recorded as still existing: launch t-orchestrator", shown
    entries = json.loads(run_cli("history", str(config), "--json", state_home=home, check=0).stdout)
    assert [e["event"] for e in entries] == ["created", "created", "watch", "destroyed"]


def test_history_and_cost_of_a_local_cluster_never_brought_up_create_nothing(tmp_path):
    home = tmp_path / "state"
    config = tmp_path / "local.yaml"
    config.write_text("provider: local\nname: never\nfactories_num: 1\n")  # its provider would make a client key
    assert "nothing recorded" in run_cli("history", str(config), state_home=home, check=0).stdout
    assert "no machine recorded" in run_cli("cost", str(config), state_home=home, check=0).stdout
    assert not (home / "clusters").exists(), "no state folder, no key: list shows no phantom row"
