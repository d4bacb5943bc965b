"""How good a placement is, scored the same way for every contender.

The headline is the fleet's **aggregate demand served**: the requests/s served within the SLO,
summed over deployments, over the requests/s they ask for in total. A mean of per-deployment
served fractions is reported beside it, with the worst decile, but it is not the headline: it
counts a deployment asking for 1 req/s like one asking for 1,000, so it hides large deployments
going short.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from goodput.operator.inventory import GpuNode
from goodput.operator.placement import ModelDemand, PlacementPlan, PlacementSolver
from goodput.operator.placement.pools import group_pools, pool_key


def served_fractions(plan: PlacementPlan, demands: Sequence[ModelDemand]) -> list[float]:
    """min(capacity, target) / target per deployment that has a target rate."""
    out = []
    for d in demands:
        target = d.target.target_rps or 0.0
        if target > 0:
            placed = plan.deployments.get(d.name)
            rps = placed.requests_per_second if placed else 0.0
            out.append(min(rps, target) / target)
    return out


def score(
    plan: PlacementPlan,
    nodes: Sequence[GpuNode],
    demands: Sequence[ModelDemand],
    solver: PlacementSolver,
) -> dict[str, Any]:
    """Metrics of one plan.

    Idle GPUs: free GPUs that could hold one more replica of a deployment whose demand is not
    all served (below its target rate and its maximum replicas): on each node, the free GPUs in
    whole groups of the smallest one-node shape any such deployment has on that node's GPU type.
    Those are GPUs left idle while demand that fits them waits.
    """
    by_name = {n.name: n for n in nodes}
    used = sum(r.gpus for d in plan.deployments.values() for r in d.replicas)
    tp_crossing = 0
    pp_links_crossing = 0
    for d in plan.deployments.values():
        for r in d.replicas:
            if len(r.stages) > r.pipeline:  # a tensor group split over nodes
                tp_crossing += 1
            domains = [by_name[s.node].domain for s in r.stages]
            if len(r.stages) == r.pipeline:
                pp_links_crossing += sum(a != b for a, b in pairwise(domains))
    pools = group_pools(nodes)
    need: dict[tuple[str, str, int], int] = {}  # smallest one-node group unserved demand fits
    short = 0
    seen: set[tuple[object, ...]] = set()
    for d in demands:
        placed = plan.deployments.get(d.name)
        rps = placed.requests_per_second if placed else 0.0
        count = len(placed.replicas) if placed else 0
        target = d.target.target_rps or 0.0
        if count >= max(1, d.min_replicas) and (rps >= target * 0.999 or count >= d.max_replicas):
            continue
        short += 1
        sig = (d.model, d.target.ttft_s, d.target.tpot_s, d.target.concurrency, d.gpu_types,
               d.tensor, d.pipeline)  # fmt: skip
        if sig in seen:
            continue
        seen.add(sig)
        options, _ = solver.options(d, pools.values())
        for option in options:
            for shape in (option.shape, *(s for s, _ in option.fallbacks)):
                if shape.pipeline == 1:
                    key = option.pool.key
                    need[key] = min(need.get(key, 1 << 30), shape.tensor)
    idle = 0
    for name, free in plan.free_gpus.items():
        group = need.get(pool_key(by_name[name]))
        if group is not None and free >= group:
            idle += free // group * group
    fractions = served_fractions(plan, demands)
    target_rps = sum(d.target.target_rps or 0.0 for d in demands)
    served = sum(
        min(plan.deployments[d.name].requests_per_second, d.target.target_rps or 0.0)
        for d in demands
        if d.name in plan.deployments
    )
    worst = sorted(fractions)[: max(1, len(fractions) // 10)]
    replicas = sum(len(d.replicas) for d in plan.deployments.values())
    return {
        "deployments": len(demands),
        "deployments_short": short,
        "replicas": replicas,
        "replicas_missing_slo": sum(
            1 for d in plan.deployments.values() for r in d.replicas if r.requests_per_second <= 0
        ),
        "fleet_gpus": sum(n.gpus for n in nodes),
        "gpus_held_by_others": sum(n.allocated for n in nodes),
        "gpus_used": used,
        "idle_gpus": idle,
        "tp_groups_crossing_domains": tp_crossing,
        "pp_links_crossing_domains": pp_links_crossing,
        "target_rps": round(target_rps, 1),
        "slo_rps_served": round(served, 1),
        "demand_served_pct": round(100.0 * served / target_rps, 2) if target_rps else 0.0,
        "mean_served_fraction_pct": round(100.0 * sum(fractions) / max(1, len(fractions)), 2),
        "worst_decile_served_fraction_pct": round(100.0 * sum(worst) / len(worst), 2)
        if fractions
        else 0.0,
        "slo_rps_per_gpu": round(served / used, 3) if used else 0.0,
    }
