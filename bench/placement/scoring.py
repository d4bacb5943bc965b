"""How good a placement is: GPUs used, stranded GPUs, domain crossings, SLO capacity per GPU."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from goodput.operator.inventory import GpuNode
from goodput.operator.placement import ModelDemand, PlacementPlan, PlacementSolver
from goodput.operator.placement.pools import group_pools, pool_key
from goodput.operator.placement.ranking import DemandReplicaCount


def score(
    plan: PlacementPlan,
    nodes: Sequence[GpuNode],
    demands: Sequence[ModelDemand],
    solver: PlacementSolver,
) -> dict[str, Any]:
    """Metrics of one plan, computed the same way for every contender.

    A deployment is pending while it has fewer than its minimum replicas, or less SLO capacity
    than its target rate and fewer than its maximum replicas. Stranded GPUs: free GPUs of a type
    on which some pending deployment can meet its SLO, on nodes whose free count is too small for
    that deployment's smallest one-node shape although an empty node of the type would hold it
    (lost to fragmentation). Idle GPUs: free GPUs of types no pending deployment can use at all
    (its preference excludes them, its SLO cannot be met there, or nothing is pending).
    """
    by_name = {n.name: n for n in nodes}
    fleet_gpus = sum(n.gpus for n in nodes)
    foreign = sum(n.allocated for n in nodes)
    used = sum(r.gpus for d in plan.deployments.values() for r in d.replicas)
    crossing = 0
    cross_rack_links = 0
    tp_groups = 0
    for d in plan.deployments.values():
        for r in d.replicas:
            tp_groups += r.pipeline
            if len(r.stages) > r.pipeline:  # a tensor group split over nodes
                crossing += 1
            racks = [(by_name[s.node].zone, by_name[s.node].rack) for s in r.stages]
            cross_rack_links += sum(a != b for a, b in pairwise(racks))
    demand_by_name = {d.name: d for d in demands}
    pending = [
        demand_by_name[name]
        for name, d in plan.deployments.items()
        if len(d.replicas) < max(1, demand_by_name[name].min_replicas)
        or (
            d.requests_per_second < (demand_by_name[name].target.target_rps or 0.0) * 0.999
            and len(d.replicas) < demand_by_name[name].max_replicas
        )
    ]
    pools = group_pools(nodes)
    threshold: dict[tuple[str, str, int], int] = {}  # smallest one-node group a pending one needs
    seen: set[tuple[object, ...]] = set()
    for d in pending:
        sig = (d.model, d.target.concurrency, d.target.tpot_s, d.target.ttft_s, d.gpu_types)
        if sig in seen:
            continue
        seen.add(sig)
        options, _ = solver.options(d, pools.values())
        for option in options:
            if option.shape.pipeline == 1:
                key = option.pool.key
                threshold[key] = min(threshold.get(key, 1 << 30), option.shape.tensor)
    stranded = 0
    idle = 0
    partial_nodes = 0
    for name, free in plan.free_gpus.items():
        node = by_name[name]
        if 0 < free < node.gpus:
            partial_nodes += 1
        need = threshold.get(pool_key(node))
        if need is None:
            idle += free
        elif free < need <= node.gpus:
            stranded += free
    slo_rps = 0.0
    target_rps = 0.0
    served_fractions = []
    ideal_gpus = 0.0  # GPUs the served demand would take at each model's best rps per GPU
    wanted_gpus = 0
    ideal_cost = 0.0  # GPU cost the served demand would take at each model's best rps per cost
    counter = DemandReplicaCount()
    best: dict[tuple[object, ...], tuple[float, int, float]] = {}
    for name, d in plan.deployments.items():
        demand = demand_by_name[name]
        target = demand.target.target_rps or 0.0
        if not target:
            continue
        sig = (demand.model, demand.target, demand.gpu_types, demand.tensor)
        if sig not in best:
            options, _ = solver.options(demand, pools.values())
            per_gpu = max((o.requests_per_second / o.shape.gpus for o in options), default=0.0)
            per_cost = max((o.capacity_per_cost for o in options), default=0.0)
            top = options[0] if options else None
            best[sig] = (
                per_gpu,
                counter.desired(demand, top.requests_per_second) * top.shape.gpus if top else 0,
                per_cost,
            )
        per_gpu, wanted, per_cost = best[sig]
        served = min(d.requests_per_second, target)
        target_rps += target
        slo_rps += served
        served_fractions.append(served / target)
        wanted_gpus += wanted
        if per_gpu > 0:
            ideal_gpus += served / per_gpu
            ideal_cost += served / per_cost
    replicas = sum(len(d.replicas) for d in plan.deployments.values())
    cost = sum(
        s.gpus * by_name[s.node].gpu.relative_cost_per_hour
        for d in plan.deployments.values()
        for r in d.replicas
        for s in r.stages
    )
    infeasible = sum(
        1 for d in plan.deployments.values() for r in d.replicas if r.requests_per_second <= 0
    )
    return {
        "deployments": len(demands),
        "deployments_placed": sum(d.placed for d in plan.deployments.values()),
        "deployments_not_pending": len(demands) - len(pending),
        "replicas": replicas,
        "replicas_missing_slo": infeasible,
        "fleet_gpus": fleet_gpus,
        "gpus_held_by_others": foreign,
        "gpus_used": used,
        "gpus_free": sum(plan.free_gpus.values()),
        "stranded_gpus": stranded,
        "stranded_pct": round(100.0 * stranded / fleet_gpus, 2),
        "idle_gpus": idle,
        "partially_used_nodes": partial_nodes,
        "tp_groups": tp_groups,
        "tp_groups_crossing_domains": crossing,
        "pipeline_links_across_racks": cross_rack_links,
        "target_rps": round(target_rps, 1),
        "slo_rps_served": round(slo_rps, 1),
        "demand_served_pct": round(100.0 * slo_rps / target_rps, 2) if target_rps else 0.0,
        "slo_rps_per_gpu": round(slo_rps / used, 3) if used else 0.0,
        "mean_demand_served_pct": round(
            100.0 * sum(served_fractions) / max(1, len(served_fractions)), 2
        ),
        # 1.0: every GPU used serves its model's SLO traffic at the best rate any GPU type and
        # shape of the fleet could give it; excess replicas and slow choices lower it.
        "slo_efficiency": round(ideal_gpus / used, 3) if used else 0.0,
        "slo_cost_efficiency": round(ideal_cost / cost, 3) if cost else 0.0,
        "gpu_cost_per_hour_h100_units": round(cost, 1),
        "gpus_wanted_at_best_choice": wanted_gpus,
    }
