"""Host keys: pinned per cluster, verified on every connection, never trusted blindly.

:class:`KnownHosts` is a cluster's known_hosts file, replaced whole on every
change (a crash never leaves it cut) and refused when damaged;
:class:`VerifyNewHostKey` decides about a host not pinned yet: a key the
provider vouches for wins, ``strict`` refuses, ``accept-new`` pins.  A host
presenting another key than its pinned one is refused, unless the provider
vouches for the new key (an instance replaced at the same address):
:meth:`KnownHosts.replace_vouched` then replaces the pin.
"""

from __future__ import annotations

import base64
import hashlib
import shlex
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import paramiko

from .errors import HostKeyError
from .state import edit_private, without_host_names


def fingerprint(key: paramiko.PKey) -> str:
    """The OpenSSH-style SHA256 fingerprint of a public key."""
    digest = base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def key_line(key: paramiko.PKey) -> str:
    """``"<type> <base64>"``: the key as OpenSSH writes it in known_hosts and authorized_keys."""
    return f"{key.get_name()} {key.get_base64()}"


class KnownHosts:
    """The cluster's known_hosts file, shared by every connection of a pool.

    The file is only ever replaced whole (:func:`~flambe_cluster.state.edit_private`),
    so a crash never leaves it empty or cut.  One that is damaged all the
    same (empty, a line cut short or garbled) is refused with
    :class:`HostKeyError` rather than read around: paramiko would skip the
    damaged line, and ``accept-new`` would then silently pin whatever key
    answers for the hosts it named.
    """

    def __init__(self, path: Path, policy: str) -> None:
        self.path = path
        self.policy = policy
        self._lock = threading.Lock()

    def load_into(self, client: paramiko.SSHClient, label: str) -> None:
        """Load the pinned keys into ``client``; :class:`HostKeyError` (for host ``label``) if the file is damaged."""
        with self._lock:
            try:
                text = self.path.read_text(errors="replace")
            except FileNotFoundError:
                return
            damage = known_hosts_damage(text)
            if damage:
                raise HostKeyError(
                    label,
                    f"the cluster's pinned host keys in {self.path} are damaged ({damage}). Nothing was run on it, "
                    "and no key is pinned again until the file is repaired: restore it from a backup, or delete the "
                    "damaged lines (or the file) to pin the hosts' keys again on first contact.",
                )
            client.load_host_keys(str(self.path))

    def pin(self, name: str, key: paramiko.PKey) -> None:
        """Pin ``key`` for ``name`` in place of any key pinned for it (mode 0600), replacing the file atomically."""
        with self._lock:
            edit_private(self.path, lambda text: f"{without_host_names(text, {name})}{name} {key_line(key)}\n")

    def replace_vouched(self, name: str, key: paramiko.PKey, vouched: Sequence[str] | None) -> bool:
        """Re-pin ``name`` to the changed ``key`` it presents if the provider vouches for that key.

        ``vouched`` is what the provider's ``flambe_cluster_host_keys`` hook
        reports for the instance now at ``name`` (None: it does not know).
        Returns whether the pin was replaced; without a vouched key nothing
        changes and the caller refuses the host.
        """
        if vouched is None or not vouched_for(key, vouched):
            return False
        self.pin(name, key)
        return True

    def removal_hint(self, name: str) -> str:
        return f"ssh-keygen -R {shlex.quote(name)} -f {shlex.quote(str(self.path))}"


def vouched_for(key: paramiko.PKey, vouched: Sequence[str]) -> bool:
    """Whether ``key`` is one of the ``vouched`` key lines (``"<type> <base64> [comment]"``)."""
    return key_line(key) in {" ".join(v.split()[:2]) for v in vouched}


def known_hosts_damage(text: str) -> str | None:
    """What is wrong with a known_hosts text (None when every line is a well-formed entry)."""
    if not text.strip():
        return "the file is empty"
    if not text.endswith("\n"):
        return f"its last line (line {text.count(chr(10)) + 1}) is cut short"
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line.strip(), number)
        except Exception:  # noqa: BLE001 - paramiko raises several kinds for a malformed key
            entry = None
        if entry is None:
            return f"line {number} is not a host key entry"
    return None


class VerifyNewHostKey(paramiko.MissingHostKeyPolicy):
    """Decides about a host whose name is not in known_hosts yet.

    ``strict`` refuses it; ``accept-new`` pins its key — unless the provider
    vouched for other keys, which wins over the policy.
    """

    def __init__(self, known: KnownHosts, label: str, vouched: Callable[[], Sequence[str] | None]) -> None:
        self.known = known
        self.label = label
        self.vouched = vouched  # asked only here, for hosts not pinned yet

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        vouched = self.vouched()
        if vouched is not None:
            if not vouched_for(key, vouched):
                raise HostKeyError(
                    self.label,
                    f"the host presented key {fingerprint(key)}, which is not one of the host keys the provider "
                    "reports for this instance. Nothing was run on it. The instance may have been replaced, or "
                    "the connection intercepted; check the instance before retrying.",
                )
        elif self.known.policy == "strict":
            raise HostKeyError(
                self.label,
                f"unknown host key {fingerprint(key)} and host_key_policy is 'strict'. Nothing was run on it. "
                f"Verify the fingerprint, then add the host's key to {self.known.path} "
                "(or set host_key_policy: accept-new to pin it on first contact).",
            )
        self.known.pin(hostname, key)
        client.get_host_keys().add(hostname, key.get_name(), key)
