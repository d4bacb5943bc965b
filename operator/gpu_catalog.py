"""GPU facts for a node's product label, and how its GPUs are linked.

Datasheet figures (memory, bandwidth, matrix throughput, interconnect, relative cost) come from
the profiler's GPU catalog (``goodput.profiler.catalog``); this module adds what placement needs on
top: the interconnect kind a node label may state, its default per product, the link bandwidth a
tensor-parallel all-reduce sees, and matching users' ``gpuTypes`` names against product labels.
"""

from __future__ import annotations

import re
from dataclasses import replace
from enum import StrEnum

from goodput.profiler import catalog
from goodput.profiler.hardware import GPUType


class Interconnect(StrEnum):
    """How the GPUs of one node talk to each other (label ``goodput.dev/interconnect``)."""

    NVSWITCH = "nvswitch"
    NVLINK = "nvlink"
    PCIE = "pcie"


#: What a PCIe Gen4 x16 link carries per direction, bytes/s.
PCIE_BANDWIDTH = 32e9
#: Bandwidth between nodes (a 200 Gb/s NIC), bytes/s: what a pipeline stage boundary crosses.
NODE_NETWORK_BANDWIDTH = 25e9

# An unknown product is costed and timed as a PCIe card scaled from an L4 by its memory, so it is
# usable but never preferred over a catalogued GPU of the same size.
_REFERENCE_PCIE_CARD = "L4"


def gpu_for_label(product: str, memory_mib: int | None = None) -> GPUType:
    """The catalog GPU type of a ``nvidia.com/gpu.product`` label (the memory label wins)."""
    try:
        gpu = catalog.gpu(product)
    except KeyError:
        ref = catalog.gpu(_REFERENCE_PCIE_CARD)
        memory = (memory_mib or 16 * 1024) * 1024**2
        scale = memory / ref.memory_bytes
        return GPUType(
            name=product,
            memory_bytes=memory,
            memory_bandwidth_bytes_per_s=ref.memory_bandwidth_bytes_per_s * scale,
            bf16_dense_flops_per_s=ref.bf16_dense_flops_per_s * scale,
            interconnect=ref.interconnect,
            interconnect_bytes_per_s=ref.interconnect_bytes_per_s,
            relative_cost_per_hour=ref.relative_cost_per_hour * scale,
            products=(product,),
        )
    if memory_mib and memory_mib * 1024**2 != gpu.memory_bytes:
        return replace(gpu, memory_bytes=memory_mib * 1024**2)
    return gpu


def default_interconnect(gpu: GPUType) -> Interconnect:
    """NVLink GPUs come on NVSwitch baseboards (HGX) in servers; everything else is PCIe."""
    return Interconnect.NVSWITCH if gpu.interconnect.startswith("nvlink") else Interconnect.PCIE


def link_bandwidth(gpu: GPUType, interconnect: Interconnect) -> float:
    """Per-direction bandwidth of one GPU's links within its node, bytes/s."""
    if interconnect is Interconnect.PCIE:
        return min(gpu.interconnect_bytes_per_s, PCIE_BANDWIDTH)
    return gpu.interconnect_bytes_per_s


def _words(name: str) -> set[str]:
    return {t for t in re.split(r"[-_ ]+", name.upper()) if t and t not in {"NVIDIA", "TESLA"}}


def matches_gpu_type(wanted: str, product_label: str) -> bool:
    """Whether a user's ``gpuTypes`` entry names this product label.

    An exact label, or every dash-separated word of it (case-insensitive): ``H100`` matches
    ``NVIDIA-H100-80GB-HBM3`` and ``A100-80GB`` matches ``NVIDIA-A100-SXM4-80GB``, but ``L4``
    does not match ``NVIDIA-L40S``.
    """
    want = _words(wanted)
    return bool(want) and want <= _words(product_label)
