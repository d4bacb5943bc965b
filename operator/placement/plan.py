"""The solver's answer: where each replica runs, and why."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class StagePlacement:
    """One pipeline stage: a tensor-parallel group on one node, serving ``layers`` layers."""

    node: str
    gpus: int
    layers: int


@dataclass(frozen=True, slots=True)
class ReplicaPlacement:
    """One replica: a GPU type, a parallel shape, and the node of each pipeline stage."""

    replica: int
    product: str
    tensor: int
    pipeline: int
    stages: tuple[StagePlacement, ...]
    requests_per_second: float = 0.0  # predicted SLO capacity of this replica

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(s.node for s in self.stages)

    @property
    def gpus(self) -> int:
        return sum(s.gpus for s in self.stages)

    def to_status(self) -> dict[str, Any]:
        """The ``status.placement`` entry of this replica."""
        return {
            "replica": self.replica,
            "gpuProduct": self.product,
            "nodes": list(self.nodes),
            "gpus": self.gpus,
            "tensor": self.tensor,
            "pipeline": self.pipeline,
            "layers": [s.layers for s in self.stages],
        }


@dataclass(frozen=True, slots=True)
class DeploymentPlacement:
    """The decision for one deployment; ``reason`` is written to its Placed condition."""

    deployment: str
    placed: bool
    replicas: tuple[ReplicaPlacement, ...]
    reason: str
    desired_replicas: int = 0
    requests_per_second: float = 0.0  # summed SLO capacity of the placed replicas
    moved: tuple[int, ...] = ()  # replicas that left their previous nodes
    #: Why it is not placed, as a condition reason: ``NoMatchingGPUType``,
    #: ``InsufficientGPUMemory``, ``SLOUnattainable`` or ``InsufficientGPUs``; empty when placed.
    refusal: str = ""


@dataclass(frozen=True, slots=True)
class PlacementPlan:
    """Decisions for all deployments, by name, and the GPUs left free per node."""

    deployments: dict[str, DeploymentPlacement]
    free_gpus: dict[str, int] = field(default_factory=dict)

    def replicas(self, deployment: str) -> tuple[ReplicaPlacement, ...]:
        found = self.deployments.get(deployment)
        return found.replicas if found else ()
