"""Which GPU type, and how many GPUs per replica, an LLMDeployment runs on.

A seam: ``GPUSelector`` is the interface the reconcile loop calls, ``FirstFitSelector`` the first
rule behind it. The placement solver (``goodput.operator.placement``) will implement the same
interface with node-level packing; the handlers only see ``Placement`` or ``Unplaceable``.

The first rule: walk the user's ``gpuTypes`` in order (all products on the cluster when empty,
largest memory first), and take the first product present on a schedulable node where one
replica fits; the parallelism is the user's, or else the smallest tensor degree (1, 2, 4, ...)
that fits within one node's GPUs (pipeline 1: a replica stays on one node for now).

Node facts read (labels as NVIDIA GPU feature discovery writes them):
``nvidia.com/gpu.product`` (product name), ``nvidia.com/gpu.memory`` (MiB per GPU; else the
profiler's GPU catalog), ``status.allocatable["nvidia.com/gpu"]`` (GPUs per node), and
``spec.unschedulable`` (cordoned nodes are skipped).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from goodput.api.llmdeployment import LLMDeploymentSpec
from goodput.operator.model_memory import ModelMemory
from goodput.profiler import catalog
from goodput.profiler.memory import VllmFlags

GPU_RESOURCE = "nvidia.com/gpu"
LABEL_PRODUCT = "nvidia.com/gpu.product"
LABEL_MEMORY = "nvidia.com/gpu.memory"
MIB = 1024**2


@dataclass(frozen=True)
class GPUNode:
    """A schedulable node with GPUs."""

    name: str
    product: str
    gpus: int
    memory_bytes: int | None  # per GPU; None when neither the label nor the catalog knows


def _quantity(value: Any) -> int:
    try:
        return int(str(value))
    except ValueError:
        return 0


def gpu_nodes(nodes: Iterable[Mapping[str, Any]]) -> list[GPUNode]:
    """The GPU nodes among Node objects as the API returns them (dicts)."""
    found = []
    for node in nodes:
        meta, spec, status = node.get("metadata", {}), node.get("spec") or {}, node.get("status")
        labels = meta.get("labels") or {}
        product = labels.get(LABEL_PRODUCT)
        gpus = _quantity(((status or {}).get("allocatable") or {}).get(GPU_RESOURCE, 0))
        if not product or gpus < 1 or spec.get("unschedulable"):
            continue
        memory: int | None = None
        if (mib := _quantity(labels.get(LABEL_MEMORY, 0))) > 0:
            memory = mib * MIB
        else:
            try:
                memory = catalog.gpu(product).memory_bytes
            except KeyError:
                memory = None
        found.append(GPUNode(meta["name"], product, gpus, memory))
    return found


def _tokens(name: str) -> set[str]:
    return {t for t in re.split(r"[-_ ]+", name.upper()) if t and t not in {"NVIDIA", "TESLA"}}


def matches_gpu_type(wanted: str, product: str) -> bool:
    """``H100`` matches ``NVIDIA-H100-80GB-HBM3``; ``A100-80GB`` matches ``NVIDIA-A100-SXM4-80GB``;
    ``L4`` does not match ``NVIDIA-L40S``: every word of the wanted name is a word of the label."""
    want = _tokens(wanted)
    return bool(want) and want <= _tokens(product)


@dataclass(frozen=True)
class Placement:
    """The outcome when a replica fits: one GPU product and a parallelism."""

    gpu_product: str
    tensor: int
    pipeline: int
    nodes: tuple[str, ...]  # nodes of that product, for the status
    detail: str = ""
    #: ``(replica id, node)`` for every replica when the placement solver chose the nodes: each
    #: replica's pod may run only there. Empty: replicas ``0..replicas-1`` on any node of
    #: ``gpu_product``.
    replica_nodes: tuple[tuple[int, str], ...] = ()
    max_concurrency: int | None = None  # full-length sequences one replica's KV cache holds
    #: The memory model's engine settings for this shape (None: the model's size is unknown).
    engine: VllmFlags | None = None

    @property
    def gpus_per_replica(self) -> int:
        return self.tensor * self.pipeline


@dataclass(frozen=True)
class Unplaceable:
    """The outcome when nothing fits. ``retryable``: new nodes could change the answer."""

    reason: str  # CamelCase, for the Placed condition
    message: str
    retryable: bool
    tried: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class SelectionContext:
    """What a fleet-aware selector needs beyond the spec: which deployment, the raw Node
    objects (zones, racks, interconnect labels), and where its replicas run now."""

    deployment: str  # namespace/name
    node_objects: Sequence[Mapping[str, Any]] = ()
    placement: Sequence[Mapping[str, Any]] = ()  # status.placement
    gpu_type: str | None = None  # status.gpuType


class GPUSelector(Protocol):
    """Chooses where an LLMDeployment's replicas go."""

    def select(
        self,
        spec: LLMDeploymentSpec,
        nodes: Sequence[GPUNode],
        context: SelectionContext | None = None,
    ) -> Placement | Unplaceable: ...


def _powers_of_two(limit: int) -> list[int]:
    out, n = [], 1
    while n <= limit:
        out.append(n)
        n *= 2
    return out


class FirstFitSelector:
    """The first preferred GPU product present on the cluster where one replica fits."""

    def __init__(self, memory: ModelMemory) -> None:
        self.memory = memory

    def _candidates(self, spec: LLMDeploymentSpec, nodes: Sequence[GPUNode]) -> list[str]:
        products = sorted(
            {n.product for n in nodes},
            key=lambda p: (-max(n.memory_bytes or 0 for n in nodes if n.product == p), p),
        )
        if not spec.resources.gpu_types:
            return products
        ordered: list[str] = []
        for wanted in spec.resources.gpu_types:
            ordered += [p for p in products if matches_gpu_type(wanted, p) and p not in ordered]
        return ordered

    def _shapes(self, spec: LLMDeploymentSpec, per_node: int) -> list[tuple[int, int]]:
        par, total = spec.resources.parallelism, spec.resources.gpus_per_replica
        if par.tensor is not None and par.pipeline is not None:
            return [(par.tensor, par.pipeline)]
        if par.tensor is not None:
            return [(par.tensor, (total or par.tensor) // par.tensor)]
        if par.pipeline is not None:
            return [((total or par.pipeline) // par.pipeline, par.pipeline)]
        if total is not None:
            return [(total, 1)]
        return [(tp, 1) for tp in _powers_of_two(per_node)]

    def select(
        self,
        spec: LLMDeploymentSpec,
        nodes: Sequence[GPUNode],
        context: SelectionContext | None = None,
    ) -> Placement | Unplaceable:
        present = sorted({n.product for n in nodes})
        candidates = self._candidates(spec, nodes)
        if not candidates:
            wanted = ", ".join(spec.resources.gpu_types) or "any"
            return Unplaceable(
                reason="NoMatchingGPUType",
                message=(
                    f"no schedulable node offers GPU type {wanted}; the cluster has "
                    f"{', '.join(present) or 'no GPU nodes'}"
                ),
                retryable=True,
            )
        reasons: dict[str, str] = {}  # the last (largest) shape tried, per product
        for product in candidates:
            of_product = [n for n in nodes if n.product == product]
            per_node = max(n.gpus for n in of_product)
            memory = max((n.memory_bytes for n in of_product if n.memory_bytes), default=None)
            for tensor, pipeline in self._shapes(spec, per_node):
                if tensor * pipeline > per_node:
                    reasons[product] = (
                        f"{product}: {tensor * pipeline} GPUs per replica, but its largest node "
                        f"has {per_node}"
                    )
                    continue
                concurrency, engine = None, None
                if memory is None:
                    fit_detail = "GPU memory unknown"
                else:
                    fit = self.memory.fit(spec, memory, tensor, pipeline)
                    if not fit.fits:
                        reasons[product] = (
                            f"{product} with tensor={tensor} pipeline={pipeline}: {fit.detail}"
                        )
                        continue
                    fit_detail, concurrency, engine = fit.detail, fit.max_concurrency, fit.engine
                return Placement(
                    gpu_product=product,
                    tensor=tensor,
                    pipeline=pipeline,
                    nodes=tuple(sorted(n.name for n in of_product)),
                    detail=fit_detail,
                    max_concurrency=concurrency,
                    engine=engine,
                )
        return Unplaceable(
            reason="InsufficientGPUMemory",
            message="no GPU type fits one replica: " + "; ".join(reasons.values()),
            retryable=False,
            tried=tuple(candidates),
        )
