"""Preparing hosts: the per-cluster Python environment, installed offline.

Every host ends with a virtual environment at
``~/.flambe-cluster/<cluster>/env``, made from the configured interpreter
with ``--system-site-packages`` (so a deep-learning image's own Ray or torch
is reused), holding the client's flambe-cluster and Ray versions.  The
client gathers the wheels once (:mod:`flambe_cluster.wheelhouse`), ships them
to the orchestrator, from which they pass on to the factories as a tree, and
each host installs as soon as they reach it, offline (with the uv that
travels in the wheelhouse, else pip; see
:mod:`flambe_cluster.remote.offline_install`): hosts need no internet access.
The bytecode a Ray node runs is compiled once on the client and travels with
the wheels (:mod:`flambe_cluster.bytecode`), so that hosts of the client's
Python version do not each compile it.  Hosts
whose environment already matches are not touched.  An environment counts as
complete only with its marker (:data:`~flambe_cluster.session.ENVIRONMENT_MARKER`),
removed before an install and written after it succeeded; one without it (a
host stopped mid-install) is rebuilt from scratch.
"""

from __future__ import annotations

import json
import logging
import posixpath
import shlex
import tempfile
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from attrs import frozen
from packaging.requirements import InvalidRequirement, Requirement

from . import bytecode, hostfiles, wheelhouse
from .errors import ClusterError, HostError, UsageError
from .paths import SENT_CONTENT
from .records import Instance, Resources
from .session import ENVIRONMENT_MARKER, HostSession
from .stash import StashKey
from .wheelhouse import HostPlatform

logger = logging.getLogger(__name__)
#: The factories' CPUs and GPUs once detected (see :func:`factory_resources`), kept on the session.
RESOURCES = StashKey[dict[Instance, Resources]]()

# Stdlib only, run by the host's own interpreter: live_ray_nodes() lists the live Ray nodes
# flambe-cluster started on this host, from their markers (the same test as
# flambe_cluster.remote.processes.recorded_alive, which needs the environment to run).
_LIVE_RAY_NODES = r"""
import glob, json, os
def live_ray_nodes():
    nodes = []
    try:
        boot = open("/proc/sys/kernel/random/boot_id").read().strip()
    except OSError:
        boot = ""
    for path in glob.glob(os.path.expanduser("~/.flambe-cluster/ray/*.json")):
        try:
            marker = json.load(open(path))
            if marker.get("boot") != boot:
                continue
            os.killpg(int(marker["pgid"]), 0)
        except (OSError, ValueError, KeyError):
            continue
        nodes.append({"cluster": marker["cluster"], "ip": os.path.basename(path)[:-5]})
    return nodes
"""

# The first probe of a host: platform, CPUs, what the env holds, and its live Ray nodes.
PROBE = _LIVE_RAY_NODES + r"""
import platform, subprocess, sys
env_python, build_file = sys.argv[1], sys.argv[2]
libc, version = platform.libc_ver()
report = {"python": "%d.%d" % sys.version_info[:2], "machine": platform.machine(),
          "glibc": version if libc == "glibc" else None, "cpus": len(os.sched_getaffinity(0)), "env": None}
if os.path.exists(env_python):
    code = ("import json\nfrom importlib import metadata\nout = {}\n"
            "for name in ('flambe-cluster', 'ray'):\n"
            "    try: out[name] = metadata.version(name)\n"
            "    except metadata.PackageNotFoundError: out[name] = None\n"
            "print(json.dumps(out))")
    done = subprocess.run([env_python, "-c", code], capture_output=True, text=True)
    if done.returncode == 0:
        report["env"] = json.loads(done.stdout)
        try:
            report["env"]["build"] = open(build_file).read().strip()
        except OSError:
            report["env"]["build"] = None
report["ray_nodes"] = live_ray_nodes()
print(json.dumps(report))
"""

# Only the live Ray nodes: a JSON list of {"cluster": name, "ip": address}.
RAY_NODES_CHECK = _LIVE_RAY_NODES + "print(json.dumps(live_ray_nodes()))\n"


@frozen
class HostReport:
    """What the probe found on one host."""

    platform: HostPlatform
    cpus: int
    installed: dict[str, Any] | None  # {"flambe-cluster": v, "ray": v, "build": digest} or None without env
    # ({"cluster": name, "ip": address}, ...) of live Ray nodes started by flambe-cluster
    ray_nodes: tuple[dict[str, Any], ...] = ()

    def matches(self, wanted: dict[str, str]) -> bool:
        return self.installed is not None and all(self.installed.get(k) == v for k, v in wanted.items())

    def runs_node_of(self, cluster: str) -> bool:
        """Whether a live Ray node of ``cluster`` runs on the host."""
        return any(node["cluster"] == cluster for node in self.ray_nodes)


#: The oldest Python the hosts' environment can be made with (flambe-cluster's own requirement).
HOST_PYTHON_MIN = (3, 10)


def check_pythons(session: HostSession, reports: dict[Instance, HostReport]) -> None:
    """Raise :class:`ClusterError` naming each host whose ``python`` is older than :data:`HOST_PYTHON_MIN`,
    before anything is gathered or installed (pip would only say it finds no matching distribution)."""
    old = [(host, report.platform.python) for host, report in reports.items()
           if tuple(int(part) for part in report.platform.python.split(".")[:2]) < HOST_PYTHON_MIN]
    if old:
        wanted = ".".join(map(str, HOST_PYTHON_MIN))
        raise ClusterError(
            "the hosts need Python " + wanted + " or later for the cluster's environment: "
            + "; ".join(f"{session.config.python} on {host.label} is {version}" for host, version in old)
            + ". Set `python:` to a newer interpreter of those hosts (e.g. python3.11), or install one with "
              "setup_cmds, then run `flambe-cluster up` again.")


def wanted_versions() -> dict[str, str]:
    """The versions every host must end with: the client's own."""
    return {"flambe-cluster": metadata.version("flambe-cluster"), "ray": metadata.version("ray"),
            "build": wheelhouse.source_digest()}


def probe(session: HostSession, hosts: Sequence[Instance]) -> dict[Instance, HostReport]:
    """One round trip per host (all at once): platform, CPUs and the environment's versions."""
    command = (shell_python(session) + " -c " + shlex.quote(PROBE) + " " + session.remote_path("env/bin/python")
               + " " + session.remote_path(ENVIRONMENT_MARKER))
    results = session.pool.run_all(hosts, command)
    reports = {}
    for host, result in results.items():
        try:
            data = json.loads(result.stdout)
        except json.JSONDecodeError as exc:
            raise HostError(host.label, f"unexpected answer from the host's Python ({result.stdout[:200]!r})") from exc
        reports[host] = HostReport(
            HostPlatform(data["python"], data["machine"], data["glibc"]), data["cpus"], data["env"],
            tuple(data["ray_nodes"]),
        )
    return reports


def runs_ray_node(session: HostSession, host: Instance, timeout: float) -> bool | None:
    """Whether a live Ray node of this cluster runs on ``host`` now, by its recorded process group.

    One round trip with the host's own interpreter (no environment needed);
    ``None`` when the host answered but its interpreter could not tell.
    Raises :class:`~flambe_cluster.errors.FlambeClusterError` when the host
    cannot be reached.
    """
    command = shell_python(session) + " -c " + shlex.quote(RAY_NODES_CHECK)
    result = session.pool.run(host, command, timeout=timeout, check=False)
    try:
        found = json.loads(result.stdout) if result.ok else None
    except json.JSONDecodeError:
        found = None
    if found is None:
        return None
    return any(n["cluster"] == session.name and n["ip"] == host.private.host for n in found)


def shell_python(session: HostSession) -> str:
    """The configured host interpreter as a shell word."""
    return shlex.quote(session.config.python)


def refuse_other_clusters(session: HostSession, reports: dict[Instance, HostReport]) -> None:
    """Raise before installing anything if a host runs a Ray node of another session."""
    busy = [
        f"{host.label} runs a Ray node of cluster {node['cluster']!r}"
        for host, report in reports.items()
        for node in report.ray_nodes
        if node["cluster"] != session.name
    ]
    if busy:
        raise ClusterError("; ".join(busy) + ". Take that cluster down first (flambe-cluster down) or use other hosts.")


def stale_hosts(reports: dict[Instance, HostReport], wanted: dict[str, str] | None = None) -> list[Instance]:
    """The hosts whose environment does not hold ``wanted`` (default: :func:`wanted_versions`): :func:`prepare`
    installs on them."""
    wanted = wanted or wanted_versions()
    return [host for host, report in reports.items() if not report.matches(wanted)]


def prepare(session: HostSession, reports: dict[Instance, HostReport],
            on_ready: Callable[[Instance], None] | None = None) -> list[Instance]:
    """Install flambe-cluster and Ray on every host whose environment does not match; returns those hosts.

    A host's environment is rebuilt when it lacks the completion marker, and
    the marker is removed before installing and written last: it stands only
    for an install that succeeded.  Each host installs as soon as the
    wheelhouse reaches it (see :func:`ship_wheels`), with uv where it runs.
    ``on_ready(host)`` is called once for every host whose environment is
    complete: at once for those that match, right after its install for the
    others (from other threads, while the rest still install).
    """
    refuse_other_clusters(session, reports)
    wanted = wanted_versions()
    stale = stale_hosts(reports, wanted)
    check_pythons(session, {host: reports[host] for host in stale})
    ready = on_ready or (lambda host: None)
    for host in reports:
        if host not in stale:
            ready(host)
    if not stale:
        session.on_step(f"software already prepared on {len(reports)} hosts "
                        f"(flambe-cluster {wanted['flambe-cluster']}, ray {wanted['ray']})")
        return []
    platforms = {reports[host].platform for host in stale}
    if len(platforms) > 1:
        detail = "; ".join(f"{host.label}: {reports[host].platform.tag}" for host in stale)
        raise ClusterError(f"the hosts differ in Python or platform, one wheelhouse cannot serve them all: {detail}. "
                           "Use hosts of one image, or set `python:` to the same interpreter version everywhere.")
    (platform,) = platforms
    session.on_step(f"gathering wheels for {platform.tag} on this machine (cached after the first time)")
    deps, self_wheel = gather_software(platform, _on_this_machine(session))
    folder = "wheelhouse"
    env, marker = session.remote_path("env"), session.remote_path(ENVIRONMENT_MARKER)
    wheel = session.remote_path(f"{folder}/{self_wheel.name}")
    install = " && ".join([
        _INSTALLER_DEFINED,
        _installer(session, folder, "verify"),
        f"{{ [ -f {marker} ] || {{ rm -rf {env} && {_installer(session, folder, 'venv')}; }}; }}",
        f"rm -f {marker}",
        f"{_installer(session, folder, 'install')} {shlex.quote('ray==' + wanted['ray'])} {wheel}",
        f"{_installer(session, folder, 'install')} --reinstall {wheel}",
        _installer(session, folder, "bytecode"),
        f"printf '%s\\n' {shlex.quote(wanted['build'])} > {marker}",
    ])

    def arrived(host: Instance) -> None:
        if host in stale:
            session.run_all([host], install, states=("installing flambe-cluster and ray", "installed"))
            ready(host)

    session.on_step(f"installing flambe-cluster and ray offline on {len(stale)} hosts, "
                    "each as the wheelhouse reaches it")
    ship_wheels(session, [deps, self_wheel.parent], folder, stale, arrived)
    return stale


def gather_software(platform: HostPlatform, on_line: Callable[[str], None] | None = None) -> tuple[Path, Path]:
    """What hosts of ``platform`` install, on the client, cached: (the folder of wheels of flambe-cluster's
    dependencies and Ray, with their bytecode (:mod:`flambe_cluster.bytecode`), flambe-cluster's own wheel).
    ``on_line`` gets what happens on this machine (pip's lines, the compiling)."""
    say = on_line or (lambda line: None)
    self_wheel = wheelhouse.build_self_wheel(wheelhouse.cache_home() / "self")
    deps = wheelhouse.gather(platform, wheelhouse.runtime_requirements(), on_line=on_line)
    bytecode.compile_for(deps, platform.python,
                         on_compile=lambda: say("compiling a Ray node's bytecode once for the hosts"))
    return deps, self_wheel


INSTALLER = Path(__file__).with_name("remote") / "offline_install.py"

#: The shell assignment a command line starts with before its :func:`_installer` steps: the installer's source
#: travels once per command, in ``$installer``.
_INSTALLER_DEFINED = f"installer={shlex.quote(INSTALLER.read_text())}"


def _installer(session: HostSession, folder: str, verb: str) -> str:
    """The shell line running :mod:`flambe_cluster.remote.offline_install` ``verb`` with the host's interpreter
    (the command line must define ``$installer`` first: :data:`_INSTALLER_DEFINED`)."""
    return " ".join([shell_python(session), "-c", '"$installer"', verb, session.remote_path("uv"),
                     session.remote_path(folder), session.remote_path("env")])


def ship_wheels(session: HostSession, sources: Sequence[Path], folder: str, hosts: Sequence[Instance],
                on_arrival: Callable[[Instance], None]) -> None:
    """Send the wheels in ``sources`` to ``<remote root>/<folder>`` on the orchestrator, then on to the factories
    among ``hosts``.

    The folder there holds exactly ``sources``' files and their manifest of
    SHA-256 digests (:func:`flambe_cluster.wheelhouse.manifest`), which each
    host checks before it installs (the installer's ``verify``).

    The factories get them along a tree (:meth:`HostSession.fan_out`);
    ``on_arrival(host)`` runs for the orchestrator and for each factory as
    soon as the wheels are there.
    """
    relative = posixpath.join(session.remote_root, folder)
    orchestrator = session.require_orchestrator()
    size = _size(sources)
    session.on_step(f"shipping the wheelhouse to the orchestrator ({size / 2**20:.0f} MB)")
    hostfiles.create_dirs_on(session, [orchestrator], [relative])
    with tempfile.TemporaryDirectory(prefix="flambe-cluster-manifest-") as listing:
        (Path(listing) / wheelhouse.MANIFEST).write_text(wheelhouse.manifest(sources))
        session.upload(orchestrator, [f"{Path(s).absolute()}/" for s in [*sources, Path(listing)]], relative + "/",
                       delete=True, shown=("receiving the wheelhouse", size))
    factories = [h for h in hosts if h != orchestrator]
    if factories:
        session.on_step(f"passing the wheelhouse on to {len(factories)} factories as a tree")
    session.fan_out(relative, factories, on_arrival=on_arrival)


def _on_this_machine(session: HostSession) -> Callable[[str], None]:
    """A progress reporter for work on the client itself (pip gathering wheels): subject ``this machine``."""
    return lambda state: session.on_progress("this machine", state)


def _size(sources: Sequence[Path]) -> int:
    """The bytes of the files in ``sources`` (the wheels and their bytecode)."""
    return sum(p.stat().st_size for s in sources for p in Path(s).rglob("*") if p.is_file())


def factory_resources(session: HostSession,
                      reports: dict[Instance, HostReport] | None = None) -> dict[Instance, Resources]:
    """CPUs (from the probe) and GPUs (through the detect_gpus hook: ``nvidia-smi``) of every factory.

    Remembered in the session; ``reports`` from a probe just made saves
    probing again.  Raises :class:`HostError` (several hosts:
    ``HostsFailedError``) naming each factory whose type promises GPUs
    (the promised_gpus hook) that it does not see; see :func:`usable_gpus`.
    """
    known = session.stash.get(RESOURCES, None)
    if known is None or reports is not None:
        reports = reports or probe(session, session.factories)

        def detect(host: Instance) -> Resources:
            return Resources(cpu=reports[host].cpus, gpu=usable_gpus(session, host))

        known = session.stash[RESOURCES] = session.pool.map(session.factories, detect)
    return known


def usable_gpus(session: HostSession, host: Instance) -> int:
    """The GPUs ``host`` can use (detect_gpus), checked against those its type promises (promised_gpus).

    Promised GPUs that are not seen at all raise :class:`HostError` saying
    to install the NVIDIA driver; fewer than promised are used, with a warning.
    """
    seen = int(session.hooks.detect_gpus(session.config, host,
                                         lambda command: session.pool.run(host, command).stdout) or 0)
    promised = session.hooks.promised_gpus(session.config, host) or 0
    if promised and not seen:
        raise HostError(host.label, (
            f"its type promises {promised} GPU{'s' if promised != 1 else ''} but nvidia-smi sees none: the NVIDIA "
            "driver is missing or broken. Use an image that carries the driver (the provider's default image for "
            "GPU types does: leave the image option unset) or install the driver (e.g. in setup_cmds), then run "
            "`flambe-cluster up` again."
        ))
    if seen < promised:
        logger.warning("%s: its type promises %d GPUs but nvidia-smi sees %d; Ray is told about %d",
                       host.label, promised, seen, seen)
    return seen


def install_extensions(session: HostSession, hosts: Sequence[Instance], extensions: dict[str, str]) -> None:
    """Install extensions in the environment of ``hosts``, offline, from wheels gathered on the client.

    Each value is a local project folder (built into a wheel here), the
    path on the hosts that :func:`~flambe_cluster.content.send_local_content`
    returned for one (its local original is built), or a pip requirement
    (``scikit-learn==1.5``); raises :class:`UsageError` naming the extension
    otherwise.
    """
    if not extensions:
        return
    local_wheels, requirements = [], []
    for name, location in extensions.items():
        folder = session.stash.get(SENT_CONTENT, {}).get(location) or Path(location).expanduser()
        if folder.is_dir():
            local_wheels.append(wheelhouse.build_local_wheel(folder, wheelhouse.cache_home() / "extensions"))
            continue
        try:
            Requirement(location)
        except InvalidRequirement:
            raise UsageError(
                f"extension {name!r}: {location!r} is neither a local folder nor a pip requirement") from None
        requirements.append(location)
    orchestrator = session.require_orchestrator()
    platform = probe(session, [orchestrator])[orchestrator].platform
    session.on_step(f"gathering wheels for extensions {', '.join(extensions)}")
    folder = wheelhouse.gather(platform, requirements, local_wheels, on_line=_on_this_machine(session))
    names = [shlex.quote(r) for r in requirements] + [
        session.remote_path(f"extensions-wheelhouse/{w.name}") for w in local_wheels
    ]
    install = " && ".join([_INSTALLER_DEFINED, _installer(session, "extensions-wheelhouse", "verify"),
                           f"{_installer(session, 'extensions-wheelhouse', 'install')} {' '.join(names)}"])
    session.on_step(f"installing extensions on {len(hosts)} hosts")

    def arrived(host: Instance) -> None:
        if host in hosts:
            session.run_all([host], install, states=("installing extensions", "extensions installed"))

    ship_wheels(session, [folder], "extensions-wheelhouse", hosts, arrived)


def ensure_installed(session: HostSession, hosts: Sequence[Instance], extensions: dict[str, str],
                     module: str) -> None:
    """Install ``extensions`` (see :func:`install_extensions`) on those ``hosts`` whose environment lacks ``module``."""
    probe_line = f"{session.remote_path('env/bin/python')} -c {shlex.quote(f'import {module}')}"
    results = session.run_all(hosts, probe_line, check=False)
    missing = [host for host, result in results.items() if not result.ok]
    if missing:
        install_extensions(session, missing, extensions)
