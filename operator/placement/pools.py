"""GPU pools: the fleet's nodes grouped into GPU types as placement compares them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from goodput.operator.gpu_catalog import Interconnect, matches_gpu_type
from goodput.operator.inventory import GpuNode
from goodput.profiler.hardware import GPUType


@dataclass(frozen=True, slots=True)
class GpuPool:
    """Nodes with the same GPU product, memory and interconnect: one GPU type to choose."""

    product: str
    interconnect: Interconnect
    gpu: GPUType
    max_gpus_per_node: int
    nodes: int
    gpus: int

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.product, self.interconnect.value, self.gpu.memory_bytes)

    def allowed_by(self, gpu_types: tuple[str, ...]) -> int | None:
        """Position in the user's preference list (0 = any allowed), or None when excluded."""
        if not gpu_types:
            return 0
        for i, wanted in enumerate(gpu_types):
            if matches_gpu_type(wanted, self.product):
                return i
        return None

    def describe(self) -> str:
        return f"{self.product} ({self.interconnect.value})"


def pool_key(node: GpuNode) -> tuple[str, str, int]:
    return (node.product, node.interconnect.value, node.gpu.memory_bytes)


def group_pools(nodes: Iterable[GpuNode]) -> dict[tuple[str, str, int], GpuPool]:
    """Pools by key, in sorted key order (deterministic)."""
    members: dict[tuple[str, str, int], list[GpuNode]] = {}
    for node in nodes:
        members.setdefault(pool_key(node), []).append(node)
    return {
        key: GpuPool(
            product=group[0].product,
            interconnect=group[0].interconnect,
            gpu=group[0].gpu,
            max_gpus_per_node=max(n.gpus for n in group),
            nodes=len(group),
            gpus=sum(n.gpus for n in group),
        )
        for key, group in sorted(members.items())
    }
