"""Placement: which GPUs, what parallelism and how many replicas for each LLMDeployment."""

from goodput.operator.placement.demand import ModelDemand, ModelFacts, ServingTarget
from goodput.operator.placement.plan import (
    DeploymentPlacement,
    PlacementPlan,
    ReplicaPlacement,
    StagePlacement,
)
from goodput.operator.placement.solver import PlacementSolver

__all__ = [
    "DeploymentPlacement",
    "ModelDemand",
    "ModelFacts",
    "PlacementPlan",
    "PlacementSolver",
    "ReplicaPlacement",
    "ServingTarget",
    "StagePlacement",
]
