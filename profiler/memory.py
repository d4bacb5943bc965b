"""GPU memory a model needs for a context length and concurrency, and the vLLM flags that follow.

The accounting mirrors vLLM's: a replica reserves ``gpu_memory_utilization`` of each GPU; weights,
the peak activation of a profiling forward pass and a fixed runtime overhead (CUDA context, cuBLAS
workspaces, CUDA graphs, NCCL buffers) come off first, and what is left becomes the paged KV cache.
Sizes are per GPU: tensor parallelism shards matrices and KV heads, pipeline parallelism layers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from goodput.profiler.architectures import ModelArchitecture
from goodput.profiler.hardware import GIB, GPUType

_DTYPE_BYTES: dict[str, int] = {
    "float32": 4,
    "fp32": 4,
    "float": 4,
    "bfloat16": 2,
    "bf16": 2,
    "float16": 2,
    "fp16": 2,
    "half": 2,
    "fp8": 1,
    "fp8_e4m3": 1,
    "fp8_e5m2": 1,
    "int8": 1,
}

# vLLM's default paged-KV block; the KV cache is allocated in whole blocks.
KV_BLOCK_TOKENS = 16
# vLLM's default chunked-prefill token budget per step; the profiling pass runs this many tokens.
DEFAULT_MAX_NUM_BATCHED_TOKENS = 8192
# CUDA context, cuBLAS/attention workspaces and captured CUDA graphs: about 1 GiB on a GPU with
# vLLM's default graph sizes; a multi-GPU replica adds NCCL communicator buffers.
RUNTIME_OVERHEAD_BYTES = 1 * GIB
COLLECTIVE_OVERHEAD_BYTES = GIB // 2


class Quantization(StrEnum):
    """Weight formats vLLM serves; embeddings and the LM head stay in the activation dtype."""

    NONE = "none"
    FP8 = "fp8"
    INT8 = "int8"
    AWQ = "awq"
    GPTQ = "gptq"


@dataclass(frozen=True)
class WeightFormat:
    """Bits per quantized weight plus the scales (and zero points) stored per group of weights."""

    bits: int
    group_size: int | None  # weights sharing one scale; None: one scale per output channel
    overhead_bytes_per_group: float

    def bytes_per_weight(self, in_features: int) -> float:
        group = self.group_size or in_features
        return self.bits / 8 + self.overhead_bytes_per_group / group


def weight_format(
    quantization: Quantization, dtype_bytes: int, group_size: int = 128
) -> WeightFormat:
    """The storage cost of one linear-layer weight under ``quantization``."""
    if quantization is Quantization.NONE:
        return WeightFormat(bits=8 * dtype_bytes, group_size=None, overhead_bytes_per_group=0.0)
    if quantization in (Quantization.FP8, Quantization.INT8):
        # One fp32 scale per output channel (the per-tensor variant is smaller still).
        return WeightFormat(bits=8, group_size=None, overhead_bytes_per_group=4.0)
    # AWQ and GPTQ int4: an fp16 scale and a packed 4-bit zero point per group of input weights.
    return WeightFormat(bits=4, group_size=group_size, overhead_bytes_per_group=2.5)


def quantization_from_hf_config(config: Mapping[str, Any]) -> Quantization:
    """The weight format a checkpoint's ``quantization_config`` declares (NONE without one)."""
    qc = config.get("quantization_config") or {}
    method = str(qc.get("quant_method", "")).lower()
    if method in ("awq", "gptq"):
        return Quantization(method)
    if method == "fp8":
        return Quantization.FP8
    if method == "compressed-tensors":
        bits = 8
        for group in (qc.get("config_groups") or {}).values():
            bits = int((group.get("weights") or {}).get("num_bits", bits))
        return Quantization.INT8 if bits == 8 else Quantization.GPTQ
    return Quantization.NONE


def dtype_bytes(dtype: str) -> int:
    try:
        return _DTYPE_BYTES[dtype.lower().removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(_DTYPE_BYTES)}") from None


def resolve_dtype(arch: ModelArchitecture, dtype: str) -> str:
    """vLLM's ``--dtype auto``: the checkpoint's dtype, except float32 checkpoints run in bf16."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if dtype_bytes(arch.torch_dtype) == 4 else arch.torch_dtype


@dataclass(frozen=True)
class MemoryPlan:
    """Per-GPU memory of one replica of ``arch`` (the busiest GPU when stages differ)."""

    arch: ModelArchitecture
    dtype: str
    quantization: Quantization
    kv_cache_dtype: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    max_model_len: int
    concurrency: int
    max_num_batched_tokens: int
    weights_bytes_total: int
    weights_bytes_per_gpu: int
    kv_bytes_per_token: int  # per GPU, every layer on it
    kv_bytes_per_sequence: int  # per GPU, one sequence of max_model_len (sliding windows applied)
    activation_bytes_per_gpu: int
    runtime_overhead_bytes_per_gpu: int
    lora_bytes_per_gpu: int = 0  # ``lora_memory``'s reservation, when the replica serves LoRA

    @property
    def num_gpus(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    @property
    def non_kv_bytes_per_gpu(self) -> int:
        return (
            self.weights_bytes_per_gpu
            + self.activation_bytes_per_gpu
            + self.runtime_overhead_bytes_per_gpu
            + self.lora_bytes_per_gpu
        )

    @property
    def kv_bytes_needed_per_gpu(self) -> int:
        """KV cache for ``concurrency`` sequences all at ``max_model_len``: the worst case."""
        return self.concurrency * self.kv_bytes_per_sequence

    @property
    def required_bytes_per_gpu(self) -> int:
        return self.non_kv_bytes_per_gpu + self.kv_bytes_needed_per_gpu


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def memory_plan(
    arch: ModelArchitecture,
    *,
    dtype: str = "auto",
    quantization: Quantization | str = Quantization.NONE,
    kv_dtype: str = "auto",
    tp: int = 1,
    pp: int = 1,
    max_model_len: int | None = None,
    concurrency: int = 1,
    max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
    group_size: int = 128,
) -> MemoryPlan:
    """Per-GPU memory of one replica: ``concurrency`` sequences of ``max_model_len`` tokens."""
    if tp < 1 or pp < 1 or concurrency < 1:
        raise ValueError("tp, pp and concurrency must be at least 1")
    if pp > arch.num_layers:
        raise ValueError(f"pp={pp} exceeds the model's {arch.num_layers} layers")
    quant = Quantization(quantization)
    act_dtype = resolve_dtype(arch, dtype)
    act_bytes = dtype_bytes(act_dtype)
    kv_dtype_name = act_dtype if kv_dtype == "auto" else kv_dtype
    kv_bytes = dtype_bytes(kv_dtype_name)
    model_len = max_model_len or arch.max_position_embeddings

    linear_bytes_per_weight = weight_format(quant, act_bytes, group_size).bytes_per_weight(
        arch.hidden_size
    )
    # KV heads are split across TP ranks; with fewer KV heads than ranks vLLM replicates them.
    kv_heads_per_gpu = _ceil_div(arch.num_kv_heads, tp)
    h = arch.hidden_size
    attn_per_gpu = 2 * h * arch.q_size // tp + 2 * h * kv_heads_per_gpu * arch.head_dim
    if arch.qkv_bias:
        attn_per_gpu += arch.q_size // tp + 2 * kv_heads_per_gpu * arch.head_dim
    mlp_per_gpu = arch.mlp_params_per_layer // tp
    layer_bytes = (attn_per_gpu + mlp_per_gpu) * linear_bytes_per_weight + (
        arch.norm_params_per_layer * act_bytes
    )
    layers_per_stage = _ceil_div(arch.num_layers, pp)
    vocab_bytes = _ceil_div(arch.vocab_size, tp) * h * act_bytes  # vocab-parallel embedding
    # With pp > 1 the first stage holds the embedding and the last the LM head.
    edge_copies = (1 if arch.tie_word_embeddings else 2) if pp == 1 else 1
    edge_bytes = vocab_bytes * edge_copies
    weights_per_gpu = int(layers_per_stage * layer_bytes + edge_bytes + h * act_bytes)

    total_linear = arch.num_layers * arch.linear_params_per_layer
    weights_total = int(
        total_linear * weight_format(quant, act_bytes, group_size).bytes_per_weight(h)
        + (arch.num_parameters - total_linear) * act_bytes
    )

    kv_per_token_per_layer = 2 * kv_heads_per_gpu * arch.head_dim * kv_bytes
    kv_per_token = layers_per_stage * kv_per_token_per_layer
    window_layers = math.ceil(arch.sliding_window_layers * layers_per_stage / arch.num_layers)
    window = arch.sliding_window or model_len
    kv_per_sequence = kv_per_token_per_layer * (
        (layers_per_stage - window_layers) * model_len + window_layers * min(window, model_len)
    )

    # Peak activation of the profiling pass: residual stream, QKV, attention output and the gated
    # MLP's (or the routed experts') intermediate for every batched token, plus fp32 logits.
    mlp_width = arch.intermediate_size * max(1, arch.experts_per_token)
    per_token = (
        2 * h + (arch.q_size // tp + 2 * kv_heads_per_gpu * arch.head_dim) + arch.q_size // tp
    ) + 3 * mlp_width // tp
    logits = min(max_num_batched_tokens, max(concurrency, 256)) * arch.vocab_size * 4
    activation = max_num_batched_tokens * per_token * act_bytes + logits

    overhead = RUNTIME_OVERHEAD_BYTES + (COLLECTIVE_OVERHEAD_BYTES if tp * pp > 1 else 0)
    return MemoryPlan(
        arch=arch,
        dtype=act_dtype,
        quantization=quant,
        kv_cache_dtype=kv_dtype_name,
        tensor_parallel_size=tp,
        pipeline_parallel_size=pp,
        max_model_len=model_len,
        concurrency=concurrency,
        max_num_batched_tokens=max_num_batched_tokens,
        weights_bytes_total=weights_total,
        weights_bytes_per_gpu=weights_per_gpu,
        kv_bytes_per_token=kv_per_token,
        kv_bytes_per_sequence=kv_per_sequence,
        activation_bytes_per_gpu=activation,
        runtime_overhead_bytes_per_gpu=overhead,
    )


def kv_cache_bytes(plan: MemoryPlan, gpu: GPUType, gpu_memory_utilization: float = 0.9) -> int:
    """Bytes per GPU left for the KV cache once weights, activations and overhead are placed."""
    return kv_budget_bytes(plan, gpu.memory_bytes, gpu_memory_utilization)


def kv_budget_bytes(plan: MemoryPlan, memory_bytes: int, gpu_memory_utilization: float) -> int:
    """``kv_cache_bytes`` for a GPU known only by its memory (a node's memory label)."""
    return max(0, int(memory_bytes * gpu_memory_utilization) - plan.non_kv_bytes_per_gpu)


def _whole_blocks(plan: MemoryPlan, kv_bytes: int) -> int:
    return int(kv_bytes // (plan.kv_bytes_per_token * KV_BLOCK_TOKENS) * KV_BLOCK_TOKENS)


def kv_cache_tokens(plan: MemoryPlan, gpu: GPUType, gpu_memory_utilization: float = 0.9) -> int:
    """KV-cache tokens vLLM would allocate (whole blocks) on ``gpu``."""
    return _whole_blocks(plan, kv_cache_bytes(plan, gpu, gpu_memory_utilization))


def max_concurrency(plan: MemoryPlan, gpu: GPUType, gpu_memory_utilization: float = 0.9) -> int:
    """How many sequences of ``plan.max_model_len`` tokens the KV cache holds at once."""
    return kv_cache_bytes(plan, gpu, gpu_memory_utilization) // plan.kv_bytes_per_sequence


def fits(plan: MemoryPlan, gpu: GPUType, gpu_memory_utilization: float = 0.9) -> bool:
    """Whether ``plan.concurrency`` full-length sequences fit on ``gpu`` without preemption."""
    return plan.required_bytes_per_gpu <= int(gpu.memory_bytes * gpu_memory_utilization)


def cpu_kv_cache_tokens(
    arch: ModelArchitecture,
    kv_cache_space_bytes: int,
    *,
    dtype: str = "auto",
    kv_dtype: str = "auto",
    block_tokens: int = KV_BLOCK_TOKENS,
) -> int:
    """KV tokens vLLM's CPU engine allocates in ``VLLM_CPU_KVCACHE_SPACE`` bytes."""
    plan = memory_plan(arch, dtype=dtype, kv_dtype=kv_dtype)
    return int(kv_cache_space_bytes // (plan.kv_bytes_per_token * block_tokens) * block_tokens)


# -- LoRA adapters -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoRAMemory:
    """What serving LoRA adapters costs one replica.

    vLLM allocates, at start, one ``lora_a`` (rank x in) and one ``lora_b`` (out x rank) buffer
    per LoRA-capable linear layer for each of ``--max-loras`` slots at ``--max-lora-rank``, in
    the model's dtype, whatever the adapters later loaded: the GPU reservation. Column-parallel
    layers (QKV, gate/up) split ``lora_b`` over tensor-parallel ranks, row-parallel ones (O,
    down) split ``lora_a``; the other factor is replicated. Each worker also keeps up to
    ``--max-cpu-loras`` whole adapters in host memory (its CPU cache). MoE experts carry no
    LoRA here (vLLM wraps them only with its fused-MoE LoRA): their attention does.
    """

    gpu_bytes_per_gpu: int
    host_bytes: int  # all the replica's workers together
    adapter_bytes: int  # one adapter at max rank on every wrapped layer, unsharded


def lora_memory(
    arch: ModelArchitecture,
    *,
    max_loras: int,
    max_rank: int,
    max_cpu_loras: int,
    dtype: str = "auto",
    tp: int = 1,
    pp: int = 1,
    max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
) -> LoRAMemory:
    """The GPU reservation per GPU and the host cache of one replica serving LoRA."""
    elem = dtype_bytes(resolve_dtype(arch, dtype))
    h, q, kv = arch.hidden_size, arch.q_size, arch.kv_size
    inter = 0 if arch.is_moe else arch.intermediate_size
    # (in, out, column-parallel) per wrapped linear layer: QKV, O, gate+up, down.
    layers = [(h, q + 2 * kv, True), (q, h, False)]
    if inter:
        layers += [(h, 2 * inter, True), (inter, h, False)]
    per_slot_sharded = 0
    per_adapter_full = 0
    for fan_in, fan_out, column in layers:
        a, b = max_rank * fan_in, fan_out * max_rank
        per_adapter_full += a + b
        per_slot_sharded += a + _ceil_div(b, tp) if column else _ceil_div(a, tp) + b
    layers_per_stage = _ceil_div(arch.num_layers, pp)
    # The punica kernels' intermediate: one fp32 row of rank per slice per batched token.
    scratch = max_num_batched_tokens * max_rank * 3 * 4
    gpu = max_loras * per_slot_sharded * layers_per_stage * elem + scratch
    adapter = per_adapter_full * arch.num_layers * elem
    return LoRAMemory(
        gpu_bytes_per_gpu=gpu, host_bytes=max_cpu_loras * adapter * tp * pp, adapter_bytes=adapter
    )


class InsufficientMemory(ValueError):
    """Not even one sequence of ``max_model_len`` fits: vLLM would refuse to start."""


@dataclass(frozen=True)
class VllmFlags:
    """Engine arguments that follow from a memory plan on a GPU type."""

    dtype: str
    quantization: Quantization
    kv_cache_dtype: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    max_model_len: int
    max_num_seqs: int
    max_num_batched_tokens: int
    gpu_memory_utilization: float
    kv_cache_tokens: int  # what the engine will report; informational, not a flag
    kv_cache_bytes: int  # per GPU; a flag only where the engine cannot measure it (CPU)

    def args(self) -> list[str]:
        out = [
            f"--dtype={self.dtype}",
            f"--tensor-parallel-size={self.tensor_parallel_size}",
            f"--pipeline-parallel-size={self.pipeline_parallel_size}",
            f"--max-model-len={self.max_model_len}",
            f"--max-num-seqs={self.max_num_seqs}",
            f"--max-num-batched-tokens={self.max_num_batched_tokens}",
            f"--gpu-memory-utilization={self.gpu_memory_utilization}",
        ]
        if self.kv_cache_dtype.startswith("fp8"):
            out.append(f"--kv-cache-dtype={self.kv_cache_dtype}")
        if self.quantization is not Quantization.NONE:
            out.append(f"--quantization={self.quantization.value}")
        return out


def vllm_flags(plan: MemoryPlan, gpu: GPUType, gpu_memory_utilization: float = 0.9) -> VllmFlags:
    """The flags for ``plan`` on ``gpu``; raises ``InsufficientMemory`` if vLLM could not start."""
    return flags_for_memory(plan, gpu.memory_bytes, gpu_memory_utilization, gpu.name)


def flags_for_memory(
    plan: MemoryPlan, memory_bytes: int, gpu_memory_utilization: float, gpu_name: str = "the GPU"
) -> VllmFlags:
    """``vllm_flags`` for a GPU known only by its memory; ``max_num_seqs`` is the plan's
    concurrency, which the caller chose."""
    budget = kv_budget_bytes(plan, memory_bytes, gpu_memory_utilization)
    if budget // plan.kv_bytes_per_sequence < 1:
        raise InsufficientMemory(
            f"{plan.arch.name} needs {plan.non_kv_bytes_per_gpu / GIB:.1f} GiB per GPU before its"
            f" KV cache and {plan.kv_bytes_per_sequence / GIB:.2f} GiB for one"
            f" {plan.max_model_len}-token sequence; {gpu_name} offers"
            f" {memory_bytes / GIB * gpu_memory_utilization:.1f} GiB at utilization"
            f" {gpu_memory_utilization}"
        )
    return VllmFlags(
        dtype=plan.dtype,
        quantization=plan.quantization,
        kv_cache_dtype=plan.kv_cache_dtype,
        tensor_parallel_size=plan.tensor_parallel_size,
        pipeline_parallel_size=plan.pipeline_parallel_size,
        max_model_len=plan.max_model_len,
        max_num_seqs=plan.concurrency,
        max_num_batched_tokens=plan.max_num_batched_tokens,
        gpu_memory_utilization=gpu_memory_utilization,
        kv_cache_tokens=_whole_blocks(plan, budget),
        kv_cache_bytes=budget,
    )
