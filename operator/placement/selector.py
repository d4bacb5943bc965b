"""The placement solver behind the operator's ``GPUSelector`` seam.

Each LLMDeployment is solved on its own against the live inventory, with every other pod's GPUs
(other deployments' included) taken, and its current replicas as the previous plan, so a
reconcile never moves a replica that is still valid. Solves are serialised (kopf runs handlers
for different objects in parallel threads), and each placed solve reserves its GPUs in the
inventory before the next begins: a pod shows its GPUs only once bound, seconds later, and two
reconciles reading the inventory in that window would otherwise book the same GPUs.

Every replica's node is part of the answer (``Placement.replica_nodes``): the operator runs each
replica as its own Deployment pinned there.

An LLMDeployment runs one GPU type and one pod per replica, so a plan that mixes GPU types is
solved again on its first type, and a plan whose replica spans nodes (pipeline stages) is
reported, not applied, until multi-node serving exists. Models the profiler's catalog does not
know go to the fallback selector.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from goodput.api.llmdeployment import LLMDeploymentSpec
from goodput.operator.inventory import GpuInventory, GpuNode, ReplicaBooking
from goodput.operator.model_memory import ModelMemory
from goodput.operator.placement.demand import ModelDemand
from goodput.operator.placement.plan import DeploymentPlacement, ReplicaPlacement, StagePlacement
from goodput.operator.placement.selection import (
    GPUSelector,
    Placement,
    SelectionContext,
    Unplaceable,
)
from goodput.operator.placement.solver import PlacementSolver
from goodput.operator.placement.spec_demand import demand_from_spec

#: Refusals that new or freed nodes could cure (the operator retries them on node changes).
RETRYABLE = frozenset({"NoMatchingGPUType", "InsufficientGPUs"})


def previous_replicas(
    placement: Sequence[Mapping[str, Any]], gpu_type: str | None
) -> tuple[ReplicaPlacement, ...]:
    """``status.placement`` (one entry per running replica) as the solver's previous plan."""
    if not gpu_type:
        return ()
    out = []
    for entry in placement:
        nodes = [str(n) for n in entry.get("nodes") or ()]
        tensor, pipeline = int(entry.get("tensor", 1)), int(entry.get("pipeline", 1))
        if not nodes:
            continue
        stages = tuple(StagePlacement(n, tensor, 0) for n in nodes)
        index = int(entry.get("replica", 0))
        out.append(ReplicaPlacement(index, gpu_type, tensor, pipeline, stages))
    return tuple(out)


def _scaled_to_zero(placement: Placement) -> Placement:
    """The solver plans at least one replica (the shape it chooses, GPU type and parallelism,
    is that of a replica); scaled to zero, that shape is kept for the status but no replica is
    placed, reserved or given a Deployment."""
    return replace(placement, nodes=(), replica_nodes=(), detail="scaled to zero")


@dataclass
class SolverSelector:
    """A ``GPUSelector`` that places with ``PlacementSolver`` on the watched inventory."""

    fallback: GPUSelector
    inventory: GpuInventory | None = None
    solver: PlacementSolver = field(default_factory=PlacementSolver)
    memory: ModelMemory | None = None  # the engine's settings and maxConcurrency
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def select(
        self,
        spec: LLMDeploymentSpec,
        nodes: Sequence[GpuNode],
        context: SelectionContext | None = None,
    ) -> Placement | Unplaceable:
        demand = demand_from_spec(context.deployment, spec) if context else None
        if context is None or demand is None:
            return self.fallback.select(spec, nodes, context)
        with self._lock:
            outcome = self._select(spec, demand, context)
            if isinstance(outcome, Placement) and spec.replicas == 0:
                outcome = _scaled_to_zero(outcome)
            if isinstance(outcome, Placement) and self.inventory is not None:
                self.inventory.reserve(
                    context.deployment,
                    [
                        ReplicaBooking(replica, node, outcome.gpus_per_replica)
                        for replica, node in outcome.replica_nodes
                    ],
                )
        return outcome

    def _select(
        self, spec: LLMDeploymentSpec, demand: ModelDemand, context: SelectionContext
    ) -> Placement | Unplaceable:
        fleet = self._fleet(context)
        previous = previous_replicas(context.placement, context.gpu_type)
        decision = self._solve(fleet, demand, previous)
        products = list(dict.fromkeys(r.product for r in decision.replicas))
        if len(products) > 1:
            decision = self._solve(fleet, replace(demand, gpu_types=(products[0],)), previous)
        if not decision.placed:
            code = decision.refusal or "InsufficientGPUs"
            return Unplaceable(code, decision.reason, retryable=code in RETRYABLE)
        first = decision.replicas[0]
        if first.pipeline > 1:
            spans = ", ".join("+".join(r.nodes) for r in decision.replicas)
            return Unplaceable(
                "MultiNodeReplica",
                f"{decision.reason}; each replica needs pipeline {first.pipeline} across nodes"
                f" ({spans}), and multi-node serving is not available yet",
                retryable=False,
            )
        concurrency, engine = None, None
        if self.memory is not None:
            gpu_memory = next(n.gpu.memory_bytes for n in fleet if n.product == first.product)
            fit = self.memory.fit(spec, gpu_memory, first.tensor, first.pipeline)
            concurrency, engine = fit.max_concurrency, fit.engine
        return Placement(
            gpu_product=first.product,
            tensor=first.tensor,
            pipeline=first.pipeline,
            nodes=tuple(sorted({n for r in decision.replicas for n in r.nodes})),
            detail=decision.reason,
            replica_nodes=tuple((r.replica, r.nodes[0]) for r in decision.replicas),
            max_concurrency=concurrency,
            engine=engine,
        )

    def _fleet(self, context: SelectionContext) -> tuple[GpuNode, ...]:
        """Nodes from the reconciler's fresh listing (a watch may still be filling up at start),
        GPU holds of pods, replica Deployments and reservations from the watched inventory."""
        fleet = GpuInventory.from_objects(context.node_objects)
        if self.inventory is not None:
            fleet.adopt_holds(self.inventory)
        return fleet.nodes(owner=context.deployment)

    def _solve(
        self,
        fleet: Sequence[GpuNode],
        demand: ModelDemand,
        previous: tuple[ReplicaPlacement, ...],
    ) -> DeploymentPlacement:
        plan = self.solver.solve(fleet, [demand], {demand.name: previous})
        return plan.deployments[demand.name]
