"""The local provider: a cluster on this machine, no cloud account needed.

``provider: local`` with ``factories_num: N`` starts 1 + N real SSH hosts
here and the cluster talks to them exactly as to remote machines:

- as root, each host is an ``sshd`` in its own Linux network, PID and mount
  namespaces on a private bridge (the same hosts the test suite builds on,
  see :mod:`flambe_cluster.localhosts.namespaces`), logging in as the user
  ``flambe``;
- otherwise, each host is an ``sshd`` run as the current user on its own
  loopback address, with its own home folder
  (:mod:`flambe_cluster.localhosts.loopback`).

``key`` and ``username`` may be left out: the provider makes a client key in
the cluster's state folder and uses the right user.  What it starts is
recorded in the journal and in ``local-hosts.json`` in the state folder;
``down`` (and a rollback) stops exactly those processes and removes the
namespaces, links and folders.  When the hosts cannot be started (say the
subnet is taken), ``up`` fails with a one-line error and exit code 1.

Options::

    mode: auto        # auto (namespaces as root, loopback otherwise) | namespaces | loopback
    subnet: null      # namespaces: the hosts' private IPv4 network, e.g. 10.213.40.0/24 (default: a free /24)
"""

from __future__ import annotations

import fcntl
import getpass
import os
from pathlib import Path

from attrs import field
from flambe_cluster.provider import (
    SAFE_NAME,
    ClusterError,
    ClusterInstances,
    ClusterState,
    CreatedResource,
    Endpoint,
    KeyPair,
    Role,
    config_class,
    describe_value,
    hookimpl,
    host_name,
    localhosts,
    one_of,
    public_key_line,
    to_optional_path,
)

NAMESPACE_USER = "flambe"
RECORD = "local-hosts.json"
RESOURCE_KIND = "local-hosts"


def _to_subnet(value: object) -> str | None:
    """None, or a private IPv4 network with room for the bridge and hosts."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"expected an IPv4 network such as '10.213.40.0/24', got {describe_value(value)}")
    problem = localhosts.subnet_problem(value)
    if problem:
        raise ValueError(problem)
    return value


@config_class
class LocalOptions:
    """The local provider's options."""

    mode: str = field(default="auto", converter=one_of("auto", *localhosts.MODES))
    subnet: str | None = field(default=None, converter=_to_subnet)


def _mode(options: LocalOptions) -> str:
    if options.mode != "auto":
        return options.mode
    return "namespaces" if os.geteuid() == 0 and localhosts.require_root_namespaces() is None else "loopback"


def _state(name: str, state_dir: Path | None) -> ClusterState:
    return ClusterState.for_cluster(name, state_dir)


def _client_key(state: ClusterState) -> KeyPair:
    return state.key_pair(comment="flambe-cluster-local-client", file_name="client_key")


@hookimpl
def flambe_cluster_options_class() -> type:
    return LocalOptions


@hookimpl
def flambe_cluster_config_defaults(raw: dict) -> dict:
    """A client key in the cluster's state folder and the user the hosts log in as."""
    name = raw.get("name")
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        return {}  # the name's own problem is reported by validation
    try:
        state_dir = to_optional_path(raw.get("state_dir"))
    except ValueError:
        return {}
    mode = raw.get("mode", "auto")
    root_mode = mode == "namespaces" or (mode == "auto" and os.geteuid() == 0)
    return {"key": str(_client_key(_state(name, state_dir)).private_path),
            "username": NAMESPACE_USER if root_mode else getpass.getuser()}


@hookimpl
def flambe_cluster_validate(config) -> list[str]:
    """The mode is possible here, the username is the one local hosts log in as, the key's public half is known."""
    mode = _mode(config.options)
    problems = []
    if mode == "namespaces":
        reason = localhosts.require_root_namespaces()
        if reason:
            problems.append(f"mode: 'namespaces' is not possible here: {reason}")
        if config.username != NAMESPACE_USER:
            problems.append(f"username: namespaced local hosts log in as {NAMESPACE_USER!r}, got {config.username!r}")
    else:
        if config.username != getpass.getuser():
            problems.append(f"username: loopback local hosts run as the current user {getpass.getuser()!r}, "
                            f"got {config.username!r}")
        if config.options.subnet is not None:
            problems.append("subnet: only namespaced local hosts (mode: namespaces, as root) have a subnet")
    try:
        public_key_line(config.key)  # the hosts authorise its public half
    except ValueError as exc:
        problems.append(f"key: {exc}")
    return problems


def _read_record(config) -> dict | None:
    return _state(config.name, config.state_dir).read_record(RECORD)


def _drop_record(config) -> None:
    _state(config.name, config.state_dir).drop_record(RECORD)


def _instances(config, record: dict) -> ClusterInstances:
    endpoints = [Endpoint(host["address"], host["port"]) for host in record["hosts"]]
    return ClusterInstances.named(config.name, [(e, e) for e in endpoints],
                                  instance_ids=[host["name"] for host in record["hosts"]])


def _running(config) -> dict | None:
    """The record of this cluster's hosts when every one of them runs, in the configured number."""
    record = _read_record(config)
    if record is None or not localhosts.alive(record) or len(record["hosts"]) != 1 + config.factories_num:
        return None
    return record


@hookimpl
def flambe_cluster_find_instances(config) -> ClusterInstances | None:
    """The running local hosts of this cluster; None when it has none.

    Raises ClusterError when some of its hosts stopped (or ``factories_num``
    changed): ``down`` removes what is left, ``up`` starts them anew.
    """
    record = _read_record(config)
    if record is None:
        return None
    if _running(config) is None:
        raise ClusterError(
            f"cluster {config.name!r}: its local hosts are not all running (or factories_num changed); "
            "`flambe-cluster down` removes what is left, `flambe-cluster up` starts them anew"
        )
    return _instances(config, record)


@hookimpl
def flambe_cluster_load_instances(config, journal, progress) -> ClusterInstances:
    """Reuse the running hosts, or start 1 + factories_num new ones (journaled before use; each one's state shown).

    Two loads of one cluster at once (two processes) take turns on a lock in its state folder: the second
    finds the first one's hosts running."""
    state = _state(config.name, config.state_dir).ensure()
    with open(state.root / "local-load.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        return _load(config, journal, progress, state)


def _load(config, journal, progress, state: ClusterState) -> ClusterInstances:
    record = _running(config)
    if record is not None:
        made = _instances(config, record)
        for instance in [made.orchestrator, *made.factories]:
            progress(instance.name, f"running at {instance.endpoint}")
        return made
    stale = _read_record(config)
    if stale is not None:
        localhosts.destroy(stale)
    client = _client_key(state)
    workdir = state.root / "hosts"
    count = 1 + config.factories_num
    authorized = sorted({client.public_line, public_key_line(config.key)})  # the client key, or the user's own
    names = [host_name(config.name, Role.ORCHESTRATOR, 0)] + [host_name(config.name, Role.FACTORY, i)
                                                              for i in range(config.factories_num)]
    for name in names:
        progress(name, "starting sshd on this machine")
    record = localhosts.start(_mode(config.options), count, authorized, workdir,
                              username=NAMESPACE_USER, subnet=config.options.subnet)
    names = [h["name"] for h in record["hosts"]]
    journal.record(CreatedResource(RESOURCE_KIND, str(workdir), {"record": record, "instance_ids": names}))
    state.write_record(RECORD, record)
    made = _instances(config, record)
    for instance in [made.orchestrator, *made.factories]:
        progress(instance.name, f"running at {instance.endpoint}")
    return made


@hookimpl
def flambe_cluster_host_keys(config, instance) -> list[str] | None:
    """The host key each local host was started with: verified on first contact, never just trusted."""
    record = _read_record(config) or {"hosts": []}
    for host in record["hosts"]:
        if host["address"] == instance.endpoint.host and host["port"] == instance.endpoint.port:
            return [host["host_key"]]
    return None


@hookimpl
def flambe_cluster_rollback(config, created) -> None:
    """Stop and remove the hosts a failed run started."""
    for resource in created:
        if resource.kind == RESOURCE_KIND:
            localhosts.destroy(resource.details["record"])
            if (_read_record(config) or {}).get("hosts") == resource.details["record"]["hosts"]:
                _drop_record(config)


@hookimpl
def flambe_cluster_terminate(config, instances) -> None:
    """Stop every local host of the cluster and remove its namespaces, links and folders."""
    record = _read_record(config)
    if record is not None:
        localhosts.destroy(record)
    _drop_record(config)
