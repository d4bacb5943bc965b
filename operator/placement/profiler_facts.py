"""Fills the solver's plain ``ModelFacts`` from the profiler's architecture and memory model."""

from __future__ import annotations

from goodput.operator.placement.demand import ModelFacts
from goodput.profiler.architectures import ModelArchitecture
from goodput.profiler.memory import Quantization, memory_plan


def model_facts(
    arch: ModelArchitecture,
    *,
    dtype: str = "auto",
    quantization: Quantization | str = Quantization.NONE,
    kv_dtype: str = "auto",
) -> ModelFacts:
    """Weights, KV bytes per token and per-GPU overhead as the profiler's memory plan counts them.

    The overhead (prefill activations, CUDA context, NCCL buffers) is taken at tensor degree 2,
    which includes the collective buffers any multi-GPU replica has and is an upper bound for
    larger degrees, whose activations shard.
    """
    single = memory_plan(arch, dtype=dtype, quantization=quantization, kv_dtype=kv_dtype)
    shared = memory_plan(arch, dtype=dtype, quantization=quantization, kv_dtype=kv_dtype, tp=2)
    return ModelFacts(
        name=arch.name,
        weights_bytes=single.weights_bytes_total,
        parameters=arch.num_active_parameters,
        layers=arch.num_layers,
        attention_heads=arch.num_attention_heads,
        kv_heads=arch.num_kv_heads,
        hidden_size=arch.hidden_size,
        kv_bytes_per_token=single.kv_bytes_per_token,
        overhead_bytes=max(
            single.activation_bytes_per_gpu + single.runtime_overhead_bytes_per_gpu,
            shared.activation_bytes_per_gpu + shared.runtime_overhead_bytes_per_gpu,
        ),
        quantization=str(Quantization(quantization)),
    )
