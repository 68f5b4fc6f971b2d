"""Every command line run leaves its whole log in the state folder: what was shown, and the debug detail."""

from __future__ import annotations

import stat

from conftest import run_cli


def test_a_failed_run_leaves_its_log_with_the_traceback(tmp_path):
    home = tmp_path / "state"
    config = tmp_path / "c.yaml"
    config.write_text("provider: ssh\nname: logged\nusername: nobody\nkey: /no/such/key\n"
                      "orchestrator_ip: 192.0.2.1\nfactories_ips: [192.0.2.2]\n")
    done = run_cli("status", str(config), state_home=home)
    assert done.returncode == 2, done.stderr
    (log,) = (home / "logs").glob("*-status.log")
    text = log.read_text()
    assert "flambe-cluster" in text and "status" in text.splitlines()[0]
    assert "Traceback" in text and "ClusterConfigurationError" in text and "/no/such/key" in text, text
    assert "Traceback" not in done.stderr, "the detail goes to the log, not the screen"
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
