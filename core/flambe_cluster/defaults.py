"""The core's default hook implementations, registered ``trylast``.

They answer only when the provider does not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .hookspecs import hookimpl

if TYPE_CHECKING:  # pragma: no cover - typing only
    from .records import Instance
    from .settings import ClusterConfig


@hookimpl(trylast=True)
def flambe_cluster_place(config: ClusterConfig) -> dict[str, str]:
    """No place beyond the provider's name."""
    return {}


@hookimpl(trylast=True)
def flambe_cluster_host_keys(config: ClusterConfig, instance: Instance) -> None:
    """No provider-vouched host keys: the host-key policy alone decides."""
    return None


# A login shell, so PATH set by the host's profile (CUDA, conda, ~/bin) applies.
NVIDIA_SMI = (
    "bash -lc 'command -v nvidia-smi >/dev/null 2>&1 || exit 0; "
    "nvidia-smi --query-gpu=index --format=csv,noheader'"
)


@hookimpl(trylast=True)
def flambe_cluster_detect_gpus(config: ClusterConfig, instance: Instance, run: Callable[[str], str]) -> int:
    """Count the GPUs ``nvidia-smi`` lists on the host (0 when it is not installed)."""
    # profile chatter is not a GPU
    return len([line for line in run(NVIDIA_SMI).splitlines() if line.strip().isdigit()])
