"""Published facts about GPU products, keyed by the names GPU feature discovery writes.

Node labels say which product a node has (``nvidia.com/gpu.product``) and usually its memory; they
do not say how fast it is, how its GPUs are linked or what it costs. Placement needs all three to
compare GPU types, so this module holds datasheet figures (dense BF16 tensor TFLOPS, HBM/GDDR
bandwidth) and a nominal on-demand price per GPU-hour (list prices of large clouds, 2025; only
their ratios matter). Unknown products get conservative figures derived from their memory label.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Interconnect(StrEnum):
    """How the GPUs of one interconnect domain talk to each other (fastest first)."""

    NVSWITCH = "nvswitch"
    NVLINK = "nvlink"
    PCIE = "pcie"


#: Per-direction bandwidth a tensor-parallel all-reduce sees on each link kind, bytes/s.
LINK_BANDWIDTH: dict[Interconnect, float] = {
    Interconnect.NVSWITCH: 450e9,
    Interconnect.NVLINK: 200e9,
    Interconnect.PCIE: 25e9,
}

#: Bandwidth between nodes (a 200 Gb/s NIC), bytes/s: what a pipeline stage boundary crosses.
NODE_NETWORK_BANDWIDTH = 25e9


@dataclass(frozen=True, slots=True)
class GpuProduct:
    """What placement needs to know about one GPU product."""

    family: str
    memory_bytes: int
    memory_bandwidth: float  # bytes/s
    bf16_flops: float  # dense, FLOP/s
    cost_per_hour: float  # nominal USD per GPU-hour
    interconnect: Interconnect  # default when the node has no goodput.dev/interconnect label


_GIB = 1024**3

# Ordered: the first pattern that matches a product label wins (more specific patterns first).
_CATALOG: tuple[tuple[re.Pattern[str], GpuProduct], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), product)
    for pattern, product in (
        (r"B200", GpuProduct("B200", 180 * _GIB, 8.0e12, 2250e12, 8.0, Interconnect.NVSWITCH)),
        (r"H200", GpuProduct("H200", 141 * _GIB, 4.8e12, 989e12, 5.0, Interconnect.NVSWITCH)),
        (r"H100.*NVL", GpuProduct("H100-NVL", 94 * _GIB, 3.9e12, 835e12, 4.0, Interconnect.NVLINK)),
        (r"H100.*PCI", GpuProduct("H100-PCIe", 80 * _GIB, 2.0e12, 756e12, 3.2, Interconnect.PCIE)),
        (r"H100", GpuProduct("H100", 80 * _GIB, 3.35e12, 989e12, 4.0, Interconnect.NVSWITCH)),
        (
            r"A100.*PCI.*40|A100.*40.*PCI",
            GpuProduct("A100-40GB-PCIe", 40 * _GIB, 1.555e12, 312e12, 1.6, Interconnect.PCIE),
        ),
        (
            r"A100.*PCI",
            GpuProduct("A100-80GB-PCIe", 80 * _GIB, 1.935e12, 312e12, 2.2, Interconnect.PCIE),
        ),
        (
            r"A100.*40",
            GpuProduct("A100-40GB", 40 * _GIB, 1.555e12, 312e12, 1.8, Interconnect.NVSWITCH),
        ),
        (r"A100", GpuProduct("A100-80GB", 80 * _GIB, 2.039e12, 312e12, 2.5, Interconnect.NVSWITCH)),
        (r"L40S", GpuProduct("L40S", 48 * _GIB, 0.864e12, 362e12, 1.4, Interconnect.PCIE)),
        (r"L40", GpuProduct("L40", 48 * _GIB, 0.864e12, 181e12, 1.2, Interconnect.PCIE)),
        (r"L4\b", GpuProduct("L4", 24 * _GIB, 0.3e12, 121e12, 0.7, Interconnect.PCIE)),
        (r"A10G", GpuProduct("A10G", 24 * _GIB, 0.6e12, 125e12, 1.0, Interconnect.PCIE)),
        (r"T4", GpuProduct("T4", 16 * _GIB, 0.32e12, 65e12, 0.35, Interconnect.PCIE)),
    )
)


def lookup_product(label: str, memory_mib: int | None = None) -> GpuProduct:
    """The catalog entry for a ``nvidia.com/gpu.product`` label.

    The memory label, when present, wins over the catalog (MIG slices and variants differ). An
    unknown product is treated as a PCIe card with bandwidth and speed proportional to its memory,
    so it is usable but never preferred over a known product of the same size.
    """
    for pattern, product in _CATALOG:
        if pattern.search(label):
            if memory_mib:
                return _with_memory(product, memory_mib * 1024**2)
            return product
    memory = (memory_mib or 16 * 1024) * 1024**2
    scale = memory / (24 * _GIB)
    return GpuProduct(label, memory, 0.3e12 * scale, 100e12 * scale, 1.0 * scale, Interconnect.PCIE)


def _with_memory(product: GpuProduct, memory_bytes: int) -> GpuProduct:
    if memory_bytes == product.memory_bytes:
        return product
    return GpuProduct(
        product.family,
        memory_bytes,
        product.memory_bandwidth,
        product.bf16_flops,
        product.cost_per_hour,
        product.interconnect,
    )


def _tokens(name: str) -> set[str]:
    return {t for t in re.split(r"[-_ ]+", name.upper()) if t and t not in {"NVIDIA", "TESLA"}}


def matches_gpu_type(wanted: str, product_label: str) -> bool:
    """Whether a user's ``gpuTypes`` entry names this product label.

    Every word of the wanted name must be a word of the label (case-insensitive), so ``H100``
    matches ``NVIDIA-H100-80GB-HBM3`` and ``A100-80GB`` matches ``NVIDIA-A100-SXM4-80GB``, but
    ``L4`` does not match ``NVIDIA-L40S``.
    """
    want = _tokens(wanted)
    return bool(want) and want <= _tokens(product_label)
