"""Placement benchmark: Goodput's solver against first-fit-decreasing, a Kubernetes-like
least-allocated spread and, on small fleets, the exact optimum (a MILP).

One process, the same fleet and workload for every contender: mixed and homogeneous fleets, loads
0.5, 0.8 and 1.0 (demand over the fleet's free GPUs at each model's best choice; 1.0 is
oversubscribed), several fleet sizes (deployments = nodes / 2). Then small fleets (about 40
nodes, several seeds) where a MILP finds the optimum, and a run of single changes (a deployment
added, deleted or its demand changed) on the largest mixed fleet, through the solver's
incremental path. Writes ``bench/results/placement.json``, ``placement.png`` (aggregate demand
served by load and contender), ``placement_allocation_load*.png`` (the largest mixed fleet, node
by node) and ``placement_solve_time.png``.

    PYTHONPATH=.pypath .venv/bin/python bench/placement/run.py [--sizes 500 2000]
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from contenders import FirstFitDecreasing, LeastAllocatedSpread
from fleet import FLEETS, fleet_nodes, foreign_pods
from optimum import ExactOptimum
from plots import plot_allocation, plot_demand_served, plot_solve_time
from scoring import score
from workload import workload

from goodput.operator.inventory import GpuInventory, GpuNode
from goodput.operator.placement import ModelDemand, PlacementPlan, PlacementSolver
from goodput.operator.placement.profiler_capacity import ProfilerCapacity
from goodput.operator.placement.shape import SmallestFittingShape

RESULTS = Path(__file__).resolve().parents[1] / "results"
SUMMARY_KEYS = (
    "solve_s",
    "solve_cpu_s",
    "demand_served_pct",
    "mean_served_fraction_pct",
    "worst_decile_served_fraction_pct",
    "gpus_used",
    "idle_gpus",
    "tp_groups_crossing_domains",
    "pp_links_crossing_domains",
    "deployments_short",
    "replicas_missing_slo",
    "slo_rps_per_gpu",
)


class Contender(Protocol):
    name: str

    def solve(self, nodes: list[GpuNode], demands: list[ModelDemand]) -> PlacementPlan: ...


class Goodput:
    name = "goodput"

    def __init__(self, solver: PlacementSolver) -> None:
        self.solver = solver

    def solve(self, nodes: list[GpuNode], demands: list[ModelDemand]) -> PlacementPlan:
        return self.solver.solve(nodes, demands)


def fleet(size: int, kind: str) -> list[GpuNode]:
    """The fleet's nodes, 10 % of multi-GPU nodes partly held by other teams' pods."""
    objs = fleet_nodes(size, FLEETS[kind])
    return list(GpuInventory.from_objects(objs, foreign_pods(objs, 0.1, seed=size)).nodes())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--loads", type=float, nargs="+", default=[0.5, 0.8, 1.0])
    parser.add_argument("--fleets", nargs="+", default=list(FLEETS), choices=list(FLEETS))
    parser.add_argument("--small-nodes", type=int, default=40, help="nodes of the MILP fleets")
    parser.add_argument("--small-seeds", type=int, default=5)
    parser.add_argument("--changes", type=int, default=30, help="single changes, incremental")
    parser.add_argument("--repeat", type=int, default=2, help="solves per contender; min time")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    capacity = ProfilerCapacity()  # one capacity model (cached) for contenders and scoring
    solver = PlacementSolver(capacity=capacity)
    contenders: list[Contender] = [
        Goodput(solver),
        FirstFitDecreasing(capacity),
        LeastAllocatedSpread(capacity),
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    summaries: dict[str, dict[str, Any]] = {}
    for kind in args.fleets:
        for load in args.loads:
            nodes, plans = _sweep(kind, args.sizes, load, solver, contenders, runs, args.repeat)
            if kind == "mixed":
                tag = f"{load:g}".replace(".", "")
                at = [r for r in runs if r["load"] == load and r["fleet"] == kind]
                plot_allocation(nodes, plans, at, args.out / f"placement_allocation_load{tag}.png")
        summaries[kind] = {
            f"load {load:g}": _summary(
                [r for r in runs if r["load"] == load and r["fleet"] == kind]
            )
            for load in args.loads
        }
    small = _small_instances(args, capacity)
    incremental = {
        f"load {load:g}": _incremental(solver, max(args.sizes), load, args.changes)
        for load in (0.5, 0.8)
    }
    result = {
        "benchmark": "placement",
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or "?"},
        "headline": "demand_served_pct: requests/s served within the SLO summed over deployments"
        " / requests/s asked for in total (not a mean of per-deployment fractions)",
        "runs": runs,
        "summary": summaries.get("mixed", next(iter(summaries.values()))),
        "summary_homogeneous": summaries.get("homogeneous", {}),
        "optimum": small,
        "incremental": incremental,
    }
    (args.out / "placement.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_demand_served(result, args.out / "placement.png")
    plot_solve_time(
        [r for r in runs if r["fleet"] == "mixed"], args.out / "placement_solve_time.png"
    )
    print(json.dumps({k: result[k] for k in ("summary", "optimum", "incremental")}, indent=1))


def _sweep(
    kind: str,
    sizes: list[int],
    load: float,
    solver: PlacementSolver,
    contenders: list[Contender],
    runs: list[dict[str, Any]],
    repeat: int,
) -> tuple[list[GpuNode], dict[str, PlacementPlan]]:
    """Every contender on every fleet size at one load; the largest fleet's plans are returned."""
    largest: tuple[list[GpuNode], dict[str, PlacementPlan]] | None = None
    for size in sizes:
        nodes = fleet(size, kind)
        # Generating the workload computes every model's capacity profile (the profiler's model,
        # cached): the solves below are timed warm, as the operator's are after profiling.
        demands = workload(size // 2, nodes, solver, load=load, seed=size)
        plans: dict[str, PlacementPlan] = {}
        for contender in contenders:
            plan, elapsed, cpu = _timed(contender, nodes, demands, repeat)
            plans[contender.name] = plan
            row = {"fleet": kind, "contender": contender.name, "load": load,
                   "nodes": len(nodes), "solve_s": round(elapsed, 3), "solve_cpu_s": round(cpu, 3),
                   **score(plan, nodes, demands, solver)}  # fmt: skip
            runs.append(row)
            print(json.dumps(row), flush=True)
        largest = (nodes, plans)
    assert largest is not None
    return largest


def _timed(
    contender: Contender, nodes: list[GpuNode], demands: list[ModelDemand], repeat: int
) -> tuple[PlacementPlan, float, float]:
    """The plan, and the least wall and CPU seconds of ``repeat`` solves (the machine is
    shared: wall time includes waiting for a core, CPU time does not)."""
    times, cpu = [], []
    for _ in range(repeat):
        started, used = time.perf_counter(), time.process_time()
        plan = contender.solve(nodes, demands)
        times.append(time.perf_counter() - started)
        cpu.append(time.process_time() - used)
    return plan, min(times), min(cpu)


def _summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """At the largest fleet: each contender's headline metrics."""
    top = max(r["nodes"] for r in runs)
    at = {r["contender"]: r for r in runs if r["nodes"] == top}
    out: dict[str, Any] = {"nodes": top, "deployments": at["goodput"]["deployments"]}
    for name, row in at.items():
        out[name] = {k: row[k] for k in SUMMARY_KEYS}
    best = max(row["demand_served_pct"] for name, row in at.items() if name != "goodput")
    out["goodput"]["points_over_best_baseline"] = round(
        at["goodput"]["demand_served_pct"] - best, 2
    )
    return out


def _small_instances(args: argparse.Namespace, capacity: ProfilerCapacity) -> dict[str, Any]:
    """Every contender and the exact optimum on small fleets, one-node shapes only (the MILP
    has no pipeline stages, so neither does the solver here)."""
    solver = PlacementSolver(capacity=capacity, shapes=SmallestFittingShape(max_pipeline=1))
    exact = ExactOptimum(solver)
    contenders: list[Contender] = [
        Goodput(solver),
        FirstFitDecreasing(capacity),
        LeastAllocatedSpread(capacity),
        exact,
    ]
    rows: list[dict[str, Any]] = []
    for kind in args.fleets:
        nodes = fleet(args.small_nodes, kind)
        for load in args.loads:
            for seed in range(args.small_seeds):
                demands = workload(len(nodes) // 2, nodes, solver, load=load,
                                   seed=1000 + seed, placeable_only=True)  # fmt: skip
                scored = {}
                for contender in contenders:
                    plan, elapsed, _ = _timed(contender, nodes, demands, 1)
                    scored[contender.name] = (score(plan, nodes, demands, solver), elapsed)
                best = scored[exact.name][0]["slo_rps_served"]
                for name, (row, elapsed) in scored.items():
                    rows.append({"fleet": kind, "load": load, "seed": seed, "contender": name,
                                 "nodes": len(nodes), "solve_s": round(elapsed, 3),
                                 "pct_of_optimum": round(100 * row["slo_rps_served"] / best, 2)
                                 if best else 100.0, **row})  # fmt: skip
                rows[-1]["mip_gap"] = exact.gaps[-1]
                shown = {n: rows[i - len(scored)]["pct_of_optimum"] for i, n in enumerate(scored)}
                print(json.dumps({"fleet": kind, "load": load, "seed": seed, **shown}), flush=True)
    summary: dict[str, Any] = {"nodes": args.small_nodes, "seeds": args.small_seeds}
    for kind in args.fleets:
        for load in args.loads:
            at = [r for r in rows if r["fleet"] == kind and r["load"] == load]
            summary[f"{kind} load {load:g}"] = {
                name: {
                    "demand_served_pct": round(
                        statistics.mean(r["demand_served_pct"] for r in mine), 2
                    ),
                    "pct_of_optimum_mean": round(
                        statistics.mean(r["pct_of_optimum"] for r in mine), 2
                    ),
                    "pct_of_optimum_min": min(r["pct_of_optimum"] for r in mine),
                    "idle_gpus_max": max(r["idle_gpus"] for r in mine),
                    "solve_s_max": max(r["solve_s"] for r in mine),
                }
                for name in dict.fromkeys(r["contender"] for r in at)
                if (mine := [r for r in at if r["contender"] == name])
            }
    summary["max_mip_gap"] = max(exact.gaps, default=0.0)
    return {"summary": summary, "runs": rows}


def _incremental(solver: PlacementSolver, size: int, load: float, count: int) -> dict[str, Any]:
    """Single changes on the largest mixed fleet, each solved by the incremental path from the
    plan before it: replicas moved (of any deployment, the changed one's scale-down aside) and
    solve time per change. At load 0.8 the fleet is full (a new deployment finds no room); at
    0.5 there is room to add and grow."""
    nodes = fleet(size, "mixed")
    demands = workload(size // 2, nodes, solver, load=load, seed=size)
    extra = workload(count, nodes, solver, load=load, seed=size + 1)
    started = time.perf_counter()
    plan = solver.solve(nodes, demands)
    global_s = time.perf_counter() - started
    rng = random.Random(size)
    current = list(demands)
    changes = []
    for c in range(count):
        kind = ("add", "delete", "demand")[c % 3]
        if kind == "add":
            new = replace(extra[c], name=f"new/{extra[c].name.split('/')[1]}")
            current.append(new)
            changed = new.name
        elif kind == "delete":
            changed = current.pop(rng.randrange(len(current))).name
        else:
            i = rng.randrange(len(current))
            d = current[i]
            factor = rng.choice((0.5, 2.0))
            rate = (d.target.target_rps or 0.0) * factor or None
            current[i] = replace(d, target=replace(d.target, target_rps=rate))
            changed = d.name
        names = {d.name for d in current}
        previous = {k: d.replicas for k, d in plan.deployments.items() if k in names}
        started, cpu = time.perf_counter(), time.process_time()
        new_plan = solver.change(nodes, current, plan, changed)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        moved = 0
        for name, old in previous.items():
            now = {r.replica: r.stages for r in new_plan.deployments[name].replicas}
            for r in old:
                # moved: on other nodes now, or gone without being the change's scale-down
                gone = r.replica not in now and name != changed
                if gone or (r.replica in now and now[r.replica] != r.stages):
                    moved += 1
        after = new_plan.deployments.get(changed)
        changes.append({"change": kind, "moved": moved, "solve_ms": round(elapsed * 1000, 1),
                        "cpu_ms": round(cpu * 1000, 1),
                        "replicas_after": len(after.replicas) if after else 0})  # fmt: skip
        plan = new_plan
    times = sorted(c["solve_ms"] for c in changes)
    cpu_times = sorted(c["cpu_ms"] for c in changes)
    return {
        "nodes": len(nodes),
        "deployments": len(demands),
        "load": load,
        "global_solve_s": round(global_s, 3),
        "changes_placed_replicas": sum(
            1 for c in changes if c["change"] != "delete" and c["replicas_after"] > 0
        ),
        "changes": len(changes),
        "replicas_moved_max": max(c["moved"] for c in changes),
        "replicas_moved_mean": round(statistics.mean(c["moved"] for c in changes), 2),
        "solve_ms_p50": times[len(times) // 2],
        "solve_ms_max": times[-1],
        # wall time includes waiting for a core on the shared machine; CPU time does not
        "cpu_ms_p50": cpu_times[len(cpu_times) // 2],
        "cpu_ms_max": cpu_times[-1],
        "per_change": changes,
    }


if __name__ == "__main__":
    main()
