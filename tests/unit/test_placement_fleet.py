"""The fleet objective: aggregate demand served, priorities, no idle GPUs, incremental changes."""

from __future__ import annotations

from dataclasses import replace

from test_placement import TARGET, assert_within_capacity, demand, gpu_node

from goodput.operator.inventory import GpuNode
from goodput.operator.placement import ModelDemand, PlacementPlan, PlacementSolver
from goodput.operator.placement.pools import group_pools


def h100_and_l4() -> list[GpuNode]:
    return [gpu_node(f"h100-{i}") for i in range(2)] + [
        gpu_node(f"l4-{i}", "NVIDIA-L4", 4) for i in range(4)
    ]


def per_replica(nodes: list[GpuNode], d: ModelDemand) -> dict[str, float]:
    options, _ = PlacementSolver().options(d, group_pools(nodes).values())
    return {o.pool.product: o.requests_per_second for o in options}


def served(plan: PlacementPlan, demands: list[ModelDemand]) -> float:
    return sum(
        min(plan.deployments[d.name].requests_per_second, d.target.target_rps or 0.0)
        for d in demands
    )


def test_a_model_that_runs_anywhere_leaves_the_only_fitting_gpus_to_one_that_does_not() -> None:
    nodes = h100_and_l4()
    rates = per_replica(nodes, demand("x"))
    # The L4s serve all of one; the other needs every H100. Placed one at a time (or by served
    # demand per GPU alone) the first would take an H100, where it serves best.
    l4, h100 = rates["NVIDIA-L4"], rates["NVIDIA-H100-80GB-HBM3"]
    anywhere = demand("a-anywhere", target=replace(TARGET, target_rps=l4 * 16), max_replicas=64)
    h100_only = demand(
        "b-h100", gpu_types=("H100",), max_replicas=64, target=replace(TARGET, target_rps=h100 * 16)
    )
    demands = [anywhere, h100_only]
    plan = PlacementSolver().solve(nodes, demands)
    total = sum(d.target.target_rps or 0.0 for d in demands)
    assert served(plan, demands) >= 0.999 * total
    assert_within_capacity(plan, nodes)


def test_priority_decides_who_goes_short_not_names() -> None:
    nodes = [gpu_node(f"n{i}") for i in range(2)]
    rate = per_replica(nodes, demand("x"))["NVIDIA-H100-80GB-HBM3"]
    want = replace(TARGET, target_rps=rate * 12)
    low = demand("a-low", target=want, max_replicas=64)
    high = demand("z-high", target=want, max_replicas=64, priority=1)
    plan = PlacementSolver().solve(nodes, [low, high])
    assert plan.deployments["z-high"].requests_per_second >= 0.999 * rate * 12
    assert len(plan.deployments["a-low"].replicas) == 16 - 12
    swapped = PlacementSolver().solve(nodes, [replace(low, priority=1), replace(high, priority=0)])
    assert swapped.deployments["a-low"].requests_per_second >= 0.999 * rate * 12


def test_no_gpu_idles_while_demand_that_fits_it_waits() -> None:
    nodes = h100_and_l4()
    rates = per_replica(nodes, demand("x"))
    huge = replace(TARGET, target_rps=sum(rates.values()) * 100)
    plan = PlacementSolver().solve(nodes, [demand("hungry", target=huge, max_replicas=1000)])
    assert sum(plan.free_gpus.values()) == 0


def test_desired_replicas_are_demand_when_no_rate_is_given() -> None:
    nodes = [gpu_node(f"n{i}") for i in range(2)]
    plan = PlacementSolver().solve(nodes, [demand("x", desired_replicas=5, max_replicas=8)])
    assert len(plan.deployments["x"].replicas) == 5
    capped = PlacementSolver().solve(nodes, [demand("x", desired_replicas=5, max_replicas=3)])
    assert len(capped.deployments["x"].replicas) == 3


def test_one_change_decides_only_that_deployment_and_moves_at_most_one_replica() -> None:
    nodes = [gpu_node("a", gpus=8), gpu_node("b", gpus=8)]
    small = [demand(f"s{i}") for i in range(8)]
    half = [gpu_node("a", gpus=4), gpu_node("b", gpus=4)]
    before = PlacementSolver().solve(half, small)
    grown = [replace(d, target=replace(TARGET, target_rps=1e6), max_replicas=8) for d in small]
    plan = PlacementSolver().change(nodes, grown, before, "s0")
    for d in small[1:]:
        assert plan.deployments[d.name] == before.deployments[d.name]  # not grown: not decided
    assert len(plan.deployments["s0"].replicas) > 1
    assert_within_capacity(plan, nodes)
    # A tensor-8 minimum needs one node emptied of 4 small replicas: 1 move allowed, 4 needed.
    big = replace(demand("big", gpu_types=("H100",)), tensor=8)
    blocked = PlacementSolver().change(nodes, [*small, big], before, "big")
    assert not blocked.deployments["big"].placed
    assert sum(len(d.moved) for d in blocked.deployments.values()) == 0
    # One move is enough when a node holds a single small replica.
    one = PlacementSolver().solve([gpu_node("a", gpus=8)], [demand("s0")])
    pair = [gpu_node("a", gpus=8), gpu_node("b", gpus=1)]
    moved = PlacementSolver().change(pair, [demand("s0"), big], one, "big")
    assert moved.deployments["big"].placed and moved.deployments["s0"].moved == (0,)
    assert moved.deployments["s0"].replicas[0].nodes == ("b",)
    # A deletion frees its GPUs and decides nothing else.
    gone = PlacementSolver().change(nodes, small[1:], before, "s0")
    assert "s0" not in gone.deployments
    assert sum(gone.free_gpus.values()) == 16 - len(small[1:])  # 7 one-GPU replicas remain


def test_a_bigger_shape_when_the_maximum_replicas_bind() -> None:
    nodes = [gpu_node(f"n{i}") for i in range(2)]
    options, _ = PlacementSolver().options(demand("x"), group_pools(nodes).values())
    shapes = [(options[0].shape, options[0].requests_per_second), *options[0].fallbacks]
    (small, small_rps), (big, big_rps) = shapes[0], shapes[1]
    assert big.gpus > small.gpus and big_rps > small_rps
    want = replace(TARGET, target_rps=big_rps * 2)  # two of the bigger shape serve it all
    plan = PlacementSolver().solve(nodes, [demand("x", target=want, max_replicas=2)])
    assert plan.deployments["x"].requests_per_second >= 0.999 * big_rps * 2
