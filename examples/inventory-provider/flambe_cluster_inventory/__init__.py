"""The ``inventory`` provider: a lab's machines, listed in an Ansible-style INI inventory.

This package is an example of a *third-party* flambe-cluster provider: a
separate distribution (``flambe-cluster-inventory``) that registers itself
under the entry-point group ``flambe_cluster.providers`` and implements the
hooks of :mod:`flambe_cluster.hookspecs`.  Nothing in flambe-cluster knows
about it; once it is installed (``pip install ./examples/inventory-provider``)
``flambe-cluster providers`` lists it and a cluster file selects it with
``provider: inventory``.

Like the built-in ``ssh`` provider it never creates, starts, stops or deletes
a machine: ``load_instances`` and ``find_instances`` only describe the hosts
the inventory lists, and there is nothing to roll back or terminate.

Options (besides the common cluster fields)::

    inventory: lab/hosts.ini          # the inventory file (required; relative to the working folder)
    orchestrator_group: orchestrator  # the group holding the orchestrator (default)
    factories_group: factories        # the group holding the factories (default)
    use_public: true                  # connect to the public address (default)

The inventory lists one host per line under ``[group]`` headers::

    # comments start with '#' or ';'
    [orchestrator]
    head ansible_host=10.0.0.5 ansible_port=2222 private_ip=10.1.0.5

    [factories]
    10.0.0.6
    10.0.0.7 ansible_port=2222
    gpu3 ansible_host=gpu3.lab.example.org

A host line is an address (``10.0.0.6``, ``node1.lab``, ``10.0.0.6:2222``) or
a name followed by ``ansible_host=ADDRESS``, optionally with
``ansible_port=PORT`` and ``private_ip=ADDRESS`` (where the other hosts reach
it; the public address when not given).  Other groups are allowed and
ignored.  The parser is strict: any other variable, ``[group:vars]`` and
``[group:children]`` sections, host ranges (``node[01:10]``) and hosts before
the first header are errors naming the file, the line and what was expected,
all of them reported at once.

``factories_num`` may be left out: it is the number of hosts in the factories
group.
"""

from __future__ import annotations

import difflib
import re
import shlex
from pathlib import Path

from attrs import field, frozen
from flambe_cluster.provider import (
    ClusterConfigurationError,
    ClusterInstances,
    Endpoint,
    config_class,
    hookimpl,
    to_bool,
    to_str,
)

__all__ = ["Inventory", "InventoryError", "InventoryGroup", "InventoryHost", "InventoryOptions", "read_inventory"]

#: The host variables this provider reads; any other is an error.
HOST_VARIABLES = ("ansible_host", "ansible_port", "private_ip")
#: How many line problems one error lists before summing up the rest.
MAX_REPORTED = 10

_GROUP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_HOST_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_HEADER = re.compile(r"^\[(?P<inside>[^\]]*)\]\s*(?:[#;].*)?$")
_HOST_RANGE = re.compile(r"\[[^\]]*:[^\]]*\]")
#: Ansible variables a lab inventory often has, and where their value goes instead.
_ANSIBLE_HINTS = {
    "ansible_user": "the user name is the cluster file's username field; ",
    "ansible_ssh_user": "the user name is the cluster file's username field; ",
    "ansible_ssh_private_key_file": "the private key is the cluster file's key field; ",
    "ansible_ssh_host": "did you mean 'ansible_host'? ",
    "ansible_ssh_port": "did you mean 'ansible_port'? ",
}
_ADDRESS_EXPECTED = (
    "an address ('10.0.0.5', 'node1.lab', optionally ':port') or a name followed by ansible_host=ADDRESS"
)


class InventoryError(ValueError):
    """An inventory file that cannot be read or parsed; ``problems`` holds one message per bad line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        shown = self.problems[:MAX_REPORTED]
        more = len(self.problems) - len(shown)
        super().__init__("; ".join(shown) + (f"; and {more} more problem(s) in the same file" if more else ""))


@frozen
class InventoryHost:
    """One host line: its name (as written), line number and endpoints."""

    name: str
    line: int
    public: Endpoint
    private: Endpoint


@frozen
class InventoryGroup:
    """A ``[group]``: the line of its first header and its hosts in file order."""

    name: str
    line: int
    hosts: tuple[InventoryHost, ...] = field(converter=tuple)


@frozen
class Inventory:
    """A parsed inventory file (see the module docstring for the format)."""

    path: Path
    groups: tuple[InventoryGroup, ...] = field(converter=tuple)

    def group(self, name: str) -> InventoryGroup | None:
        """The group called ``name``, or ``None`` when the file has none."""
        return next((g for g in self.groups if g.name == name), None)

    def where(self, line: int | None = None) -> str:
        """``'<file> line <n>'`` for messages (just the file when ``line`` is ``None``)."""
        return f"{self.path}" if line is None else f"{self.path} line {line}"

    @classmethod
    def parse(cls, text: str, path: Path) -> Inventory:
        """Parse ``text`` read from ``path``; raises :class:`InventoryError` listing every bad line."""
        problems: list[str] = []
        groups: dict[str, tuple[int, list[InventoryHost]]] = {}
        current: str | None = None
        skipping = False  # inside a section whose header was an error: its lines are not hosts
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line[0] in "#;":
                continue
            where = f"{path} line {number}"
            if line.startswith("["):
                try:
                    name = _parse_header(line)
                except ValueError as exc:
                    problems.append(f"{where}: {exc}")
                    current, skipping = None, True
                    continue
                groups.setdefault(name, (number, []))
                current, skipping = name, False
                continue
            if skipping:
                continue
            if current is None:
                problems.append(f"{where}: expected a [group] header before the first host, got {line!r}")
                skipping = True  # one message, not one per host
                continue
            try:
                groups[current][1].append(_parse_host_line(line, number))
            except ValueError as exc:
                problems.append(f"{where}: {exc}")
        if problems:
            raise InventoryError(problems)
        return cls(path, [InventoryGroup(name, line, hosts) for name, (line, hosts) in groups.items()])


def _parse_header(line: str) -> str:
    match = _HEADER.match(line)
    if not match:
        raise ValueError(f"expected a group header '[name]', got {line!r}")
    inside = match["inside"].strip()
    if ":" in inside:
        group, _, kind = inside.partition(":")
        if kind == "vars":
            raise ValueError(
                f"[{inside}] sections are not supported by the inventory provider; "
                "write ansible_host=, ansible_port= or private_ip= on each host line instead"
            )
        if kind == "children":
            raise ValueError(
                f"[{inside}] sections are not supported by the inventory provider; list the hosts in [{group}] itself"
            )
    if not _GROUP_NAME.match(inside):
        raise ValueError(f"expected a group name of letters, digits, '_' and '-' in '[name]', got {line!r}")
    return inside


def _host(value: str, what: str, port: int = 22) -> Endpoint:
    try:
        return Endpoint(value, port)
    except ValueError:
        raise ValueError(f"{what}: expected an IP address or host name, got {value!r}") from None


def _parse_host_line(line: str, number: int) -> InventoryHost:
    """One host line; raises ValueError saying what was expected (the caller adds file and line)."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError as exc:  # an unbalanced quote
        raise ValueError(f"expected a host line ('address' or 'name key=value ...'), "
                         f"but it has {str(exc).lower()}") from None
    if not tokens or not tokens[0]:
        raise ValueError(f"expected a host line ('address' or 'name key=value ...'), got {line!r}")
    first, *pairs = tokens
    if "=" in first:
        raise ValueError(f"expected the host first, then key=value variables, got {first!r} first")
    if _HOST_RANGE.search(first) and not first.startswith("["):
        raise ValueError(f"host ranges like {first!r} are not supported; list each host on its own line")
    variables: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"expected key=value after the host {first!r}, got {pair!r}")
        if key not in HOST_VARIABLES:
            close = difflib.get_close_matches(key, HOST_VARIABLES, n=1, cutoff=0.8)
            hint = _ANSIBLE_HINTS.get(key) or (f"did you mean {close[0]!r}? " if close else "")
            raise ValueError(
                f"unknown host variable {key!r}; {hint}the inventory provider reads only {', '.join(HOST_VARIABLES)}"
            )
        if key in variables:
            raise ValueError(f"{key} is given twice for the host {first!r}; expected it once")
        if not value:
            raise ValueError(f"expected a value after '{key}=' for the host {first!r}")
        variables[key] = value

    port: int | None = None
    if "ansible_port" in variables:
        text = variables["ansible_port"]
        if not text.isdigit() or not 1 <= int(text) <= 65535:
            raise ValueError(f"ansible_port: expected a TCP port between 1 and 65535, got {text!r}")
        port = int(text)

    if "ansible_host" in variables:
        if not _HOST_NAME.match(first):
            raise ValueError(f"expected a host name of letters, digits, '.', '-' and '_' before ansible_host=, "
                             f"got {first!r}")
        public = _host(variables["ansible_host"], "ansible_host", port or 22)
    else:
        try:
            public = Endpoint.parse(first)
        except ValueError:
            raise ValueError(f"expected {_ADDRESS_EXPECTED}, got {first!r}") from None
        explicit_port = first.count(":") == 1 or (first.startswith("[") and "]:" in first)
        if explicit_port and port is not None:
            raise ValueError(f"the port is given twice for the host {first!r} (':port' and ansible_port=); "
                             "expected one")
        if port is not None:
            public = Endpoint(public.host, port)
    private = _host(variables["private_ip"], "private_ip", public.port) if "private_ip" in variables else public
    return InventoryHost(name=first, line=number, public=public, private=private)


def read_inventory(value: object) -> Inventory:
    """Converter: the path of an inventory file, parsed (an :class:`Inventory` is returned as is).

    ``~`` is expanded; a relative path is relative to the working folder.
    Raises ValueError (an :class:`InventoryError` for bad lines) naming the
    file, each bad line and what was expected.
    """
    if isinstance(value, Inventory):
        return value
    if isinstance(value, Path):
        path = value
    elif isinstance(value, str) and value.strip():
        path = Path(value).expanduser()
    else:
        raise ValueError(f"expected the path of an Ansible-style INI inventory file, "
                         f"got {type(value).__name__} {value!r}")
    path = path.absolute()
    if not path.exists():
        raise ValueError(f"expected the path of an Ansible-style INI inventory file, but {str(path)!r} does not exist")
    if not path.is_file():
        raise ValueError(f"expected the path of an Ansible-style INI inventory file, but {str(path)!r} is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: expected a UTF-8 text inventory, but byte {exc.start} is not UTF-8") from None
    except OSError as exc:
        raise ValueError(f"cannot read the inventory file {str(path)!r}: {exc.strerror}") from None
    return Inventory.parse(text, path)


def _to_group_name(value: object) -> str:
    value = to_str(value)
    if not _GROUP_NAME.match(value):
        raise ValueError(f"expected a group name of letters, digits, '_' and '-' (as in a [name] header), "
                         f"got {value!r}")
    return value


@config_class
class InventoryOptions:
    """The inventory provider's options."""

    inventory: Inventory = field(
        converter=read_inventory, metadata={"help": "the path of an Ansible-style INI inventory file"}
    )
    orchestrator_group: str = field(default="orchestrator", converter=_to_group_name)
    factories_group: str = field(default="factories", converter=_to_group_name)
    use_public: bool = field(default=True, converter=to_bool)

    @property
    def implied_factories_num(self) -> int:
        """The number of hosts in the factories group (0 when it is missing: validation reports that)."""
        group = self.inventory.group(self.factories_group)
        return len(group.hosts) if group else 0


@hookimpl
def flambe_cluster_options_class() -> type:
    return InventoryOptions


@hookimpl
def flambe_cluster_validate(config) -> list[str]:
    """Both groups exist and differ, the orchestrator group has one host, each machine is listed once."""
    options: InventoryOptions = config.options
    inventory = options.inventory
    if options.orchestrator_group == options.factories_group:
        return [
            f"factories_group: expected a group other than orchestrator_group, both are {options.factories_group!r}"
        ]
    problems = []
    found = ", ".join(f"[{g.name}]" for g in inventory.groups) or "none"
    wanted = (
        ("orchestrator_group", options.orchestrator_group, "the orchestrator's host"),
        ("factories_group", options.factories_group, "the factories' hosts"),
    )
    for option, name, role in wanted:
        if inventory.group(name) is None:
            problems.append(
                f"inventory: {inventory.where()} has no [{name}] group (named by {option}); "
                f"expected a [{name}] section listing {role}; groups found: {found}"
            )
    orchestrators = inventory.group(options.orchestrator_group)
    if orchestrators is not None and len(orchestrators.hosts) != 1:
        listed = (
            "no host"
            if not orchestrators.hosts
            else f"{len(orchestrators.hosts)} hosts (lines {', '.join(str(h.line) for h in orchestrators.hosts)})"
        )
        problems.append(
            f"inventory: {inventory.where(orchestrators.line)}: group [{orchestrators.name}] lists {listed}; "
            "expected exactly one host, the orchestrator"
        )
    seen: dict[object, tuple[InventoryHost, str]] = {}
    for group in (orchestrators, inventory.group(options.factories_group)):
        if group is None:
            continue
        for host in group.hosts:
            earlier = seen.get(("name", host.name)) or seen.get(("address", host.public))
            if earlier is not None:
                first, first_group = earlier
                if first.name == host.name:
                    what = f"is already listed at line {first.line} in [{first_group}]"
                else:
                    what = (f"has the same address ({host.public}) as {first.name} "
                            f"at line {first.line} in [{first_group}]")
                problems.append(
                    f"inventory: {inventory.where(host.line)}: host {host.name} in [{group.name}] {what}; "
                    "list each machine once"
                )
                continue
            seen[("name", host.name)] = seen[("address", host.public)] = (host, group.name)
    return problems


def _instances(config) -> ClusterInstances:
    options: InventoryOptions = config.options
    orchestrators = options.inventory.group(options.orchestrator_group)
    factories = options.inventory.group(options.factories_group)
    if orchestrators is None or factories is None or len(orchestrators.hosts) != 1:  # pragma: no cover - validated
        raise ClusterConfigurationError(
            [f"inventory: {options.inventory.where()} was not validated; build the config with parse_config"],
            config.source,
        )

    hosts = [*orchestrators.hosts, *factories.hosts]
    return ClusterInstances.named(config.name, [(h.public, h.private) for h in hosts], use_public=options.use_public)


@hookimpl
def flambe_cluster_load_instances(config, journal, progress) -> ClusterInstances:
    """The hosts the inventory lists; nothing is created, so nothing is journaled (each is shown as listed)."""
    made = _instances(config)
    for instance in [made.orchestrator, *made.factories]:
        progress(instance.name, f"listed in the inventory at {instance.endpoint}")
    return made


@hookimpl
def flambe_cluster_find_instances(config) -> ClusterInstances:
    """The hosts the inventory lists (they always exist as far as this provider knows)."""
    return _instances(config)
