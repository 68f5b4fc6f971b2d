"""A Ray node's private temp folder (issue 11, item 15), without hosts: the helper's own checks."""

from __future__ import annotations

import os
import shutil

import pytest
from flambe_cluster.remote import raynode

NODE = "203.0.113.9"  # an address no raylet of this machine serves


@pytest.fixture
def folder():
    path = raynode.temp_dir("temp-test", NODE)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_the_temp_folder_is_short_and_per_user_cluster_and_node():
    longest = raynode.temp_dir("n" * 63, "255.255.255.255")
    # Ray's sockets lie ~64 bytes below `<folder>/ray`; paths must stay under 108: at most 40 with a 10-digit uid
    assert len(str(longest)) - len(str(os.getuid())) + 10 <= 40
    assert str(longest).startswith(f"/tmp/fc-{os.getuid()}-nnnnnnnnnn-")
    assert raynode.temp_dir("a", "10.0.0.1") != raynode.temp_dir("a", "10.0.0.2") != raynode.temp_dir("b", "10.0.0.2")


def test_a_folder_others_can_use_is_refused_and_left_alone(folder, tmp_path, capsys):
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)  # whatever the umask: readable by others
    assert raynode.start(tmp_path / "markers", "temp-test", NODE, ["--head"]) == raynode.REFUSED
    assert "mode is 755" in capsys.readouterr().err
    assert raynode.stop(tmp_path / "markers", "temp-test", NODE) == 0
    assert folder.is_dir(), "stop removes only a private folder of this user's"


def test_stop_removes_the_private_folder(folder, tmp_path):
    folder.mkdir(mode=0o700)
    (folder / "ray").mkdir(mode=0o777)
    assert raynode.stop(tmp_path / "markers", "temp-test", NODE) == 0
    assert not folder.exists()
