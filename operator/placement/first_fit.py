"""Placement for models the profiler's catalog does not know: the first preferred GPU type where
one replica fits by the memory estimate, no node packing.

Walk the user's ``gpuTypes`` in order (all products on the fleet when empty, largest memory
first) and take the first product on a schedulable node where one replica fits; the parallelism
is the user's, or else the smallest tensor degree (1, 2, 4, ...) within one node's GPUs
(pipeline 1). Replicas are not pinned: kube-scheduler picks their nodes of that product.
"""

from __future__ import annotations

from collections.abc import Sequence

from goodput.api.llmdeployment import LLMDeploymentSpec
from goodput.operator.gpu_catalog import matches_gpu_type
from goodput.operator.inventory import GpuNode
from goodput.operator.model_memory import ModelMemory
from goodput.operator.placement.selection import Placement, SelectionContext, Unplaceable


def _powers_of_two(limit: int) -> list[int]:
    out, n = [], 1
    while n <= limit:
        out.append(n)
        n *= 2
    return out


class FirstFitSelector:
    """The first preferred GPU product present on the fleet where one replica fits."""

    def __init__(self, memory: ModelMemory) -> None:
        self.memory = memory

    def _candidates(self, spec: LLMDeploymentSpec, nodes: Sequence[GpuNode]) -> list[str]:
        memory = {n.product: n.gpu.memory_bytes for n in nodes}
        products = sorted(memory, key=lambda p: (-memory[p], p))
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
        nodes: Sequence[GpuNode],
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
            memory = max(n.gpu.memory_bytes for n in of_product)
            for tensor, pipeline in self._shapes(spec, per_node):
                if tensor * pipeline > per_node:
                    reasons[product] = (
                        f"{product}: {tensor * pipeline} GPUs per replica, but its largest node "
                        f"has {per_node}"
                    )
                    continue
                fit = self.memory.fit(spec, memory, tensor, pipeline)
                if not fit.fits:
                    reasons[product] = (
                        f"{product} with tensor={tensor} pipeline={pipeline}: {fit.detail}"
                    )
                    continue
                return Placement(
                    gpu_product=product,
                    tensor=tensor,
                    pipeline=pipeline,
                    nodes=tuple(sorted(n.name for n in of_product)),
                    detail=fit.detail,
                    max_concurrency=fit.max_concurrency,
                    engine=fit.engine,
                )
        return Unplaceable(
            reason="InsufficientGPUMemory",
            message="no GPU type fits one replica: " + "; ".join(reasons.values()),
            retryable=False,
            tried=tuple(candidates),
        )
