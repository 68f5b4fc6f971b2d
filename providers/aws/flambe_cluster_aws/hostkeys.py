"""Host keys an instance printed on its console, read through EC2 (an authenticated channel).

cloud-init prints the host's public keys between ``-----BEGIN SSH HOST KEY
KEYS-----`` and ``-----END SSH HOST KEY KEYS-----`` on the serial console
(some images prefix every line, e.g. ``ec2: ``); EC2's GetConsoleOutput
returns that text.  When it is there, the core requires the key the host
presents on first contact to be one of them, whatever the host-key policy.
The fingerprint block cloud-init prints as well cannot be turned into keys,
so it is not used; when the console has no key block (yet), the host-key
policy alone decides (``accept-new`` pins on first contact).
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import struct
import threading
import time

from . import api

logger = logging.getLogger("flambe_cluster_aws")

BEGIN = "-----BEGIN SSH HOST KEY KEYS-----"
END = "-----END SSH HOST KEY KEYS-----"
_KEY = re.compile(r"((?:ssh-(?:ed25519|rsa|dss))|(?:ecdsa-sha2-nistp(?:256|384|521))|(?:sk-[a-z0-9@.-]+))"
                  r"\s+([A-Za-z0-9+/]+={0,3})")
#: How long a console without keys is believed before asking again (it is written late in the boot).
NEGATIVE_TTL = 15.0

_cache: dict[tuple, tuple[float, list[str] | None]] = {}
_lock = threading.Lock()


def _well_formed(kind: str, blob: str) -> bool:
    """Whether ``blob`` is base64 of an SSH public key whose embedded type is ``kind``."""
    try:
        data = base64.b64decode(blob, validate=True)
        (length,) = struct.unpack(">I", data[:4])
        return data[4:4 + length].decode() == kind
    except (binascii.Error, struct.error, UnicodeDecodeError, ValueError):
        return False


def parse_host_keys(console: str) -> list[str]:
    """The ``"<type> <base64>"`` key lines of the last complete host-key block in ``console`` (empty if none)."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in console.splitlines():
        if BEGIN in line:
            current = []
        elif END in line:
            if current is not None:
                blocks.append(current)
            current = None
        elif current is not None:
            match = _KEY.search(line)
            if match and _well_formed(match.group(1), match.group(2)):
                current.append(f"{match.group(1)} {match.group(2)}")
    return blocks[-1] if blocks else []


def decode_console(output: str) -> str:
    """EC2 returns the console base64-encoded; some endpoints return it as text already."""
    compact = "".join(output.split())
    if compact and re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", compact):
        try:
            return base64.b64decode(compact, validate=True).decode("utf-8", errors="replace")
        except (binascii.Error, ValueError):
            pass
    return output


def console_host_keys(region: str, instance_id: str) -> list[str] | None:
    """The host keys on ``instance_id``'s console, or None when it shows none (cached; failures count as none)."""
    from botocore.exceptions import BotoCoreError, ClientError

    key = (region, instance_id)
    now = time.monotonic()
    with _lock:
        cached = _cache.get(key)
        if cached is not None and (cached[1] is not None or now - cached[0] < NEGATIVE_TTL):
            return cached[1]
    try:
        output = api.client("ec2", region).get_console_output(InstanceId=instance_id, Latest=True).get("Output") or ""
    except ClientError as exc:
        if api.error_code(exc) in ("InvalidParameterValue", "UnsupportedOperation", "InvalidParameterCombination"):
            try:  # Latest=True is for Nitro instances only
                output = api.client("ec2", region).get_console_output(InstanceId=instance_id).get("Output") or ""
            except (ClientError, BotoCoreError) as inner:
                logger.debug("console output of %s unavailable: %s", instance_id, inner)
                output = ""
        else:
            logger.debug("console output of %s unavailable: %s", instance_id, exc)
            output = ""
    except BotoCoreError as exc:
        logger.debug("console output of %s unavailable: %s", instance_id, exc)
        output = ""
    keys = parse_host_keys(decode_console(output)) or None
    with _lock:
        _cache[key] = (now, keys)
    return keys
