"""First fit (models outside the profiler's catalog), on the inventory's node model, and the
memory estimates behind it."""

from __future__ import annotations

from typing import Any

from llmd_builders import gpu_nodes, make_body, make_node

from goodput.api.llmdeployment import LLMDeploymentSpec
from goodput.operator.gpu_catalog import matches_gpu_type
from goodput.operator.model_memory import EstimatedMemory, parameters_from_name
from goodput.operator.placement.first_fit import FirstFitSelector
from goodput.operator.placement.selection import Placement, Unplaceable

H100, A100, L4 = "NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB", "NVIDIA-L4"
SELECT = FirstFitSelector(EstimatedMemory())


def _spec(**spec: Any) -> LLMDeploymentSpec:
    return LLMDeploymentSpec.model_validate(make_body(**spec)["spec"])


def test_node_reading_skips_cordoned_and_gpu_less_nodes() -> None:
    nodes = gpu_nodes(
        [
            make_node("a", H100),
            make_node("b", A100, cordoned=True),
            {"metadata": {"name": "cpu"}, "status": {"allocatable": {"cpu": "8"}}},
            make_node("c", L4, gpus=1, memory_mib=None),  # memory from the profiler's catalog
        ]
    )
    assert [(n.name, n.product, n.gpus) for n in nodes] == [("a", H100, 8), ("c", L4, 1)]
    assert nodes[1].gpu.memory_bytes > 20 * 1024**3


def test_gpu_type_matching() -> None:
    assert matches_gpu_type("H100", H100)
    assert matches_gpu_type("A100-80GB", A100)
    assert matches_gpu_type(H100, H100)
    assert not matches_gpu_type("L4", "NVIDIA-L40S")
    assert not matches_gpu_type("H200", H100)


def test_preference_order_wins_over_cluster_order() -> None:
    nodes = gpu_nodes([make_node("a", A100), make_node("h", H100)])
    out = SELECT.select(_spec(resources={"gpuTypes": ["A100", "H100"]}), nodes)
    assert isinstance(out, Placement) and out.gpu_product == A100
    out = SELECT.select(_spec(resources={"gpuTypes": ["B200", "H100"]}), nodes)
    assert isinstance(out, Placement) and out.gpu_product == H100


def test_small_model_takes_one_gpu_and_large_model_gets_tensor_parallelism() -> None:
    nodes = gpu_nodes([make_node("h", H100)])
    small = SELECT.select(_spec(), nodes)
    assert isinstance(small, Placement) and (small.tensor, small.pipeline) == (1, 1)
    big = SELECT.select(
        _spec(model={"name": "llama-3-70b", "architecture": "llama-3-70b", "maxModelLen": 8192}),
        nodes,
    )
    # 70B in bf16 is ~131 GiB of weights: two 80 GB GPUs at the least.
    assert isinstance(big, Placement) and big.tensor >= 2 and big.pipeline == 1


def test_missing_gpu_type_is_a_readable_retryable_refusal() -> None:
    nodes = gpu_nodes([make_node("h", H100)])
    out = SELECT.select(_spec(resources={"gpuTypes": ["B200"]}), nodes)
    assert isinstance(out, Unplaceable) and out.retryable
    assert out.reason == "NoMatchingGPUType"
    assert "B200" in out.message and H100 in out.message


def test_model_too_large_for_any_node_is_final() -> None:
    nodes = gpu_nodes([make_node("l4", L4, gpus=1, memory_mib=23034)])
    out = SELECT.select(
        _spec(model={"name": "llama-3-70b", "architecture": "llama-3-70b"}, resources={}), nodes
    )
    assert isinstance(out, Unplaceable) and not out.retryable
    assert out.reason == "InsufficientGPUMemory"
    assert "NVIDIA-L4 with tensor=1" in out.message and "GiB weights" in out.message


def test_user_parallelism_is_respected_and_checked_against_node_size() -> None:
    nodes = gpu_nodes([make_node("h", H100, gpus=4)])
    out = SELECT.select(_spec(resources={"parallelism": {"tensor": 2, "pipeline": 2}}), nodes)
    assert isinstance(out, Placement) and (out.tensor, out.pipeline) == (2, 2)
    out = SELECT.select(_spec(resources={"parallelism": {"tensor": 8}}), nodes)
    assert isinstance(out, Unplaceable)


def test_parameter_count_from_names() -> None:
    assert parameters_from_name("Meta-Llama-3-8B-Instruct") == 8_000_000_000
    assert parameters_from_name("Qwen2.5-0.5B") == 500_000_000
    assert parameters_from_name("Mixtral-8x7B-v0.1") == 56_000_000_000
    assert parameters_from_name("gpt2") is None


def test_uncatalogued_models_are_sized_from_their_name() -> None:
    memory = EstimatedMemory()
    spec = _spec(model={"name": "acme/Acme-Chat-34B"})
    profile = memory.profile(spec)
    assert profile.source == "model name" and profile.parameters == 34_000_000_000
    # 34e9 bf16 weights are 63 GiB: not on one 80 GB GPU with KV room, fine on two.
    assert not memory.fit(spec, 80 * 1024**3, 1, 1).fits
    assert memory.fit(spec, 80 * 1024**3, 2, 1).fits
