"""What placement looks like without Goodput's solver: the two baselines of the benchmark.

Both take parallelism the way users configure it for llm-d/KServe or a TP-only planner: tensor
parallelism = the smallest power of two whose GPUs hold weights plus the SLO's KV headroom,
counting GPUs but not node boundaries (a group bigger than a node is split over nodes, which is
the multi-node misconfiguration users report). Replicas = target rate / that shape's capacity.

- ``FirstFitDecreasing``: deployments by decreasing model size; each replica on the first node (in
  name order, any GPU type the preference allows) where its shape fits.
- ``LeastAllocatedSpread``: Kubernetes' default scoring. The user pins one GPU type (the first
  preference, else the type with most free GPUs that holds the model in one node); each pod goes
  to the node of that type with the most free GPUs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from goodput.operator.gpu_catalog import NODE_NETWORK_BANDWIDTH, Interconnect
from goodput.operator.inventory import GpuNode
from goodput.operator.placement import (
    DeploymentPlacement,
    ModelDemand,
    PlacementPlan,
    ReplicaPlacement,
    StagePlacement,
)
from goodput.operator.placement.capacity import ReplicaCapacity
from goodput.operator.placement.pools import GpuPool, group_pools, pool_key
from goodput.operator.placement.ranking import DemandReplicaCount
from goodput.operator.placement.shape import Shape, memory_plan

PoolKey = tuple[str, str, int]


def user_shape(demand: ModelDemand, pool: GpuPool) -> Shape | None:
    """Smallest power-of-two GPU count that holds the model, ignoring node boundaries."""
    if pool.allowed_by(demand.gpu_types) is None:
        return None
    degrees = [demand.tensor] if demand.tensor else [1, 2, 4, 8, 16, 32, 64]
    for tp in degrees:
        if demand.model.attention_heads % tp:
            continue
        shape = memory_plan(demand, pool, tp, 1)
        if shape is not None:
            return shape
    return None


def replica_capacity(
    capacity: ReplicaCapacity, demand: ModelDemand, pool: GpuPool, shape: Shape
) -> float:
    """SLO capacity by the same model Goodput uses; a TP group split over nodes all-reduces over
    the network between them."""
    if shape.tensor > pool.max_gpus_per_node:
        gpu = replace(
            pool.gpu, interconnect="network", interconnect_bytes_per_s=NODE_NETWORK_BANDWIDTH
        )
        pool = replace(pool, interconnect=Interconnect.PCIE, gpu=gpu)
    return capacity.requests_per_second(demand, pool, shape)


@dataclass
class _Fleet:
    nodes: list[GpuNode]
    free: dict[str, int] = field(default_factory=dict)
    pools: dict[PoolKey, GpuPool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.nodes = sorted(self.nodes, key=lambda n: n.name)
        self.free = {n.name: n.free for n in self.nodes}
        self.pools = group_pools(self.nodes)


def _stages(fleet: _Fleet, candidates: Sequence[GpuNode], tp: int) -> list[StagePlacement] | None:
    """A TP group on one node, or split in whole-node chunks over several when it is bigger."""
    node_gpus = candidates[0].gpus if candidates else 0
    if tp <= node_gpus:
        for node in candidates:
            if fleet.free[node.name] >= tp:
                return [StagePlacement(node.name, tp, 0)]
        return None
    chunks = [n for n in candidates if fleet.free[n.name] == n.gpus]
    need = -(-tp // node_gpus)
    if len(chunks) < need:
        return None
    return [StagePlacement(n.name, n.gpus, 0) for n in chunks[:need]]


def _plan(
    fleet: _Fleet, decisions: dict[str, DeploymentPlacement], demands: Sequence[ModelDemand]
) -> PlacementPlan:
    for d in demands:
        decisions.setdefault(d.name, DeploymentPlacement(d.name, False, (), "no GPU type fits"))
    return PlacementPlan(deployments=decisions, free_gpus=dict(fleet.free))


def _take(fleet: _Fleet, stages: list[StagePlacement]) -> None:
    for s in stages:
        fleet.free[s.node] -= s.gpus


@dataclass(frozen=True)
class FirstFitDecreasing:
    capacity: ReplicaCapacity
    name: str = "first-fit-decreasing"

    def solve(self, nodes: Sequence[GpuNode], demands: Sequence[ModelDemand]) -> PlacementPlan:
        fleet = _Fleet(list(nodes))
        counter = DemandReplicaCount()
        members: dict[PoolKey, list[GpuNode]] = {}
        for node in fleet.nodes:
            members.setdefault(pool_key(node), []).append(node)
        shapes: dict[tuple[str, PoolKey], Shape | None] = {}
        decisions: dict[str, DeploymentPlacement] = {}
        for d in sorted(demands, key=lambda d: (-d.model.weights_bytes, d.name)):
            for key, pool in fleet.pools.items():
                shapes[(d.name, key)] = user_shape(d, pool)
            replicas: list[ReplicaPlacement] = []
            desired = None
            while desired is None or len(replicas) < desired:
                placed = None
                split_tried: set[PoolKey] = set()
                for node in fleet.nodes:
                    key = pool_key(node)
                    shape = shapes[(d.name, key)]
                    if shape is None or fleet.free[node.name] == 0:
                        continue
                    if shape.tensor <= node.gpus:
                        if fleet.free[node.name] < shape.tensor:
                            continue
                        stages = [StagePlacement(node.name, shape.tensor, 0)]
                    else:
                        if key in split_tried:
                            continue
                        split_tried.add(key)
                        found = _stages(fleet, members[key], shape.tensor)
                        if found is None:
                            continue
                        stages = found
                    pool = fleet.pools[key]
                    rps = replica_capacity(self.capacity, d, pool, shape)
                    placed = ReplicaPlacement(
                        len(replicas), node.product, shape.tensor, 1, tuple(stages), rps
                    )
                    _take(fleet, stages)
                    if desired is None:
                        desired = counter.desired(d, rps)
                    break
                if placed is None:
                    break
                replicas.append(placed)
            ok = len(replicas) >= max(1, d.min_replicas)
            decisions[d.name] = DeploymentPlacement(
                d.name,
                ok,
                tuple(replicas),
                "first fit",
                desired_replicas=desired or 0,
                requests_per_second=sum(r.requests_per_second for r in replicas),
            )
        return _plan(fleet, decisions, demands)


@dataclass(frozen=True)
class LeastAllocatedSpread:
    capacity: ReplicaCapacity
    name: str = "k8s-least-allocated"

    def solve(self, nodes: Sequence[GpuNode], demands: Sequence[ModelDemand]) -> PlacementPlan:
        fleet = _Fleet(list(nodes))
        counter = DemandReplicaCount()
        members: dict[PoolKey, list[GpuNode]] = {}
        for node in fleet.nodes:
            members.setdefault(pool_key(node), []).append(node)
        decisions: dict[str, DeploymentPlacement] = {}
        # Pods arrive in creation order; the scheduler has no global view.
        for d in sorted(demands, key=lambda d: d.name):
            choice = self._user_choice(fleet, members, d)
            if choice is None:
                continue
            key, shape = choice
            pool = fleet.pools[key]
            rps = replica_capacity(self.capacity, d, pool, shape)
            desired = counter.desired(d, rps)
            replicas: list[ReplicaPlacement] = []
            for index in range(desired):
                ranked = sorted(members[key], key=lambda n: (-fleet.free[n.name], n.name))
                stages = _stages(fleet, ranked, shape.tensor)
                if stages is None:
                    break
                _take(fleet, stages)
                replicas.append(
                    ReplicaPlacement(index, pool.product, shape.tensor, 1, tuple(stages), rps)
                )
            decisions[d.name] = DeploymentPlacement(
                d.name,
                len(replicas) >= max(1, d.min_replicas),
                tuple(replicas),
                "least allocated",
                desired_replicas=desired,
                requests_per_second=rps * len(replicas),
            )
        return _plan(fleet, decisions, demands)

    @staticmethod
    def _user_choice(
        fleet: _Fleet, members: dict[PoolKey, list[GpuNode]], d: ModelDemand
    ) -> tuple[PoolKey, Shape] | None:
        fits = []
        for key, pool in fleet.pools.items():
            shape = user_shape(d, pool)
            rank = pool.allowed_by(d.gpu_types)
            if shape is None or rank is None:
                continue
            one_node = shape.tensor <= pool.max_gpus_per_node
            free = sum(fleet.free[n.name] for n in members[key])
            fits.append(((rank, not one_node, -free, key), key, shape))
        if not fits:
            return None
        _, key, shape = min(fits)
        return key, shape
