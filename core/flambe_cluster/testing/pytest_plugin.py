"""pytest fixtures for tests that need real test hosts.

Opt in from a ``conftest.py``::

    pytest_plugins = ["flambe_cluster.testing.pytest_plugin"]

Tests that build hosts skip, saying why, when this process cannot (not root,
tools missing).  Every network built is closed at the end of its scope, also
when the test fails.

Two kinds of hosts: :func:`flambe_test_hosts` builds namespaced hosts with
fault injection (root only); :func:`flambe_ssh_hosts` builds those as root
and unprivileged loopback hosts otherwise (SSH only), for suites such as the
provider conformance suite that an ordinary user runs too.

Every test that builds hosts is a ``hosts`` test (the marker this plugin
registers), so ``-m "not hosts"`` is the tier that needs none: a test whose
fixtures include either factory is marked at collection, and one that builds
hosts otherwise without the marker fails, saying to mark it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from attrs import frozen
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from ..state import STATE_HOME_ENV
from .hosts import BUILD_CHECKS, LoopbackTestNetwork, TestHostNetwork, require_root_namespaces


@frozen
class ClientKey:
    """The SSH key the tests' client logs in with."""

    path: Path
    public_line: str


def make_client_key(folder: Path) -> ClientKey:
    """Write a fresh ed25519 key pair (OpenSSH format, 0600) into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    key = ed25519.Ed25519PrivateKey.generate()
    path = folder / "id_ed25519"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                              serialization.NoEncryption())
        )
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    path.with_suffix(".pub").write_text(public + " flambe-cluster-tests\n")
    return ClientKey(path, public)


@pytest.fixture(scope="session")
def flambe_client_key(tmp_path_factory: pytest.TempPathFactory) -> ClientKey:
    """A client key pair, authorised on every test host the fixtures build."""
    return make_client_key(tmp_path_factory.mktemp("client-key"))


HOSTS_MARKER = "hosts"
_current: list[pytest.Item] = []  # the test running now (set by the autouse fixture below)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{HOSTS_MARKER}: needs real test hosts (root, Linux namespaces, OpenSSH)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test whose fixtures build test hosts is a ``hosts`` test, whether or not it says so."""
    for item in items:
        if {"flambe_test_hosts", "flambe_ssh_hosts"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(HOSTS_MARKER)


@pytest.fixture(autouse=True)
def _flambe_current_test(request: pytest.FixtureRequest) -> Iterator[None]:
    _current.append(request.node)
    yield
    _current.remove(request.node)


def require_hosts_marker() -> None:
    """Fail the running test unless it carries the ``hosts`` marker (it is about to build test hosts)."""
    if _current and _current[-1].get_closest_marker(HOSTS_MARKER) is None:
        pytest.fail(f"{_current[-1].nodeid} builds test hosts: mark it @pytest.mark.{HOSTS_MARKER} (the tier "
                    f'-m "not {HOSTS_MARKER}" must build none)', pytrace=False)


BUILD_CHECKS.append(require_hosts_marker)


@pytest.fixture(scope="session")
def flambe_test_hosts(flambe_client_key: ClientKey) -> Iterator[Callable[..., TestHostNetwork]]:
    """Factory: ``flambe_test_hosts(count, **kw)`` builds a network of ``count`` real hosts.

    Skips the test when hosts cannot be built here.  Every network is closed
    at the end of the session; close one earlier with ``network.close()``.
    """
    def build(count: int, **kwargs: Any) -> TestHostNetwork:
        reason = require_root_namespaces()
        if reason:
            pytest.skip(f"needs real test hosts: {reason}")
        return TestHostNetwork(count, authorized_keys=[flambe_client_key.public_line], **kwargs)

    yield from _closed_at_the_end(build)


@pytest.fixture(scope="session")
def flambe_ssh_hosts(flambe_client_key: ClientKey) -> Iterator[Callable[[int], TestHostNetwork | LoopbackTestNetwork]]:
    """Factory: ``flambe_ssh_hosts(count)`` builds ``count`` SSH hosts accepting the client key, wherever it can.

    As root (with Linux namespaces): a :class:`TestHostNetwork`.  Otherwise:
    a :class:`LoopbackTestNetwork`, OpenSSH servers run as this user on
    loopback addresses (no fault injection; ``/tmp`` and processes shared).
    Both give ``.hosts`` with ``name``, ``address``, ``port``, ``home`` and
    ``username``.  Every network is closed at the end of the session.
    """
    def build(count: int) -> TestHostNetwork | LoopbackTestNetwork:
        kind = LoopbackTestNetwork if require_root_namespaces() else TestHostNetwork
        return kind(count, authorized_keys=[flambe_client_key.public_line])

    yield from _closed_at_the_end(build)


def _closed_at_the_end(make: Callable[..., Any]) -> Iterator[Callable[..., Any]]:
    """Yield a builder that keeps every network ``make`` builds, then close them all (also after a failure)."""
    networks: list[Any] = []

    def build(*args: Any, **kwargs: Any) -> Any:
        network = make(*args, **kwargs)
        networks.append(network)
        return network

    try:
        yield build
    finally:
        for network in networks:
            network.close()


@pytest.fixture
def flambe_state_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, private flambe-cluster state folder for one test."""
    home = tmp_path / "flambe-state"
    monkeypatch.setenv(STATE_HOME_ENV, str(home))
    return home
