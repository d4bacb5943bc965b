"""What a GPU type offers a model: memory, bandwidth, matrix throughput, interconnect, cost."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

GIB = 1024**3


@dataclass(frozen=True)
class GPUType:
    """One accelerator model. Rates are datasheet peaks; the latency model learns the efficiency."""

    name: str
    memory_bytes: int  # what the driver reports as total (nvidia-smi memory.total)
    memory_bandwidth_bytes_per_s: float
    bf16_dense_flops_per_s: float
    interconnect: str  # "nvlink4", "nvlink3", "pcie4"
    interconnect_bytes_per_s: float  # per GPU, one direction
    relative_cost_per_hour: float  # H100-80GB = 1.0
    products: tuple[str, ...] = field(default=())  # `nvidia.com/gpu.product` label values
    #: Step-latency model fitted to this product's own measurements (a file in the profiler's
    #: data); None: the model fitted to GPU layer timings.
    latency_model: str | None = None
    #: The engine cannot size its KV cache by measuring free memory (vLLM's CPU backend), so it
    #: must be told the bytes the memory model leaves (``--kv-cache-memory-bytes``).
    explicit_kv_cache: bool = False

    @classmethod
    def from_mapping(cls, name: str, spec: Mapping[str, Any]) -> GPUType:
        return cls(
            name=name,
            memory_bytes=int(float(spec["memory_mib"]) * 1024**2),
            memory_bandwidth_bytes_per_s=float(spec["memory_bandwidth_gb_s"]) * 1e9,
            bf16_dense_flops_per_s=float(spec["bf16_dense_tflop_s"]) * 1e12,
            interconnect=str(spec["interconnect"]),
            interconnect_bytes_per_s=float(spec["interconnect_gb_s"]) * 1e9,
            relative_cost_per_hour=float(spec["relative_cost_per_hour"]),
            products=tuple(str(p) for p in spec.get("products", ())),
            latency_model=spec.get("latency_model"),
            explicit_kv_cache=bool(spec.get("explicit_kv_cache", False)),
        )

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GIB

    def matches_product(self, product_label: str) -> bool:
        """Whether a node's ``nvidia.com/gpu.product`` label names this GPU type."""
        wanted = product_label.strip().lower()
        return wanted == self.name.lower() or any(wanted == p.lower() for p in self.products)
