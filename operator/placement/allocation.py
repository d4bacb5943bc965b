"""How much of each deployment's unserved demand each GPU pool should take: the fleet's view.

Placing deployments one after another lets whoever comes first take the GPUs that another could
use better (a model that fits only H100s starves while a small model that runs well on L4s too
fills the H100s). ``PoolShareLP`` decides the split for all deployments at once, as a linear
program over pools rather than nodes (HiGHS via ``scipy.optimize.linprog``, well under a second
for 1,000 deployments): maximise the demand served within the SLO, priority class by priority
class (a higher class is never made to go short for a lower one), then use as few GPUs as that
allows. Node boundaries enter as capacity per tensor-group size (how many groups of ``t`` GPUs
the pool's free nodes hold), so the split is one the nodes can nearly realise; the solver then
rounds it down to whole replicas on real nodes and fills what rounding left.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy.optimize import linprog
from scipy.sparse import coo_matrix

PoolKey = tuple[str, str, int]


@dataclass(frozen=True, slots=True)
class ReplicaChoice:
    """One way to add a replica of a deployment: a pool, its shape's size, its SLO capacity.
    A claim lists its choices best-ranked first."""

    pool: PoolKey
    tensor: int  # GPUs per node (one tensor-parallel group)
    gpus: int  # tensor x pipeline
    requests_per_second: float


@dataclass(frozen=True, slots=True)
class Claim:
    """What one deployment still asks of the fleet."""

    name: str
    unserved: float  # requests/s of its demand no placed replica serves yet
    replicas_left: int  # replicas it may still add before its maximum
    priority: int  # higher goes short last
    choices: tuple[ReplicaChoice, ...]
    minimum: int = 0  # replicas it still needs to reach its minimum


@dataclass(frozen=True, slots=True)
class PoolRoom:
    """Free capacity of one pool: GPUs, and how many groups of each size its nodes hold."""

    free_gpus: int
    #: tensor-group size -> GPUs in whole groups of that size (sum over nodes of free // t * t).
    groups: Mapping[int, int]


class DemandAllocation(Protocol):
    """Judges how many replicas (fractional) each deployment should get on each pool."""

    def allocate(
        self, claims: Sequence[Claim], room: Mapping[PoolKey, PoolRoom]
    ) -> dict[tuple[str, int], float]:
        """(deployment, index into its choices) -> replicas; absent means none."""
        ...


@dataclass(frozen=True, slots=True)
class PoolShareLP:
    """Minimum replicas, then aggregate demand served, each class by class from the highest
    priority (what one class was given is kept while the next is decided), then fewest GPUs.

    ``gpu_penalty`` is the weight of one GPU against one request/s served, as a share of the
    smallest capacity per GPU on offer: small enough that any GPU which serves demand is worth
    using, large enough that none is used for nothing.
    """

    gpu_penalty: float = 0.01

    def allocate(
        self, claims: Sequence[Claim], room: Mapping[PoolKey, PoolRoom]
    ) -> dict[tuple[str, int], float]:
        live = [
            c
            for c in claims
            if c.choices and c.replicas_left > 0 and (c.unserved > 0 or c.minimum > 0)
        ]
        variables = [(ci, k) for ci, c in enumerate(live) for k in range(len(c.choices))]
        if not variables:
            return {}
        n_x, n_s = len(variables), len(live)
        per_gpu = min(
            (ch.requests_per_second / ch.gpus for c in live for ch in c.choices if ch.gpus > 0),
            default=1.0,
        )
        rows: list[int] = []
        cols: list[int] = []
        vals: list[float] = []
        bounds: list[float] = []

        def row(entries: list[tuple[int, float]], bound: float) -> None:
            r = len(bounds)
            for col, value in entries:
                rows.append(r)
                cols.append(col)
                vals.append(value)
            bounds.append(bound)

        by_claim: list[list[int]] = [[] for _ in live]
        for j, (ci, _) in enumerate(variables):
            by_claim[ci].append(j)
        for ci, claim in enumerate(live):
            # served <= capacity of its replicas; minimum met <= its replicas; replicas <= what
            # its maximum allows
            row(
                [(n_x + ci, 1.0)]
                + [(j, -claim.choices[variables[j][1]].requests_per_second) for j in by_claim[ci]],
                0.0,
            )
            row([(n_x + n_s + ci, 1.0)] + [(j, -1.0) for j in by_claim[ci]], 0.0)
            row([(j, 1.0) for j in by_claim[ci]], float(claim.replicas_left))
        for key, pool in room.items():
            on_pool = [
                (j, live[ci].choices[k])
                for j, (ci, k) in enumerate(variables)
                if live[ci].choices[k].pool == key
            ]
            if not on_pool:
                continue
            row([(j, float(ch.gpus)) for j, ch in on_pool], float(pool.free_gpus))
            for size in sorted({ch.tensor for _, ch in on_pool}):
                row(
                    [(j, float(ch.gpus)) for j, ch in on_pool if ch.tensor >= size],
                    float(pool.groups.get(size, 0)),
                )
        x_bounds = [(0.0, float(live[ci].replicas_left)) for ci, _ in variables]
        goal_bounds = [(0.0, c.unserved) for c in live] + [(0.0, float(c.minimum)) for c in live]
        # Among equal uses of GPUs, the claim's own ranking (user preference, cost) decides.
        gpu_cost = np.array(
            [
                self.gpu_penalty * per_gpu * (live[ci].choices[k].gpus + 1e-3 * k)
                for ci, k in variables
            ]
        )
        matrix = coo_matrix((vals, (rows, cols)), shape=(len(bounds), n_x + 2 * n_s)).tocsr()
        levels = sorted({c.priority for c in live}, reverse=True)
        x: np.ndarray | None = None
        # Minimums of every class before any demand, as placing one at a time did.
        for offset in (n_s, 0):
            for level in levels:
                goal = [ci for ci, c in enumerate(live) if c.priority == level]
                weights = np.zeros(n_x + 2 * n_s)
                weights[:n_x] = gpu_cost
                weights[[n_x + offset + ci for ci in goal]] = -1.0
                result = linprog(
                    weights,
                    A_ub=matrix,
                    b_ub=np.array(bounds),
                    bounds=x_bounds + goal_bounds,
                    method="highs",
                )
                if result.status != 0:
                    break
                x = result.x
                for ci in goal:  # keep what this class was given while the next is decided
                    low, high = goal_bounds[offset + ci]
                    got = float(result.x[n_x + offset + ci])
                    goal_bounds[offset + ci] = (min(high, max(low, got * (1 - 1e-6))), high)
        if x is None:
            return {}
        return {
            (live[ci].name, k): float(x[j])
            for j, (ci, k) in enumerate(variables)
            if x[j] > 1e-6 and math.isfinite(float(x[j]))
        }
