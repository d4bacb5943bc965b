"""Choosing among GPU types, and how many replicas a deployment needs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from goodput.operator.placement.demand import ModelDemand
from goodput.operator.placement.pools import GpuPool
from goodput.operator.placement.shape import Shape


@dataclass(frozen=True, slots=True)
class PoolOption:
    """A GPU pool on which the deployment fits, with its shape and SLO capacity per replica."""

    pool: GpuPool
    shape: Shape
    requests_per_second: float
    preference: int  # position in the user's gpuTypes list; 0 when the list is empty
    #: Next feasible shapes on the same pool (and their capacity), tried when the preferred one
    #: finds no room, e.g. fewer, fuller pipeline stages when a zone lacks nodes for more.
    fallbacks: tuple[tuple[Shape, float], ...] = ()

    @property
    def capacity_per_cost(self) -> float:
        """Requests per second within the SLO per unit of GPU-hour cost (H100 = 1)."""
        return self.requests_per_second / (self.shape.gpus * self.pool.gpu.relative_cost_per_hour)


class PoolRanking(Protocol):
    """Judges the order in which GPU types are tried for a deployment."""

    def rank(self, demand: ModelDemand, options: Sequence[PoolOption]) -> list[PoolOption]: ...


@dataclass(frozen=True, slots=True)
class CapacityPerCost:
    """The user's preference order first; within it (or with no list) most capacity per cost."""

    def rank(self, demand: ModelDemand, options: Sequence[PoolOption]) -> list[PoolOption]:
        return sorted(options, key=lambda o: (o.preference, -o.capacity_per_cost, o.pool.key))


class ReplicaCount(Protocol):
    """Judges whether a deployment needs another replica."""

    def needs_more(self, demand: ModelDemand, replicas: int, capacity: float) -> bool: ...

    def desired(self, demand: ModelDemand, per_replica: float) -> int: ...


@dataclass(frozen=True, slots=True)
class DemandReplicaCount:
    """Enough replicas for the target rate at the predicted per-replica capacity, in [min, max].

    Without a target rate the deployment runs ``min`` replicas; the autoscaler moves it later.
    """

    def needs_more(self, demand: ModelDemand, replicas: int, capacity: float) -> bool:
        if replicas < max(1, demand.min_replicas):
            return True
        target = demand.target.target_rps
        return replicas < demand.max_replicas and target is not None and capacity < target * 0.999

    def desired(self, demand: ModelDemand, per_replica: float) -> int:
        low, high = max(1, demand.min_replicas), max(1, demand.min_replicas, demand.max_replicas)
        target = demand.target.target_rps
        if target is None or per_replica <= 0:
            return low
        return min(high, max(low, math.ceil(target / per_replica - 1e-9)))
