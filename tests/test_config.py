"""Configuration: YAML files, the seed's tags, and problems reported all at once."""

from __future__ import annotations

import textwrap

import pytest
from flambe_cluster import ClusterConfigurationError
from flambe_cluster.config import load_config, parse_config
from flambe_cluster.records import Endpoint


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "id_test"
    path.write_text("not checked here\n")
    path.chmod(0o600)
    return path


def write(tmp_path, text):
    path = tmp_path / "cluster.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_provider_key_and_seed_tag_give_the_same_config(tmp_path, key_file):
    body = f"""
        name: my-cluster
        username: ubuntu
        key: {key_file}
        orchestrator_ip: 10.0.0.5
        factories_ips: [10.0.0.6, "10.0.0.7:2222", [34.1.2.3, 10.0.0.8]]
        setup_cmds: ["echo hi"]
    """
    by_key = load_config(write(tmp_path, "provider: ssh\n" + textwrap.dedent(body)))
    tagged = load_config(write(tmp_path, "!SSHCluster\n" + textwrap.dedent(body)))
    assert by_key.options == tagged.options
    assert by_key.name == tagged.name and by_key.key == tagged.key
    assert tagged.provider == "ssh"
    assert tagged.factories_num == 3
    assert tagged.setup_cmds == ("echo hi",)
    factories = tagged.options.factories_ips
    assert factories[1].public == Endpoint("10.0.0.7", 2222)
    assert factories[2].public == Endpoint("34.1.2.3") and factories[2].private == Endpoint("10.0.0.8")


def test_every_problem_is_reported_at_once(tmp_path):
    path = write(tmp_path, """
        provider: ssh
        name: "bad name; rm -rf /"
        username: ubuntu
        key: /nonexistent/key
        factories_num: two
        orchestrator_ip: 10.0.0.5
        factories_ips: [10.0.0.6, "not an address!"]
        use_publik: true
    """)
    with pytest.raises(ClusterConfigurationError) as caught:
        load_config(path)
    problems = caught.value.problems
    text = str(caught.value)
    assert len(problems) == 5, text
    assert any(p.startswith("name: expected 1-63 characters") and "'bad name; rm -rf /'" in p for p in problems)
    assert any(p.startswith("key: ") and "/nonexistent/key" in p and "does not exist" in p for p in problems)
    assert any(p.startswith("factories_num: expected an integer, got str 'two'") for p in problems)
    assert any(p.startswith("factories_ips: item 1:") and "'not an address!'" in p for p in problems)
    assert any(p.startswith("use_publik: unknown field; did you mean 'use_public'?") for p in problems)
    assert str(path) in text


def test_missing_fields_say_what_is_expected(tmp_path):
    with pytest.raises(ClusterConfigurationError) as caught:
        parse_config({"provider": "ssh"})
    text = str(caught.value)
    for field in ("name", "username", "orchestrator_ip", "factories_ips"):
        assert f"{field}: required, expected" in text
    assert "key:" not in text, "without a key, logins use ssh-agent's keys"


def test_misspelt_common_field_is_suggested(key_file):
    with pytest.raises(ClusterConfigurationError, match="usernme: unknown field; did you mean 'username'"):
        parse_config({"provider": "ssh", "name": "c", "key": str(key_file), "usernme": "x", "username": "u",
                      "orchestrator_ip": "10.0.0.1", "factories_ips": []})


def test_factories_num_must_match_the_list(key_file):
    with pytest.raises(ClusterConfigurationError,
                       match=r"factories_num: expected 2 \(the number of factories listed\), got 3"):
        parse_config({"provider": "ssh", "name": "c", "key": str(key_file), "username": "u", "factories_num": 3,
                      "orchestrator_ip": "10.0.0.1", "factories_ips": ["10.0.0.2", "10.0.0.3"]})


def test_a_host_listed_twice_is_refused(key_file):
    with pytest.raises(ClusterConfigurationError,
                       match=r"factories_ips\[1\]: 10.0.0.2 is already listed as factories_ips\[0\]"):
        parse_config({"provider": "ssh", "name": "c", "key": str(key_file), "username": "u",
                      "orchestrator_ip": "10.0.0.1", "factories_ips": ["10.0.0.2", "10.0.0.2"]})


def test_invalid_yaml_names_the_line(tmp_path):
    with pytest.raises(ClusterConfigurationError, match=r"invalid YAML at line \d, column \d+: expected ',' or ']'"):
        load_config(write(tmp_path, "provider: ssh\nname: x\nfactories_ips: [a, b\n"))


def test_missing_provider_names_the_tags(tmp_path):
    with pytest.raises(ClusterConfigurationError, match=r"provider: required.*!SSHCluster"):
        load_config(write(tmp_path, "name: x\n"))


def test_tag_and_conflicting_provider_key(tmp_path):
    with pytest.raises(ClusterConfigurationError, match="tag !SSHCluster means provider 'ssh'"):
        load_config(write(tmp_path, "!SSHCluster\nprovider: aws\nname: x\n"))


@pytest.mark.parametrize(
    "text, expected",
    [("10.0.0.5", Endpoint("10.0.0.5", 22)), ("10.0.0.5:2222", Endpoint("10.0.0.5", 2222)),
     ("[fd00::5]:2200", Endpoint("fd00::5", 2200)), ("node-1.example.org", Endpoint("node-1.example.org"))],
)
def test_endpoint_parsing(text, expected):
    assert Endpoint.parse(text) == expected


@pytest.mark.parametrize("text", ["10.0.0.5:ssh", "10.0.0.5:70000", "a b", "$(reboot)", "host;ls", ""])
def test_endpoint_rejects_garbage(text):
    with pytest.raises(ValueError):
        Endpoint.parse(text)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_key_readable_by_others_is_refused_with_the_chmod_line(key_file, mode):
    """OpenSSH (so rsync) refuses a private key others may read: refused at validation, with the fix."""
    key_file.chmod(mode)
    raw = {"provider": "ssh", "name": "c", "username": "u", "key": str(key_file),
           "orchestrator_ip": "10.0.0.1", "factories_ips": ["10.0.0.2"]}
    with pytest.raises(ClusterConfigurationError) as caught:
        parse_config(raw)
    message = str(caught.value)
    assert str(key_file) in message and f"{mode:o}" in message
    assert f"chmod 600 {key_file}" in message
    key_file.chmod(0o600)
    assert parse_config(raw).key == key_file
