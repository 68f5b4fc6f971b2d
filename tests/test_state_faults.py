"""State a crash can tear, and secrets that travel (issue 11: items 4 and 7). No hosts needed."""

from __future__ import annotations

import base64
import json
import logging

import paramiko
import pytest
from flambe_cluster.commands import CommandResult
from flambe_cluster.hostkeys import KnownHosts
from flambe_cluster.records import CreatedResource
from flambe_cluster.secrets import filtered
from flambe_cluster.state import ClusterState

KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHsT0GnMLHVmVzEDp4I3X61u7LpUwHk+DZfkVrh2kHCB"


def test_forgetting_host_keys_replaces_the_file_never_rewrites_it_in_place(tmp_path):
    state = ClusterState(tmp_path / "c").ensure()
    state.known_hosts.write_text(f"10.0.0.1 {KEY_A}\n10.0.0.2 {KEY_B}\n")
    before = state.known_hosts.stat().st_ino
    state.forget_host_keys({"10.0.0.1"})
    assert state.known_hosts.read_text() == f"10.0.0.2 {KEY_B}\n"
    assert state.known_hosts.stat().st_ino != before, "truncated and rewritten in place: a crash leaves it empty"
    assert oct(state.known_hosts.stat().st_mode & 0o777) == "0o600"
    state.forget_host_keys({"10.0.0.2"})
    assert not state.known_hosts.exists(), "nothing left to pin: no empty file (an empty one means damage)"
    assert sorted(p.name for p in state.root.iterdir()) == [], "no temporary files left behind"


def test_pinning_a_key_replaces_the_file(tmp_path):
    path = tmp_path / "known_hosts"
    path.write_text(f"10.0.0.1 {KEY_A}\n")
    before = path.stat().st_ino
    KnownHosts(path, "accept-new").pin("10.0.0.2", paramiko.PKey.from_type_string(*_parts(KEY_B)))
    assert path.read_text() == f"10.0.0.1 {KEY_A}\n10.0.0.2 {KEY_B}\n"
    assert path.stat().st_ino != before and oct(path.stat().st_mode & 0o777) == "0o600"


def _parts(line: str) -> tuple[str, bytes]:
    kind, blob = line.split()
    return kind, base64.b64decode(blob)


def test_a_torn_journal_line_is_skipped_and_reported(tmp_path, caplog):
    journal = ClusterState(tmp_path / "c").ensure().journal
    run = journal.start_run()
    run.record(CreatedResource("instance", "i-1", {}))
    run.record(CreatedResource("instance", "i-2", {}))
    text = journal.path.read_text()
    journal.path.write_text(text[: len(text) - 20])  # the crash cut the last line mid-JSON
    with caplog.at_level(logging.WARNING):
        assert [r.resource_id for r in run.created()] == ["i-1"]
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert str(journal.path) in warning and "line 2" in warning and "damaged" in warning

    run.record(CreatedResource("instance", "i-3", {}))  # what comes after a torn line is not glued onto it
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert [r.resource_id for r in run.created()] == ["i-1", "i-3"]
    assert json.loads(journal.path.read_text().splitlines()[-1])["id"] == "i-3"


def test_default_section_keys_follow_the_whitelist(tmp_path):
    path = tmp_path / "secrets.ini"
    path.write_text("[DEFAULT]\nshared_password = hunter2\n[aws]\nkey = A\n[gcp]\nkey = G\n")
    assert filtered(path, ["aws"]).decode().split() == ["[aws]", "key", "=", "A"]
    assert "hunter2" in filtered(path, ["DEFAULT", "aws"]).decode()
    everything = filtered(path, None).decode()
    assert everything.count("hunter2") == 1 and "[DEFAULT]" in everything


def test_a_huge_stderr_line_is_cut_in_the_failure_message():
    result = CommandResult("h (10.0.0.1)", "make", 2, b"", b"x" * 20_000_000 + b"\nlast words\n")
    message = result.describe_failure()
    assert len(message) < 5000
    assert message.endswith("      | last words") and "…" in message
    assert result.stderr_tail().splitlines()[-1] == "last words"


def test_a_public_key_cut_short_by_a_crash_is_never_authorized(tmp_path):
    from flambe_cluster.state import ClusterState

    state = ClusterState(tmp_path / "c")
    first = state.key_pair(comment="flambe-cluster-c")
    assert first.public_line.startswith("ssh-ed25519 AAAA") and first.public_line.endswith(" flambe-cluster-c")
    public = first.public_path
    public.write_text("")  # a crash between the two files, as the old order could leave
    again = state.key_pair(comment="flambe-cluster-c")
    assert again.public_line == first.public_line, "derived from the private key, not read from the empty file"
    assert public.read_text().strip() == first.public_line
    assert oct(public.stat().st_mode & 0o777) == "0o600" and not list(public.parent.glob(".*"))


def test_a_place_is_refused_only_while_the_recorded_one_is_in_use(tmp_path):
    from flambe_cluster import UsageError
    from flambe_cluster.state import ClusterState

    state = ClusterState(tmp_path / "c")
    here, there = {"provider": "aws", "region": "eu-west-1"}, {"provider": "aws", "region": "us-east-1"}
    state.check_place(here, record=True, in_use=False)
    state.check_place(here, record=False, in_use=True)
    with pytest.raises(UsageError, match="region eu-west-1; this file names provider aws, region us-east-1"):
        state.check_place(there, record=True, in_use=True)
    state.check_place(there, record=True, in_use=False)  # the first never came up (rolled back): the name is free
    with pytest.raises(UsageError, match="is in another place"):
        state.check_place(here, record=False, in_use=True)
