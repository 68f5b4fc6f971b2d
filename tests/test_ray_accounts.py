"""A Ray worker counts as alive only by both accounts: the head's node table and the factory's own process."""

from __future__ import annotations

from types import SimpleNamespace

from flambe_cluster import raycluster
from flambe_cluster.records import ClusterInstances, Endpoint


def session_of_two():
    ends = [(Endpoint.parse(f"10.0.0.{i}"), Endpoint.parse(f"10.0.0.{i}")) for i in (1, 2, 3)]
    instances = ClusterInstances.named("c", ends)
    return SimpleNamespace(factories=list(instances.factories))


def head_lists(*addresses: str) -> list[dict]:
    return [{"ip": "10.0.0.1", "alive": True, "head": True}] + [
        {"ip": ip, "alive": True, "head": False} for ip in addresses]


def test_a_worker_the_head_lists_but_whose_node_is_gone_is_not_alive_and_said():
    session = session_of_two()
    f0, f1 = session.factories
    confirmed, said = raycluster.confirmed_workers(session, head_lists("10.0.0.2", "10.0.0.3"), {f0: True, f1: False})
    assert sorted(confirmed) == ["10.0.0.2"]
    assert said == ["c_factory1 (10.0.0.3): the Ray head lists its worker alive, but no Ray node of this cluster "
                    "runs there"]


def test_a_node_the_head_does_not_list_is_said_and_an_unreached_factory_counts_for_nothing():
    session = session_of_two()
    f0, _f1 = session.factories
    confirmed, said = raycluster.confirmed_workers(session, head_lists("10.0.0.3"), {f0: True})
    assert confirmed == {}, "factory1 was not reached: its worker is not confirmed"
    assert said == ["c_factory0 (10.0.0.2): a Ray node of this cluster runs there, but the Ray head does not list "
                    "it alive"]


def test_a_host_that_cannot_tell_leaves_the_head_s_account_alone():
    session = session_of_two()
    f0, f1 = session.factories
    confirmed, said = raycluster.confirmed_workers(session, head_lists("10.0.0.2", "10.0.0.3"), {f0: None, f1: True})
    assert sorted(confirmed) == ["10.0.0.2", "10.0.0.3"] and said == []
    confirmed, said = raycluster.confirmed_workers(session, None, {f0: True, f1: True})
    assert confirmed == {} and said == [], "no head: nothing alive, nothing to compare"
