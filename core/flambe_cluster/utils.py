"""The seed's ``flambe.cluster.utils``: what a remote command returned, as Flambé's instances report it."""

from __future__ import annotations

from collections import namedtuple

#: ``RemoteCommand(success, msg)``: whether a command succeeded on a host, and its output or error message.
RemoteCommand = namedtuple("RemoteCommand", ["success", "msg"])
