"""The exact optimum on small fleets: a mixed-integer program over every node, by HiGHS.

Variables: how many replicas of each deployment, in each of its one-node shapes, each node runs
(integer), and the requests/s each deployment is served (continuous, at most its target rate).
Constraints: a node's GPUs, a deployment's minimum and maximum replicas. Objective: the fleet's
aggregate demand served, then (a small weight) GPUs used. Shapes and capacities are the solver's
own (``PlacementSolver.options``), so the optimum is over the same choices the solver has;
pipeline-parallel shapes are left out, and the benchmark's small instances give the solver none
either. Exact only on small instances: the program has deployments x nodes x shapes variables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_matrix

from goodput.operator.inventory import GpuNode
from goodput.operator.placement import (
    DeploymentPlacement,
    ModelDemand,
    PlacementPlan,
    PlacementSolver,
    ReplicaPlacement,
    StagePlacement,
)
from goodput.operator.placement.pools import group_pools, pool_key


@dataclass
class ExactOptimum:
    solver: PlacementSolver
    time_limit_s: float = 60.0
    name: str = "exact-milp"
    #: Relative MIP gap of each solve: how far the optimum may lie above the plan returned
    #: (HiGHS stops at 0.1 % or the time limit).
    gaps: list[float] = field(default_factory=list)

    def solve(self, nodes: Sequence[GpuNode], demands: Sequence[ModelDemand]) -> PlacementPlan:
        pools = group_pools(nodes)
        columns: list[tuple[int, GpuNode, int, float]] = []  # demand index, node, GPUs, rps
        for i, d in enumerate(demands):
            options, _ = self.solver.options(d, pools.values())
            for option in options:
                shapes = [(option.shape, option.requests_per_second), *option.fallbacks]
                for node in nodes:
                    if pool_key(node) != option.pool.key:
                        continue
                    for shape, rps in shapes:
                        if shape.pipeline == 1 and shape.tensor <= node.free:
                            columns.append((i, node, shape.tensor, rps))
        n_y, n_s = len(columns), len(demands)
        per_gpu = min((rps / g for _, _, g, rps in columns), default=1.0)
        cost = np.zeros(n_y + n_s)
        cost[:n_y] = [0.01 * per_gpu * g for _, _, g, _ in columns]
        cost[n_y:] = -1.0
        rows: list[int] = []
        cols: list[int] = []
        vals: list[float] = []
        lower: list[float] = []
        upper: list[float] = []
        node_row = {n.name: r for r, n in enumerate(nodes)}
        for j, (_, node, gpus, _) in enumerate(columns):
            rows.append(node_row[node.name])
            cols.append(j)
            vals.append(float(gpus))
        lower += [0.0] * len(nodes)
        upper += [float(n.free) for n in nodes]
        base = len(nodes)
        placeable = {i for i, _, _, _ in columns}
        for i, d in enumerate(demands):
            served_row, count_row = base + 2 * i, base + 2 * i + 1
            rows.append(served_row)
            cols.append(n_y + i)
            vals.append(1.0)
            for j, (k, _, _, rps) in enumerate(columns):
                if k == i:
                    rows += [served_row, count_row]
                    cols += [j, j]
                    vals += [-rps, 1.0]
            lower += [-np.inf, float(max(1, d.min_replicas)) if i in placeable else 0.0]
            upper += [0.0, float(max(d.max_replicas, d.min_replicas, 1))]
        matrix = coo_matrix((vals, (rows, cols)), shape=(len(lower), n_y + n_s)).tocsr()
        integrality = np.concatenate([np.ones(n_y), np.zeros(n_s)])
        bounds = Bounds(
            np.zeros(n_y + n_s),
            np.concatenate([np.full(n_y, np.inf), [d.target.target_rps or 0.0 for d in demands]]),
        )
        options = {"time_limit": self.time_limit_s, "mip_rel_gap": 1e-3}
        result = milp(cost, constraints=LinearConstraint(matrix, lower, upper),
                      integrality=integrality, bounds=bounds, options=options)  # fmt: skip
        if result.x is None:  # minimums cannot all be met: drop them (an upper bound still)
            lower = [0.0 if r >= base and (r - base) % 2 else v for r, v in enumerate(lower)]
            result = milp(cost, constraints=LinearConstraint(matrix, lower, upper),
                          integrality=integrality, bounds=bounds, options=options)  # fmt: skip
        self.gaps.append(float(getattr(result, "mip_gap", 0.0) or 0.0))
        replicas: dict[int, list[ReplicaPlacement]] = {i: [] for i in range(n_s)}
        free = {n.name: n.free for n in nodes}
        for j, (i, node, gpus, rps) in enumerate(columns):
            for _ in range(round(float(result.x[j]))):
                index = len(replicas[i])
                stage = StagePlacement(node.name, gpus, demands[i].model.layers)
                replicas[i].append(ReplicaPlacement(index, node.product, gpus, 1, (stage,), rps))
                free[node.name] -= gpus
        decisions = {
            d.name: DeploymentPlacement(
                d.name,
                len(replicas[i]) >= max(1, d.min_replicas),
                tuple(replicas[i]),
                "exact optimum",
                requests_per_second=sum(r.requests_per_second for r in replicas[i]),
            )
            for i, d in enumerate(demands)
        }
        return PlacementPlan(deployments=decisions, free_gpus=free)
