"""The reconciler's placement seam: what it asks (``GPUSelector.select``) and gets back.

``SolverSelector`` (``selector.py``) answers with the placement solver for models the profiler's
catalog knows; ``FirstFitSelector`` (``first_fit.py``) for the rest. Both read the fleet as
``inventory.GpuNode``: one node model, one parser, one GPU-name matcher
(``gpu_catalog.matches_gpu_type``). The reconciler only sees ``Placement`` or ``Unplaceable``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from goodput.api.llmdeployment import LLMDeploymentSpec
from goodput.operator.inventory import GpuNode
from goodput.profiler.memory import VllmFlags


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
        nodes: Sequence[GpuNode],
        context: SelectionContext | None = None,
    ) -> Placement | Unplaceable: ...
