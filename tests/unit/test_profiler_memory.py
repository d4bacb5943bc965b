"""The memory model against published model sizes and vLLM's own accounting rules."""

from __future__ import annotations

import pytest

from goodput.profiler import catalog
from goodput.profiler.architectures import ModelArchitecture
from goodput.profiler.hardware import GIB
from goodput.profiler.memory import (
    InsufficientMemory,
    Quantization,
    fits,
    kv_cache_tokens,
    max_concurrency,
    memory_plan,
    quantization_from_hf_config,
    vllm_flags,
)

# Parameter counts as the model cards / Hugging Face Hub pages state them (billions).
PUBLISHED_PARAMS_B = {
    "llama-3-8b": 8.03,  # meta-llama/Meta-Llama-3-8B safetensors: 8.03B params
    "llama-3-70b": 70.6,  # meta-llama/Meta-Llama-3-70B: 70.6B
    "llama-3.1-405b": 406.0,  # meta-llama/Llama-3.1-405B: 406B
    "llama-3.2-1b": 1.24,  # meta-llama/Llama-3.2-1B model card: 1.23B; Hub: 1.24B
    "llama-3.2-3b": 3.21,  # meta-llama/Llama-3.2-3B model card: 3.21B
    "mistral-7b": 7.24,  # mistralai/Mistral-7B-Instruct-v0.2: 7.24B
    "mixtral-8x7b": 46.7,  # Mixtral of Experts paper: 47B total (46.7B on the Hub)
    "qwen2.5-7b": 7.61,  # Qwen2.5-7B model card: 7.61B
    "qwen2.5-72b": 72.7,  # Qwen2.5-72B model card: 72.7B
    "gemma-2b": 2.51,  # google/gemma-2b: 2.51B
    "gemma-7b": 8.54,  # google/gemma-7b: 8.54B
    "gemma-2-9b": 9.24,  # google/gemma-2-9b: 9.24B
    "gemma-2-27b": 27.2,  # google/gemma-2-27b: 27.2B
    "tiny-llama": 0.00839,  # goodput/dev/tiny_model.py: 4 layers of 256, vocabulary 8192
}


@pytest.mark.parametrize(("name", "published"), sorted(PUBLISHED_PARAMS_B.items()))
def test_parameter_count_matches_published_figure(name: str, published: float) -> None:
    params = catalog.get(name).num_parameters / 1e9
    assert params == pytest.approx(published, rel=0.05)


def test_every_catalog_model_has_a_published_figure() -> None:
    assert set(catalog.model_names()) == set(PUBLISHED_PARAMS_B)


def test_mixtral_activates_two_of_eight_experts() -> None:
    # Mistral AI: "12.9B active parameters per token".
    assert catalog.get("mixtral-8x7b").num_active_parameters / 1e9 == pytest.approx(12.9, rel=0.05)


@pytest.mark.parametrize(
    ("name", "quantization", "published_gb"),
    [
        ("llama-3-8b", "none", 16.06),  # bf16 safetensors of Meta-Llama-3-8B: 16.1 GB
        ("llama-3-70b", "none", 141.1),  # 30 safetensors shards: 141 GB
        ("mixtral-8x7b", "none", 93.4),  # Mixtral-8x7B-v0.1 bf16: 93.4 GB
        ("llama-3-8b", "awq", 5.73),  # 4-bit AWQ, group 128, Llama-3-8B-Instruct: 5.73 GB
        ("llama-3-8b", "fp8", 9.08),  # FP8 Meta-Llama-3-8B-Instruct checkpoints: 9.08 GB
    ],
)
def test_weight_bytes_match_published_checkpoint_sizes(
    name: str, quantization: str, published_gb: float
) -> None:
    plan = memory_plan(catalog.get(name), quantization=quantization)
    assert plan.weights_bytes_total / 1e9 == pytest.approx(published_gb, rel=0.05)


def test_kv_bytes_per_token_follow_gqa_shapes() -> None:
    # 2 (K and V) x 32 layers x 8 KV heads x 128 dims x 2 bytes = 128 KiB.
    llama = catalog.get("llama-3-8b")
    assert memory_plan(llama).kv_bytes_per_token == 128 * 1024
    assert memory_plan(llama, kv_dtype="fp8").kv_bytes_per_token == 64 * 1024
    assert memory_plan(catalog.get("llama-3-70b")).kv_bytes_per_token == 320 * 1024


def test_tensor_parallelism_divides_per_gpu_memory() -> None:
    arch = catalog.get("llama-3-70b")
    one, two, four = (memory_plan(arch, tp=tp).weights_bytes_per_gpu for tp in (1, 2, 4))
    assert two < one and four < two
    assert four == pytest.approx(one / 4, rel=0.02)
    assert memory_plan(arch, tp=4).kv_bytes_per_token == memory_plan(arch).kv_bytes_per_token // 4


def test_kv_heads_are_replicated_beyond_their_count() -> None:
    # Llama-3-70B has 8 KV heads: TP 16 cannot split them further, each rank keeps one.
    arch = catalog.get("llama-3-70b")
    assert memory_plan(arch, tp=16).kv_bytes_per_token == memory_plan(arch, tp=8).kv_bytes_per_token


def test_pipeline_parallelism_splits_layers() -> None:
    arch = catalog.get("llama-3-70b")
    whole, halves = memory_plan(arch), memory_plan(arch, pp=2)
    assert halves.kv_bytes_per_token == whole.kv_bytes_per_token // 2
    assert halves.weights_bytes_per_gpu < 0.55 * whole.weights_bytes_per_gpu


def test_quantization_orders_weight_sizes() -> None:
    arch = catalog.get("qwen2.5-7b")
    sizes = [memory_plan(arch, quantization=q).weights_bytes_total for q in ("none", "fp8", "awq")]
    assert sizes[0] > sizes[1] > sizes[2]


def test_fit_depends_on_gpu_and_parallelism() -> None:
    arch = catalog.get("llama-3-70b")
    h100, h200 = catalog.gpu("H100-80GB"), catalog.gpu("H200-141GB")
    plan = memory_plan(arch, max_model_len=8192, concurrency=16)
    assert not fits(plan, h100)
    assert not fits(plan, h200)  # 141 GB of bf16 weights exceed one H200
    tp4 = memory_plan(arch, tp=4, max_model_len=8192, concurrency=16)
    assert fits(tp4, h100)
    with pytest.raises(InsufficientMemory):
        vllm_flags(plan, h100)


def test_kv_tokens_shrink_with_utilization_and_grow_with_tp() -> None:
    arch, gpu = catalog.get("llama-3-8b"), catalog.gpu("H100-80GB")
    plan = memory_plan(arch, max_model_len=8192)
    assert kv_cache_tokens(plan, gpu, 0.5) < kv_cache_tokens(plan, gpu, 0.9)
    tp2 = memory_plan(arch, tp=2, max_model_len=8192)
    assert kv_cache_tokens(tp2, gpu) > 2 * kv_cache_tokens(plan, gpu)
    # Llama-3-8B on one 80 GB H100 at 0.9: vLLM reports on the order of 450k KV tokens.
    assert 400_000 < kv_cache_tokens(plan, gpu) < 500_000


def test_vllm_flags_carry_the_plan() -> None:
    arch, gpu = catalog.get("llama-3-8b"), catalog.gpu("L4")
    plan = memory_plan(arch, quantization="awq", kv_dtype="fp8", max_model_len=4096, concurrency=8)
    flags = vllm_flags(plan, gpu, 0.92)
    assert flags.kv_cache_tokens == kv_cache_tokens(plan, gpu, 0.92)
    args = flags.args()
    assert "--max-model-len=4096" in args
    assert "--max-num-seqs=8" in args
    assert "--quantization=awq" in args
    assert "--kv-cache-dtype=fp8" in args
    assert max_concurrency(plan, gpu, 0.92) * 4096 <= flags.kv_cache_tokens + 4096


def test_sliding_window_layers_need_less_kv_per_long_sequence() -> None:
    gemma2 = catalog.get("gemma-2-9b")
    assert gemma2.sliding_window == 4096 and gemma2.sliding_window_layers == 21
    plan = memory_plan(gemma2, max_model_len=8192)
    assert plan.kv_bytes_per_sequence < plan.kv_bytes_per_token * 8192


def test_from_hf_config_applies_family_defaults() -> None:
    config = {
        "model_type": "gemma",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "vocab_size": 1000,
    }
    arch = ModelArchitecture.from_hf_config(config)
    assert arch.num_kv_heads == 4 and arch.head_dim == 16
    assert arch.tie_word_embeddings  # Gemma ties its embeddings by default
    assert not arch.is_moe


def test_quantization_read_from_checkpoint_config() -> None:
    assert quantization_from_hf_config({}) is Quantization.NONE
    awq = {"quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}}
    assert quantization_from_hf_config(awq) is Quantization.AWQ


def test_gpu_lookup_by_node_label() -> None:
    assert catalog.gpu("NVIDIA-H100-80GB-HBM3").name == "H100-80GB"
    assert catalog.gpu("nvidia-a100-sxm4-40gb").memory_bytes == 40 * GIB
    with pytest.raises(KeyError):
        catalog.gpu("TPU-v5")
