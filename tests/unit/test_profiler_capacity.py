"""The capacity planner: monotonic in the SLO and the hardware, bounded by the KV cache."""

from __future__ import annotations

import pytest

from goodput.profiler import catalog
from goodput.profiler.capacity import SLO, LengthDistribution, capacity

CHAT = LengthDistribution.fixed(prompt_tokens=1024, output_tokens=256)


def test_looser_slo_never_lowers_capacity() -> None:
    arch, gpu = catalog.get("llama-3-8b"), catalog.gpu("H100-80GB")
    rates = [
        capacity(arch, gpu, slo=SLO(ttft, tpot), lengths=CHAT, max_model_len=8192).max_rps
        for ttft, tpot in ((0.3, 0.015), (0.5, 0.02), (1.0, 0.04), (2.0, 0.08))
    ]
    assert rates == sorted(rates)
    assert rates[-1] > rates[0] > 0


def test_tighter_tpot_shrinks_the_batch() -> None:
    arch, gpu = catalog.get("llama-3-8b"), catalog.gpu("H100-80GB")
    loose = capacity(arch, gpu, slo=SLO(2.0, 0.05), lengths=CHAT, max_model_len=8192)
    tight = capacity(arch, gpu, slo=SLO(2.0, 0.012), lengths=CHAT, max_model_len=8192)
    assert tight.max_batch < loose.max_batch
    assert tight.tpot_s <= 0.012 and loose.tpot_s <= 0.05


def test_unattainable_slo_reports_zero() -> None:
    # No Llama-3-70B step on 4 H100s is 2 ms long.
    c = capacity(catalog.get("llama-3-70b"), catalog.gpu("H100-80GB"), tp=4,
                 slo=SLO(1.0, 0.002), lengths=CHAT, max_model_len=8192)  # fmt: skip
    assert c.max_rps == 0 and c.limited_by == "unattainable"


def test_faster_gpu_serves_more() -> None:
    arch, slo = catalog.get("llama-3-8b"), SLO(1.0, 0.05)
    rates = [capacity(arch, catalog.gpu(g), slo=slo, lengths=CHAT, max_model_len=8192).max_rps
             for g in ("L4", "A100-80GB", "H100-80GB", "H200-141GB")]  # fmt: skip
    assert rates == sorted(rates)


def test_small_kv_cache_limits_the_batch() -> None:
    # An 8B model on a 24 GB L4 leaves room for few long sequences.
    c = capacity(catalog.get("llama-3-8b"), catalog.gpu("L4"), slo=SLO(10.0, 0.5),
                 lengths=LengthDistribution.fixed(4000, 4000), max_model_len=8192)  # fmt: skip
    assert c.limited_by == "kv_cache"
    assert c.batch_at_max_rps * 8000 <= c.kv_cache_tokens


def test_meets_its_own_slo_at_the_reported_rate() -> None:
    slo = SLO(0.8, 0.03)
    c = capacity(catalog.get("qwen2.5-7b"), catalog.gpu("A100-80GB"), slo=slo, lengths=CHAT,
                 max_model_len=8192)  # fmt: skip
    assert c.max_rps > 0
    assert c.tpot_s <= slo.tpot_s and c.ttft_p99_s <= slo.ttft_s
    assert c.output_tokens_per_s == pytest.approx(c.max_rps * 256)


def test_trace_lengths(shared_traces: None) -> None:
    lengths = LengthDistribution.from_trace("azure-conv")
    assert len(lengths.prompt_tokens) == 19366
    c = capacity(catalog.get("llama-3-8b"), catalog.gpu("H100-80GB"), slo=SLO(1.0, 0.04),
                 lengths=lengths, max_model_len=8192)  # fmt: skip
    assert c.max_rps > 1


@pytest.fixture
def shared_traces() -> None:
    from goodput.profiler.datasets import shared_data_dir

    if not (shared_data_dir() / "traces" / "azure_llm_2023_conv.csv").is_file():
        pytest.skip("shared data (../shared/data/traces) absent; set GOODPUT_SHARED_DIR")


def test_quantized_weights_shorten_memory_bound_decode() -> None:
    arch, gpu, slo = catalog.get("llama-3-8b"), catalog.gpu("L40S"), SLO(1.0, 0.05)
    bf16, fp8 = (capacity(arch, gpu, slo=slo, lengths=CHAT, max_model_len=8192, quantization=q)
                 for q in ("none", "fp8"))  # fmt: skip
    assert fp8.max_rps > bf16.max_rps
    assert fp8.kv_cache_tokens > bf16.kv_cache_tokens  # smaller weights leave more KV room
