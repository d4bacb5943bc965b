"""The placement solver: shapes, refusals, domains, spread, determinism and stability."""

from __future__ import annotations

import random
from dataclasses import replace
from typing import Any

import pytest

from goodput.operator.inventory import GpuInventory, GpuNode
from goodput.operator.placement import (
    ModelDemand,
    ModelFacts,
    PlacementPlan,
    PlacementSolver,
    ReplicaPlacement,
    ServingTarget,
)
from goodput.operator.placement.pools import group_pools
from goodput.operator.placement.shape import SmallestFittingShape, split_layers
from goodput.operator.placement.solver import MoveFewToUnblock


def facts(name: str, params: float, layers: int, hidden: int, heads: int) -> ModelFacts:
    head_dim = hidden // heads
    return ModelFacts(name, int(params * 2), int(params), layers, heads, 8, hidden,
                      2 * layers * 8 * head_dim * 2)  # fmt: skip


LLAMA_8B = facts("llama-3.1-8b", 8.03e9, 32, 4096, 32)
LLAMA_70B = facts("llama-3.1-70b", 70.6e9, 80, 8192, 64)
LLAMA_405B = facts("llama-3.1-405b", 405.8e9, 126, 16384, 128)
TARGET = ServingTarget(
    ttft_s=2.0, tpot_s=0.08, prompt_tokens=1000, output_tokens=300, concurrency=16
)


def demand(name: str, model: ModelFacts = LLAMA_8B, **kw: Any) -> ModelDemand:
    target = kw.pop("target", TARGET)
    return ModelDemand(name, model, target, **kw)


def gpu_node(
    name: str,
    product: str = "NVIDIA-H100-80GB-HBM3",
    gpus: int = 8,
    zone: str = "z1",
    rack: str = "r1",
) -> GpuNode:
    obj = {
        "metadata": {
            "name": name,
            "labels": {
                "nvidia.com/gpu.product": product,
                "topology.kubernetes.io/zone": zone,
                "goodput.dev/rack": rack,
            },
        },
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}},
    }
    return GpuInventory.from_objects([obj]).nodes()[0]


def mixed_fleet() -> list[GpuNode]:
    nodes = [gpu_node(f"h100-{i}", zone=f"z{i % 3}", rack=f"r{i % 6}") for i in range(6)]
    nodes += [gpu_node(f"l4-{i}", "NVIDIA-L4", 4, zone=f"z{i % 3}") for i in range(6)]
    nodes += [gpu_node(f"a100-{i}", "NVIDIA-A100-SXM4-40GB", 8, zone=f"z{i % 2}") for i in range(4)]
    return nodes


def previous_of(plan: PlacementPlan) -> dict[str, tuple[ReplicaPlacement, ...]]:
    return {name: d.replicas for name, d in plan.deployments.items()}


def nodes_by_name(nodes: list[GpuNode]) -> dict[str, GpuNode]:
    return {n.name: n for n in nodes}


def assert_within_capacity(plan: PlacementPlan, nodes: list[GpuNode]) -> None:
    used: dict[str, int] = {}
    for d in plan.deployments.values():
        for r in d.replicas:
            assert all(s.gpus == r.tensor for s in r.stages)
            for s in r.stages:
                used[s.node] = used.get(s.node, 0) + s.gpus
    for name, n in used.items():
        assert n <= nodes_by_name(nodes)[name].free


def test_smallest_tensor_degree_that_holds_weights_and_kv_headroom() -> None:
    pools = list(group_pools([gpu_node("h")]).values())
    shapes = SmallestFittingShape()
    small = shapes.candidates(demand("a"), pools[0])
    lean = shapes.candidates(demand("b", LLAMA_70B), pools[0])
    roomy = shapes.candidates(
        demand("b", LLAMA_70B, target=replace(TARGET, concurrency=32)), pools[0]
    )
    assert not isinstance(small, str) and small[0].tensor == 1
    # 131 GiB of weights on two GPUs leave KV room for 34k tokens: enough for 16 sequences of
    # 1300 tokens, not for 32.
    assert not isinstance(lean, str) and lean[0].tensor == 2
    assert not isinstance(roomy, str) and roomy[0].tensor == 4
    crowded = replace(TARGET, concurrency=400)  # 520k tokens of KV do not fit next to 2x weights
    more_kv = shapes.candidates(demand("c", LLAMA_70B, target=crowded), pools[0])
    assert not isinstance(more_kv, str) and more_kv[0].tensor == 8


def test_refusal_names_the_failed_constraint() -> None:
    nodes = [gpu_node(f"l4-{i}", "NVIDIA-L4", 4) for i in range(4)] + [gpu_node("h")]
    d = demand("big", LLAMA_70B, gpu_types=("L4",), pipeline=1)
    decision = PlacementSolver().solve(nodes, [d]).deployments["big"]
    assert not decision.placed and not decision.replicas
    assert decision.reason.startswith("no GPU type in [L4] can hold 132 GiB of weights")
    assert "tensor parallelism <= 4 within one interconnect domain is too small" in decision.reason
    absent = PlacementSolver().solve(nodes, [demand("x", gpu_types=("B200",))])
    assert "no GPU type in [B200] exists in the fleet" in absent.deployments["x"].reason


def test_fleet_too_small_is_not_placed_with_reason() -> None:
    nodes = [gpu_node("h1", gpus=4), gpu_node("h2", gpus=4)]
    roomy = replace(TARGET, concurrency=32)  # tensor 4 on these 4-GPU nodes
    plan = PlacementSolver().solve(
        nodes, [demand("a", LLAMA_70B, target=roomy, min_replicas=3, max_replicas=3)]
    )
    decision = plan.deployments["a"]
    assert not decision.placed
    assert len(decision.replicas) == 2
    assert "placed 2 of at least 3 replicas: no room for another replica" in decision.reason
    assert "4 free GPUs on one NVIDIA-H100-80GB-HBM3 node (largest free block 0" in decision.reason


def test_tensor_groups_stay_in_one_node_and_pipeline_only_when_needed() -> None:
    nodes = [gpu_node(f"n{i}", gpus=4, rack=f"r{i // 2}") for i in range(8)]
    # Pipeline stages do not shorten a token's path, so the 405B model gets a looser TPOT.
    loose = replace(TARGET, tpot_s=0.2)
    plan = PlacementSolver().solve(
        nodes,
        [demand("huge", LLAMA_405B, target=loose), demand("mid", LLAMA_70B), demand("small")],
    )
    huge = plan.deployments["huge"].replicas[0]
    assert huge.tensor == 4 and huge.pipeline > 1  # no node holds 405B: stages across nodes
    assert len(set(huge.nodes)) == huge.pipeline
    assert sum(s.layers for s in huge.stages) == LLAMA_405B.layers
    assert max(s.layers for s in huge.stages) - min(s.layers for s in huge.stages) <= 1
    assert {nodes_by_name(nodes)[n].rack for n in huge.nodes[:2]} == {"r0"}  # stages stay close
    for name in ("mid", "small"):
        assert plan.deployments[name].replicas[0].pipeline == 1
    assert_within_capacity(plan, nodes)


def test_layers_split_in_proportion_to_stage_memory() -> None:
    assert split_layers(80, [1.0, 1.0]) == [40, 40]
    assert split_layers(126, [1.0, 1.0, 1.0, 1.0]) == [32, 32, 31, 31]
    assert split_layers(90, [80.0, 40.0]) == [60, 30]
    assert split_layers(3, [100.0, 1.0, 1.0]) == [1, 1, 1]


def test_gpu_type_by_capacity_per_cost_and_user_preference() -> None:
    nodes = mixed_fleet()
    plan = PlacementSolver().solve(
        nodes,
        [
            demand("auto"),
            demand("l4", gpu_types=("L4",)),
            demand("pref", gpu_types=("A100", "H100")),
        ],
    )
    auto = plan.deployments["auto"]
    assert auto.replicas[0].product == "NVIDIA-H100-80GB-HBM3"
    assert "best capacity per cost of 3 GPU types" in auto.reason
    assert plan.deployments["l4"].replicas[0].product == "NVIDIA-L4"
    assert plan.deployments["pref"].replicas[0].product == "NVIDIA-A100-SXM4-40GB"


def test_replica_count_from_target_rate_within_bounds() -> None:
    nodes = mixed_fleet()
    solver = PlacementSolver()
    one = solver.solve(nodes, [demand("x", gpu_types=("H100",))]).deployments["x"]
    per_replica = one.requests_per_second
    want = replace(TARGET, target_rps=per_replica * 2.5)
    three = solver.solve(nodes, [demand("x", gpu_types=("H100",), target=want, max_replicas=8)])
    assert len(three.deployments["x"].replicas) == 3
    capped = solver.solve(nodes, [demand("x", gpu_types=("H100",), target=want, max_replicas=2)])
    assert len(capped.deployments["x"].replicas) == 2


def test_replicas_spread_across_zones() -> None:
    nodes = [gpu_node(f"n{i}", zone=f"z{i % 3}", rack=f"r{i}") for i in range(6)]
    plan = PlacementSolver().solve(nodes, [demand("x", min_replicas=3, max_replicas=3)])
    zones = {nodes_by_name(nodes)[r.nodes[0]].zone for r in plan.deployments["x"].replicas}
    assert zones == {"z0", "z1", "z2"}


def test_best_fit_keeps_whole_nodes_for_large_groups() -> None:
    nodes = [gpu_node("a", gpus=8), gpu_node("b", gpus=8)]
    plan = PlacementSolver().solve(
        nodes,
        [demand(f"s{i}", min_replicas=1) for i in range(4)]
        + [demand("big", LLAMA_70B, target=replace(TARGET, concurrency=400))],
    )
    assert all(d.placed for d in plan.deployments.values())
    assert sorted(plan.free_gpus.values()) == [0, 4]


def test_same_inputs_same_plan_in_any_order() -> None:
    nodes = mixed_fleet()
    demands = [demand(f"d{i}", LLAMA_70B if i % 4 == 0 else LLAMA_8B) for i in range(12)]
    first = PlacementSolver().solve(nodes, demands)
    rng = random.Random(7)
    shuffled_nodes, shuffled_demands = nodes[:], demands[:]
    rng.shuffle(shuffled_nodes)
    rng.shuffle(shuffled_demands)
    assert PlacementSolver().solve(shuffled_nodes, shuffled_demands) == first


def test_unrelated_deployment_or_node_moves_nothing() -> None:
    nodes = mixed_fleet()
    demands = [demand(f"d{i}", LLAMA_70B if i % 4 == 0 else LLAMA_8B) for i in range(10)]
    before = PlacementSolver().solve(nodes, demands)
    # A new deployment and a new node that would both change a fresh solve's choices.
    after = PlacementSolver().solve(
        [*nodes, gpu_node("aaa-new", zone="z0")],
        [*demands, demand("new", LLAMA_70B)],
        previous=previous_of(before),
    )
    for d in demands:
        assert after.deployments[d.name].replicas == before.deployments[d.name].replicas
        assert after.deployments[d.name].moved == ()
    assert after.deployments["new"].placed


def test_deleting_a_node_replaces_only_its_replicas() -> None:
    nodes = mixed_fleet()
    demands = [
        demand(f"d{i}", LLAMA_70B if i % 3 == 0 else LLAMA_8B, min_replicas=2, max_replicas=2)
        for i in range(9)
    ]
    before = PlacementSolver().solve(nodes, demands)
    victim = before.deployments["d0"].replicas[0].nodes[0]
    survivors = [n for n in nodes if n.name != victim]
    after = PlacementSolver().solve(survivors, demands, previous=previous_of(before))
    for name, old in before.deployments.items():
        new = after.deployments[name]
        for replica in old.replicas:
            moved = victim in replica.nodes
            assert (replica.replica in new.moved) is moved
            match = [r for r in new.replicas if r.replica == replica.replica]
            assert len(match) == 1
            if moved:
                assert victim not in match[0].nodes
                assert "moved replicas" in new.reason
            else:
                assert match[0] == replica
    assert_within_capacity(after, survivors)


def test_scale_down_releases_highest_replicas_first() -> None:
    nodes = mixed_fleet()
    four = PlacementSolver().solve(nodes, [demand("x", min_replicas=4, max_replicas=4)])
    two = PlacementSolver().solve(
        nodes, [demand("x", min_replicas=2, max_replicas=2)], previous=previous_of(four)
    )
    assert two.deployments["x"].replicas == four.deployments["x"].replicas[:2]


@pytest.mark.parametrize("tensor", [1, 2, 16])
def test_user_fixed_parallelism(tensor: int) -> None:
    nodes = mixed_fleet()
    decision = PlacementSolver().solve(nodes, [demand("x", tensor=tensor)]).deployments["x"]
    if tensor == 16:
        assert not decision.placed and "tensor 16 exceeds the 8 GPUs of a node" in decision.reason
    else:
        assert decision.replicas[0].tensor == tensor


def test_profiler_facts_feed_the_solver() -> None:
    from goodput.operator.placement.profiler_facts import model_facts
    from goodput.profiler import catalog

    llama = model_facts(catalog.get("llama-3-70b"))
    assert 130 < llama.weights_bytes / 1024**3 < 133
    assert llama.kv_bytes_per_token == 2 * 80 * 8 * 128 * 2
    plan = PlacementSolver().solve(mixed_fleet(), [demand("x", llama)])
    assert plan.deployments["x"].replicas[0].tensor in (2, 4)


def test_a_replica_whose_shape_misses_a_tighter_slo_moves() -> None:
    nodes = mixed_fleet()
    loose = demand("x", gpu_types=("H100",), target=replace(TARGET, tpot_s=0.010))
    before = PlacementSolver().solve(nodes, [loose])
    assert before.deployments["x"].replicas[0].tensor == 1
    tight = replace(loose, target=replace(TARGET, tpot_s=0.006))  # one GPU is too slow now
    after = PlacementSolver().solve(nodes, [tight], previous=previous_of(before)).deployments["x"]
    assert after.moved == (0,) and after.replicas[0].tensor == 2
    assert "moved replicas [0]" in after.reason


def _fragmented() -> tuple[list[GpuNode], list[ModelDemand], dict[str, Any], ModelDemand]:
    """Eight 1-GPU replicas running four per node on two 8-GPU nodes, and a tensor-8 model."""
    small = [demand(f"s{i}") for i in range(8)]
    half_nodes = [gpu_node("a", gpus=4), gpu_node("b", gpus=4)]
    running = PlacementSolver().solve(half_nodes, small)
    previous = {k: d.replicas for k, d in running.deployments.items()}
    big = demand("big", LLAMA_70B, target=replace(TARGET, concurrency=400))
    return [gpu_node("a", gpus=8), gpu_node("b", gpus=8)], small, previous, big


def test_small_replicas_move_to_unblock_a_fragmented_minimum() -> None:
    nodes, small, previous, big = _fragmented()
    blocked = PlacementSolver(defragmentation=None).solve(nodes, [*small, big], previous)
    assert not blocked.deployments["big"].placed  # 8 free GPUs, but 4 on each node
    plan = PlacementSolver().solve(nodes, [*small, big], previous)
    assert plan.deployments["big"].placed
    assert plan.deployments["big"].replicas[0].tensor == 8
    moved = [d.name for d in small if plan.deployments[d.name].moved]
    assert len(moved) == 4 and all(plan.deployments[d.name].placed for d in small)
    assert "to make room for big" in plan.deployments[moved[0]].reason
    assert_within_capacity(plan, nodes)


def test_no_move_when_nothing_is_blocked_or_too_many_must_move() -> None:
    nodes, small, previous, big = _fragmented()
    calm = PlacementSolver().solve(nodes, small, previous)
    assert all(not calm.deployments[d.name].moved for d in small)
    strict = PlacementSolver(defragmentation=MoveFewToUnblock(max_moves=3))
    plan = strict.solve(nodes, [*small, big], previous)
    assert not plan.deployments["big"].placed  # 4 moves would be needed, 3 allowed
    assert all(not plan.deployments[d.name].moved for d in small)


def test_fewer_fuller_stages_when_a_zone_lacks_nodes_for_more() -> None:
    nodes = [gpu_node(f"n{i}", zone=f"z{i % 2}") for i in range(4)]  # two 8-GPU nodes per zone
    loose = replace(TARGET, tpot_s=0.4, ttft_s=20.0)
    options, _ = PlacementSolver().options(
        demand("huge", LLAMA_405B, target=loose), group_pools(nodes).values()
    )
    assert (options[0].shape.tensor, options[0].shape.pipeline) == (4, 3)  # fewest GPUs first
    plan = PlacementSolver().solve(nodes, [demand("huge", LLAMA_405B, target=loose)])
    replica = plan.deployments["huge"].replicas[0]
    assert (replica.tensor, replica.pipeline) == (8, 2)  # 3 nodes in one zone do not exist
    assert len({nodes_by_name(nodes)[n].zone for n in replica.nodes}) == 1
