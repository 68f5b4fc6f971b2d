"""The core's default hook implementations, registered ``trylast``.

They answer only when the provider does not.
"""

from __future__ import annotations

from .hookspecs import hookimpl


@hookimpl(trylast=True)
def flambe_cluster_host_keys(config, instance):
    """No provider-vouched host keys: the host-key policy alone decides."""
    return None
