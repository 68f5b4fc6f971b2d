"""How the command line splits its words: a job's and a command's arguments are theirs, options included."""

from __future__ import annotations

import logging

import pytest
from flambe_cluster.cli import cli, down, exec_, submit
from flambe_cluster.cli.common import note, set_verbosity
from flambe_cluster.cli.work import job_exit_code
from flambe_cluster.jobs import JobStatus


@pytest.fixture
def job(tmp_path):
    path = tmp_path / "job.py"
    path.write_text("print('hi')\n")
    return str(path)


def parsed(command, words):
    return command.make_context(command.name, list(words)).params


def test_every_word_after_the_job_path_goes_to_the_job(job):
    params = parsed(submit, ["c.yaml", job, "--epochs", "3", "--force", "--entry", "x", "--secret", "s", "--ext", "e"])
    assert params["args"] == ("--epochs", "3", "--force", "--entry", "x", "--secret", "s", "--ext", "e")
    assert (not params["force"] and params["entry"] is None and params["secret_sections"] == ()
            and params["extensions"] == ())


def test_options_of_submit_go_before_the_job_path(job):
    params = parsed(submit, ["c.yaml", "--force", "--entry", "main.py", "--ext", "e", "--wait", "5", job, "--lr", "1"])
    assert params["force"] and params["entry"] == "main.py" and params["extensions"] == ("e",)
    assert params["lock_wait"] == 5.0 and params["path"] == job and params["args"] == ("--lr", "1")


def test_a_double_dash_after_the_job_path_still_works(job):
    assert parsed(submit, ["c.yaml", job, "--", "--force"])["args"] == ("--force",)
    assert parsed(submit, ["c.yaml", job, "--", "--", "x"])["args"] == ("--", "x")


def test_exec_takes_its_options_before_the_command_and_none_inside_it():
    params = parsed(exec_, ["c.yaml", "--on", "factories", "--", "echo", "--on", "orchestrator"])
    assert params["target"] == "factories" and params["command"] == ("echo", "--on", "orchestrator")
    params = parsed(exec_, ["c.yaml", "ls", "--on", "orchestrator", "-l"])
    assert params["target"] == "all" and params["command"] == ("ls", "--on", "orchestrator", "-l")


def test_down_and_submit_take_the_wait_the_busy_message_suggests(job):
    assert parsed(down, ["c.yaml", "--wait", "30"])["lock_wait"] == 30.0
    assert parsed(submit, ["c.yaml", "--wait", "30", job])["lock_wait"] == 30.0


@pytest.fixture
def verbosity_restored():
    yield
    set_verbosity(0)


@pytest.mark.parametrize("words", [["-vv", "providers"], ["providers", "-vv"], ["-v", "providers", "-v"]])
def test_verbose_before_or_after_the_subcommand_reaches_only_the_projects_loggers(words, verbosity_restored):
    from flambe_cluster.cli import common

    cli.main(words, standalone_mode=False)
    assert common._STDERR[0].level == logging.DEBUG, "stderr shows the project's debug records"
    assert logging.getLogger("flambe_cluster").level == logging.DEBUG
    assert logging.getLogger("flambe_cluster_aws").level == logging.DEBUG
    assert logging.getLogger("botocore").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("urllib3").getEffectiveLevel() == logging.WARNING


def test_quiet_leaves_errors_only(verbosity_restored):
    from flambe_cluster.cli import common

    cli.main(["providers", "-q"], standalone_mode=False)
    assert common._STDERR[0].level == logging.ERROR, "stderr shows errors only"
    assert logging.getLogger().level == logging.ERROR
    assert note.quiet


def test_verbose_after_the_command_of_exec_is_the_commands():
    params = parsed(exec_, ["c.yaml", "-v", "--", "ls", "-v"])
    assert params["command"] == ("ls", "-v")


@pytest.mark.parametrize("state, code, expected", [
    ("finished", 0, 0), ("finished", 3, 3), ("finished", -15, 143), ("finished", -9, 137), ("lost", None, 1),
])
def test_logs_follow_exits_with_the_jobs_code(state, code, expected):
    assert job_exit_code(JobStatus(state, code)) == expected


def test_the_hosts_table_folds_long_names_on_a_narrow_terminal(monkeypatch):
    from types import SimpleNamespace

    from flambe_cluster.cli import lifecycle
    from flambe_cluster.records import Instance, Role

    name = "a-rather-long-cluster-name-for-a-narrow-terminal_orchestrator"
    host = Instance.at(Role.ORCHESTRATOR, name, "10.213.100.200:2222")
    monkeypatch.setattr(lifecycle.out, "width", 40)
    with lifecycle.out.capture() as captured:
        lifecycle.print_hosts(SimpleNamespace(all_hosts=lambda: [host]))
    cells = [line.split("│")[2].strip() for line in captured.get().splitlines() if line.count("│") > 2]
    assert "".join(cells) == name
