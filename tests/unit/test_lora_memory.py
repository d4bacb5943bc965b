"""The memory model of LoRA serving: the GPU reservation grows with slots x rank x layers x width,
shards over tensor parallelism, comes out of the KV cache, and the host cache with maxCpuLoras."""

from __future__ import annotations

from llmd_builders import make_body

from goodput.api.llmdeployment import LLMDeployment
from goodput.operator.model_memory import CatalogMemory
from goodput.profiler import catalog
from goodput.profiler.hardware import GIB
from goodput.profiler.memory import lora_memory

LLAMA = catalog.get("llama-3-8b")


def test_the_gpu_reservation_is_slots_times_rank_times_layers_times_width() -> None:
    one = lora_memory(LLAMA, max_loras=1, max_rank=16, max_cpu_loras=1, max_num_batched_tokens=0)
    four = lora_memory(LLAMA, max_loras=4, max_rank=16, max_cpu_loras=1, max_num_batched_tokens=0)
    wide = lora_memory(LLAMA, max_loras=1, max_rank=32, max_cpu_loras=1, max_num_batched_tokens=0)
    assert four.gpu_bytes_per_gpu == 4 * one.gpu_bytes_per_gpu
    assert wide.gpu_bytes_per_gpu == 2 * one.gpu_bytes_per_gpu
    h, q, kv, inter = LLAMA.hidden_size, LLAMA.q_size, LLAMA.kv_size, LLAMA.intermediate_size
    width = (h + q + 2 * kv) + (q + h) + (h + 2 * inter) + (inter + h)  # QKV, O, gate+up, down
    assert one.gpu_bytes_per_gpu == 16 * width * LLAMA.num_layers * 2  # bf16
    assert one.adapter_bytes == one.gpu_bytes_per_gpu, "one slot holds one whole adapter"
    # A rank-16 adapter on every linear layer of an 8B model: tens of MiB, not GiB.
    assert 40 * 2**20 < one.adapter_bytes < 100 * 2**20


def test_tensor_parallelism_shards_the_slots_and_the_host_cache_counts_every_worker() -> None:
    tp1 = lora_memory(LLAMA, max_loras=4, max_rank=16, max_cpu_loras=8)
    tp2 = lora_memory(LLAMA, max_loras=4, max_rank=16, max_cpu_loras=8, tp=2)
    assert 0.5 * tp1.gpu_bytes_per_gpu < tp2.gpu_bytes_per_gpu < tp1.gpu_bytes_per_gpu
    assert tp1.host_bytes == 8 * tp1.adapter_bytes and tp2.host_bytes == 2 * tp1.host_bytes


def test_a_replica_serving_lora_reserves_it_before_its_kv_cache() -> None:
    def fit(**spec: object) -> tuple[int, int]:
        body = make_body(model={"name": "llama", "architecture": "llama-3-8b"}, **spec)
        found = CatalogMemory().fit(LLMDeployment.model_validate(body).spec, 24 * GIB, 1, 1)
        assert found.fits and found.engine is not None, found.detail
        return found.engine.kv_cache_tokens, found.max_concurrency or 0

    plain = fit()
    lora = fit(lora={"enabled": True, "maxLoras": 8, "maxRank": 64})
    reserved = lora_memory(LLAMA, max_loras=8, max_rank=64, max_cpu_loras=16).gpu_bytes_per_gpu
    kv_per_token = (
        CatalogMemory()
        .profile(
            LLMDeployment.model_validate(
                make_body(model={"name": "l", "architecture": "llama-3-8b"})
            ).spec
        )
        .kv_bytes_per_token
    )
    assert kv_per_token is not None
    lost = plain[0] - lora[0]
    assert abs(lost - reserved / kv_per_token) <= 64, (lost, reserved / kv_per_token)
