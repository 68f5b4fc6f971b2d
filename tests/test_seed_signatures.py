"""The seed's classes and instance objects, method by method: names, order and defaults of the parameters.

Flambé calls these positionally and by keyword, so for every method below the
parameters of ours must begin with the seed's, in the seed's order, with the
seed's defaults (``REQUIRED``: none), each passable positionally; after them
only keyword-only parameters (and ``*args``/``**kwargs``) may follow.  A
``**kwargs`` in the seed must be there in ours too (Flambé passes
``run(force=..., debug=...)``).

Sources (Flambé 0.4.18, commit 98f10f8 of asappresearch/flambe, which the
seed documents):

* ``Cluster``: the seed text (``/work/shared/seed-cluster-module.txt``, the
  rendered docs of ``flambe/cluster/cluster.py``) for the methods it shows
  with their parameters; the methods it shows without a signature line
  (``get_orchestrator_name``, ``load_all_instances``, ...) from that file's
  source, where they take nothing but ``self``.  Dunder methods are left
  out (Python calls them positionally).
* ``SSHCluster`` and ``AWSCluster``: the constructors of
  ``flambe/cluster/ssh.py`` and ``flambe/cluster/aws.py``; their other
  methods are the ``Cluster`` ones (their own public helpers —
  ``SSHCluster.rsync_hosts``, ``AWSCluster.terminate_instances``, the
  CloudWatch and tag helpers — are called only from inside those classes,
  so they are not part of the drop-in).  ``SSHCluster.load_all_instances``
  takes ``(exp_name=None, force=False)`` in 0.4.18, but ``Cluster.run``
  calls it with no argument; the base's ``()`` is checked.
* ``GCPCluster``: Flambé 0.4.18 has none (the seed names it once, in
  ``load_all_instances``'s docstring); only its methods, the ``Cluster``
  ones, are checked, and that its constructor takes the base's parameters
  (``name``, ``factories_num``, ``key``, ``username``, ``setup_cmds``) by
  name, in no set order.
* Instance objects: ``flambe/cluster/instance/instance.py`` (``Instance``,
  ``CPUFactoryInstance``, ``OrchestratorInstance``), the methods of
  ``FLAMBE-FLOW.md`` §4.  ``num_cpus``/``num_gpus`` are checked on both
  handles, as §4 lists them for every instance (0.4.18 defines them on
  factories only).  ``launch_tensorboard``'s second parameter is
  ``tensorboard_port`` in the source (the issue writes ``port``).

A class that does not exist yet in :mod:`flambe_cluster` skips its rows (the
instance handles ``OrchestratorInstance``/``FactoryInstance`` and the seed's
subclasses are being added); one that exists is checked in full.
"""

from __future__ import annotations

import inspect

import flambe_cluster
import pytest

REQUIRED = inspect.Parameter.empty
POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)

#: method -> the seed's parameters after ``self``: (name, default) pairs, and "**kwargs" where the seed has one.
CLUSTER_METHODS: dict[str, list] = {
    "get_orchestrator_name": [],
    "get_factory_basename": [],
    "load_all_instances": [],
    "create_dirs": [("relative_dirs", REQUIRED)],
    "prepare_all_instances": [],
    "run": [("force", False), "**kwargs"],
    "run_cmds": [("setup_cmds", REQUIRED)],
    "get_orchestrator": [("ip", REQUIRED), ("private_ip", None), ("use_public", True)],
    "get_orch_home_path": [],
    "get_factory": [("ip", REQUIRED), ("private_ip", None), ("use_public", True)],
    "get_gpu_factory": [("ip", REQUIRED), ("private_ip", None), ("use_public", True)],
    "launch_ray_cluster": [],
    "check_ray_cluster": [],
    "shutdown_ray_cluster": [],
    "existing_ray_cluster": [],
    "existing_flambe_execution": [],
    "shutdown_flambe_execution": [],
    "existing_dir": [("_dir", REQUIRED)],
    "is_ray_cluster_up": [],
    "rollback_env": [],
    "parse": [],
    "send_local_content": [("content", REQUIRED), ("dest", REQUIRED), ("all_hosts", False)],
    "rsync_orch": [("folder", REQUIRED)],
    "send_secrets": [("whitelist", None)],
    "execute": [("cluster_runnable", REQUIRED), ("extensions", REQUIRED), ("new_secrets", REQUIRED),
                ("force", REQUIRED)],
    "remove_dir": [("_dir", REQUIRED), ("content_only", True), ("all_hosts", True)],
    "cluster_has_key": [],
    "distribute_keys": [],
    "contains_gpu_factories": [],
    "get_max_resources": [],
    "install_extensions_in_orchestrator": [("extensions", REQUIRED)],
    "install_extensions_in_factories": [("extensions", REQUIRED)],
    "get_remote_env": [("user_provider", REQUIRED)],
}

#: class -> the seed's constructor parameters.
CONSTRUCTORS: dict[str, list] = {
    "Cluster": [("name", REQUIRED), ("factories_num", REQUIRED), ("key", REQUIRED), ("username", REQUIRED),
                ("setup_cmds", None)],
    "SSHCluster": [("name", REQUIRED), ("orchestrator_ip", REQUIRED), ("factories_ips", REQUIRED),
                   ("key", REQUIRED), ("username", REQUIRED), ("remote_context", None), ("use_public", True),
                   ("setup_cmds", None)],
    "AWSCluster": [("name", REQUIRED), ("factories_num", REQUIRED), ("factories_type", REQUIRED),
                   ("orchestrator_type", REQUIRED), ("key_name", REQUIRED), ("security_group", REQUIRED),
                   ("subnet_id", REQUIRED), ("creator", REQUIRED), ("key", REQUIRED), ("volume_type", "gp2"),
                   ("region_name", None), ("username", "ubuntu"), ("tags", None), ("orchestrator_ami", None),
                   ("factory_ami", None), ("dedicated", False), ("orchestrator_timeout", -1),
                   ("factories_timeout", 1), ("volume_size", 100), ("setup_cmds", None)],
}

#: Parameters GCPCluster's constructor must have by name (there is no seed order; see the module's docstring).
GCP_CONSTRUCTOR_NAMES = ["name", "factories_num", "key", "username", "setup_cmds"]

INSTANCE_METHODS: dict[str, list] = {
    "get_home_path": [],
    "run_cmds": [("setup_cmds", REQUIRED)],
    "send_rsync": [("host_path", REQUIRED), ("remote_path", REQUIRED), ("params", None)],
    "existing_dir": [("_dir", REQUIRED)],
    "create_dirs": [("relative_dirs", REQUIRED)],
    "remove_dir": [("_dir", REQUIRED), ("content_only", True)],
    "contains_gpu": [],
    "num_cpus": [],
    "num_gpus": [],
    "is_node_running": [],
    "is_flambe_running": [],
}

ORCHESTRATOR_METHODS: dict[str, list] = {
    **INSTANCE_METHODS,
    "launch_tensorboard": [("logs_dir", REQUIRED), ("tensorboard_port", REQUIRED)],
    "is_tensorboard_running": [],
    "remove_tensorboard": [],
    "launch_report_site": [("progress_file", REQUIRED), ("port", REQUIRED), ("output_log", REQUIRED),
                           ("output_dir", REQUIRED), ("tensorboard_port", REQUIRED)],
    "is_report_site_running": [],
    "remove_report_site": [],
    "worker_nodes": [],
    "rsync_folder": [("_from", REQUIRED), ("_to", REQUIRED), ("exclude", None)],
}

CASES = (
    [(cls, "__init__", params) for cls, params in CONSTRUCTORS.items()]
    + [(cls, method, params) for cls in ("Cluster", "SSHCluster", "AWSCluster", "GCPCluster")
       for method, params in CLUSTER_METHODS.items()]
    + [("OrchestratorInstance", method, params) for method, params in ORCHESTRATOR_METHODS.items()]
    + [("FactoryInstance", method, params) for method, params in INSTANCE_METHODS.items()]
)


def _class(name: str) -> type:
    cls = getattr(flambe_cluster, name, None)
    if cls is None:
        pytest.skip(f"flambe_cluster.{name} does not exist yet (issue 10 adds it)")
    return cls


def _parameters(cls: type, method: str) -> list[inspect.Parameter]:
    """The parameters a caller passes: the constructor's, or the method's after ``self``."""
    if method == "__init__":
        return list(inspect.signature(cls).parameters.values())
    function = inspect.getattr_static(cls, method, None)
    assert function is not None, f"{cls.__name__}.{method} is missing"
    assert callable(getattr(cls, method)) and not isinstance(function, property), \
        f"{cls.__name__}.{method} must be a method (the seed calls it)"
    return list(inspect.signature(getattr(cls, method)).parameters.values())[1:]


def _describe(parameters: list) -> str:
    return "(" + ", ".join(p if isinstance(p, str) else p[0] if p[1] is REQUIRED else f"{p[0]}={p[1]!r}"
                           for p in parameters) + ")"


def mismatch(expected: list, actual: list[inspect.Parameter]) -> str | None:
    """Why ``actual`` does not accept the seed's calls (None when it does); the rules are the module's docstring."""
    seeded = [p for p in expected if not isinstance(p, str)]
    leading = actual[:len(seeded)]
    got = [(p.name, p.default) for p in leading]
    if len(leading) < len(seeded) or any(
            p.kind not in POSITIONAL or p.name != name or type(p.default) is not type(default) or p.default != default
            for p, (name, default) in zip(leading, seeded)):
        return f"the seed's parameters {_describe(seeded)} do not lead ours {_describe(got)}"
    extra = [p for p in actual[len(seeded):] if p.kind in POSITIONAL]
    if extra:
        return f"extra positional parameters {[p.name for p in extra]} (make them keyword-only)"
    if "**kwargs" in expected and not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in actual):
        return "no **kwargs, which the seed has"
    return None


@pytest.mark.parametrize(("cls", "method", "expected"), CASES, ids=[f"{c}.{m}" for c, m, _ in CASES])
def test_seed_signature(cls, method, expected):
    found = _class(cls)
    problem = mismatch(expected, _parameters(found, method))
    assert problem is None, f"{cls}.{method}: {problem}"


def test_gcp_constructor_takes_the_base_parameters():
    names = inspect.signature(_class("GCPCluster")).parameters
    missing = [name for name in GCP_CONSTRUCTOR_NAMES if name not in names]
    assert not missing, f"GCPCluster() lacks {missing}"


@pytest.mark.parametrize(("expected", "signature", "ok"), [
    ([("a", REQUIRED), ("b", None)], "(self, a, b=None, *, c=1)", True),
    ([("a", REQUIRED), ("b", None)], "(self, a, b=None, c=1)", False),   # an extra positional
    ([("a", REQUIRED), ("b", None)], "(self, b, a=None)", False),        # order
    ([("a", REQUIRED), ("b", None)], "(self, a=None, b=None)", False),   # a default where the seed has none
    ([("a", REQUIRED), ("b", True)], "(self, a, b=1)", False),           # 1 is not True
    ([("a", False), "**kwargs"], "(self, a=False)", False),              # **kwargs missing
    ([("a", False), "**kwargs"], "(self, a=False, **kw)", True),
    ([], "(self, *, x=None)", True),
])
def test_the_rules(expected, signature, ok):
    namespace: dict = {}
    exec(f"def method{signature}: pass", namespace)  # noqa: S102 - a literal of this file
    parameters = list(inspect.signature(namespace["method"]).parameters.values())[1:]
    assert (mismatch(expected, parameters) is None) is ok


def test_the_seed_s_errors_are_built_as_flambe_builds_them():
    """Flambé raises its cluster errors with one message string; the message reads back as given."""
    import flambe_cluster
    from flambe_cluster import errors

    for name in ("ClusterError", "ClusterConfigurationError", "RemoteCommandError", "SSHConnectingError",
                 "MissingAuthError", "RemoteFileTransferError"):
        cls = getattr(flambe_cluster, name)
        error = cls("the key file is missing")
        assert str(error) == "the key file is missing", name
        assert isinstance(error, flambe_cluster.FlambeClusterError), name
    assert errors.ClusterConfigurationError("x y").problems == ["x y"]
    assert errors.RemoteCommandError("could not install").failures == []
    assert str(errors.ClusterConfigurationError(["a", "b"])).startswith("2 problems with the cluster configuration")
    unreachable = errors.HostUnreachableError("h0 (10.0.0.1)", "no SSH login")
    assert isinstance(unreachable, flambe_cluster.SSHConnectingError), "Flambé's `except SSHConnectingError` catches it"
