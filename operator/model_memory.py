"""How much GPU memory a model needs, and whether it fits a GPU at a given parallelism.

Two estimators behind one small interface, so placement can ask "does this fit?" without caring
how the answer was made:

- ``CatalogMemory`` uses the profiler's architecture catalog and vLLM-faithful memory model
  (weights, activations, runtime overhead, and a KV cache that must hold at least one sequence of
  ``maxModelLen`` tokens, which is what vLLM itself checks at start-up).
- ``ParameterCountMemory`` is the fallback for models outside the catalog: a parameter count read
  from the model's name ("...-8B-...", "Mixtral-8x7B") times the bytes per weight.

A model neither knows is reported as unknown and treated as fitting: the engine's own start-up
check is then the judge, and the status says so.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Protocol

from goodput.api.llmdeployment import LLMDeploymentSpec
from goodput.profiler import catalog
from goodput.profiler.architectures import ModelArchitecture
from goodput.profiler.hardware import GIB
from goodput.profiler.memory import (
    LoRAMemory,
    MemoryPlan,
    Quantization,
    VllmFlags,
    dtype_bytes,
    flags_for_memory,
    kv_budget_bytes,
    lora_memory,
    memory_plan,
)

# bitsandbytes serves 4-bit weights by default: closest to the grouped int4 formats.
_QUANTIZATION = {
    None: Quantization.NONE,
    "fp8": Quantization.FP8,
    "awq": Quantization.AWQ,
    "gptq": Quantization.GPTQ,
    "bitsandbytes": Quantization.GPTQ,
}
_BYTES_PER_WEIGHT = {Quantization.NONE: None, Quantization.FP8: 1.0, Quantization.INT8: 1.0}
_INT4_BYTES_PER_WEIGHT = 0.5 + 2.5 / 128  # 4 bits plus a scale and zero point per 128 weights


@dataclass(frozen=True)
class ModelProfile:
    """What is known about a model's size."""

    parameters: int | None
    weights_bytes: int | None
    kv_bytes_per_token: int | None  # whole model, one GPU (tensor = pipeline = 1)
    source: str  # how it was estimated, for the status


#: A typical request (the Azure LLM conversation trace: prompt ~1k tokens, output ~200), which
#: placement sizes replicas for and the engine's sequence limit is set from.
TYPICAL_PROMPT_TOKENS = 1024
TYPICAL_OUTPUT_TOKENS = 256
#: vLLM's own default for --max-num-seqs: more sequences per step rarely pays.
MAX_NUM_SEQS = 256


def typical_lengths(max_model_len: int) -> tuple[int, int]:
    """Prompt and output tokens of a typical request, cut to fit ``max_model_len``."""
    prompt = min(TYPICAL_PROMPT_TOKENS, max(1, max_model_len // 2))
    return prompt, min(TYPICAL_OUTPUT_TOKENS, max(1, max_model_len - prompt))


@dataclass(frozen=True)
class MemoryFit:
    """Whether one replica fits at a parallelism, and why (for the status message)."""

    fits: bool
    detail: str
    max_concurrency: int | None = None  # sequences of maxModelLen the KV cache holds at once
    #: The memory model's engine flags for this shape (None when the model's size is unknown).
    engine: VllmFlags | None = None


class ModelMemory(Protocol):
    """Sizes a model and judges whether a replica fits GPUs of a given memory."""

    def profile(self, spec: LLMDeploymentSpec) -> ModelProfile: ...

    def fit(
        self, spec: LLMDeploymentSpec, gpu_memory_bytes: int, tensor: int, pipeline: int
    ) -> MemoryFit: ...


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


class CatalogMemory:
    """The profiler's memory model, for architectures its offline catalog knows."""

    def architecture(self, spec: LLMDeploymentSpec) -> ModelArchitecture | None:
        for key in (spec.model.architecture, spec.model.source, spec.model.name):
            if key:
                try:
                    return catalog.get(key)
                except KeyError:
                    continue
        return None

    def profile(self, spec: LLMDeploymentSpec) -> ModelProfile:
        arch = self.architecture(spec)
        if arch is None:
            return ModelProfile(None, None, None, "unknown")
        plan = self._plan(spec, arch, 1, 1)
        return ModelProfile(
            parameters=arch.num_parameters,
            weights_bytes=plan.weights_bytes_total,
            kv_bytes_per_token=plan.kv_bytes_per_token,
            source=f"catalog:{arch.name}",
        )

    def _plan(
        self,
        spec: LLMDeploymentSpec,
        arch: ModelArchitecture,
        tp: int,
        pp: int,
        concurrency: int = 1,
    ) -> MemoryPlan:
        plan = memory_plan(
            arch,
            dtype=spec.model.dtype,
            quantization=_QUANTIZATION[spec.model.quantization],
            kv_dtype=spec.kv_cache.dtype,
            tp=tp,
            pp=pp,
            max_model_len=spec.model.max_model_len,
            concurrency=concurrency,
        )
        lora = self.lora(spec, arch, tp, pp)
        if lora is None:
            return plan
        # Reserved before the KV cache, as vLLM does: the replica is sized with it.
        return dataclasses.replace(plan, lora_bytes_per_gpu=lora.gpu_bytes_per_gpu)

    def lora(
        self, spec: LLMDeploymentSpec, arch: ModelArchitecture, tp: int = 1, pp: int = 1
    ) -> LoRAMemory | None:
        """What the replica's LoRA capacity (``spec.lora``) costs; None: it serves no LoRA."""
        capacity = spec.lora_capacity
        if capacity is None:
            return None
        return lora_memory(
            arch,
            max_loras=capacity.max_loras,
            max_rank=capacity.max_rank,
            max_cpu_loras=capacity.max_cpu_loras,
            dtype=spec.model.dtype,
            tp=tp,
            pp=pp,
        )

    def fit(
        self, spec: LLMDeploymentSpec, gpu_memory_bytes: int, tensor: int, pipeline: int
    ) -> MemoryFit:
        arch = self.architecture(spec)
        if arch is None:
            return MemoryFit(True, "model size unknown")
        try:
            plan = self._plan(spec, arch, tensor, pipeline)
        except ValueError as err:
            return MemoryFit(False, str(err))
        usable = int(gpu_memory_bytes * spec.resources.gpu_memory_utilization)
        kv_budget = usable - plan.non_kv_bytes_per_gpu
        need = plan.kv_bytes_per_sequence
        lora = f"{_gib(plan.lora_bytes_per_gpu)} LoRA slots, " if plan.lora_bytes_per_gpu else ""
        others = plan.non_kv_bytes_per_gpu - plan.weights_bytes_per_gpu - plan.lora_bytes_per_gpu
        detail = (
            f"per GPU: {_gib(plan.weights_bytes_per_gpu)} weights, {lora}"
            f"{_gib(others)} activations and "
            f"runtime, {_gib(max(kv_budget, 0))} left for KV cache of {_gib(usable)} usable; "
            f"one {plan.max_model_len}-token sequence needs {_gib(need)}"
        )
        if kv_budget < need:
            return MemoryFit(False, detail, max(kv_budget, 0) // max(need, 1))
        engine = self._engine(spec, arch, plan, gpu_memory_bytes)
        return MemoryFit(True, detail, kv_budget // need, engine)

    def _engine(
        self,
        spec: LLMDeploymentSpec,
        arch: ModelArchitecture,
        plan: MemoryPlan,
        gpu_memory_bytes: int,
    ) -> VllmFlags:
        """The memory model's flags for a replica that fits: as many typical requests as the
        KV cache holds (vLLM's default at most), each up to the plan's context length."""
        prompt, output = typical_lengths(plan.max_model_len)
        util = spec.resources.gpu_memory_utilization
        kv_tokens = kv_budget_bytes(plan, gpu_memory_bytes, util) // plan.kv_bytes_per_token
        seqs = max(1, min(MAX_NUM_SEQS, kv_tokens // (prompt + output)))
        sized = self._plan(
            spec, arch, plan.tensor_parallel_size, plan.pipeline_parallel_size, concurrency=seqs
        )
        return flags_for_memory(sized, gpu_memory_bytes, util)


_MOE = re.compile(r"(?<![\d.])(\d+)x(\d+(?:\.\d+)?)b(?![a-z])", re.IGNORECASE)
_DENSE = re.compile(r"(?<![\d.x])(\d+(?:\.\d+)?)b(?![a-z])", re.IGNORECASE)


def parameters_from_name(name: str) -> int | None:
    """A parameter count written in a model name: "Llama-3-8B" → 8e9, "Mixtral-8x7B" → 56e9
    (an upper bound: experts share attention weights)."""
    if m := _MOE.search(name):
        return int(int(m.group(1)) * float(m.group(2)) * 1e9)
    if m := _DENSE.search(name):
        return int(float(m.group(1)) * 1e9)
    return None


class ParameterCountMemory:
    """Weights from a parameter count in the model's name; no KV or activation model, so a
    replica fits when its weights take at most ``weight_share`` of the usable memory."""

    def __init__(self, weight_share: float = 0.8) -> None:
        self.weight_share = weight_share

    def _parameters(self, spec: LLMDeploymentSpec) -> int | None:
        for key in (spec.model.name, spec.model.source):
            if key and (count := parameters_from_name(key.rsplit("/", 1)[-1])):
                return count
        return None

    def _bytes_per_weight(self, spec: LLMDeploymentSpec) -> float:
        quant = _QUANTIZATION[spec.model.quantization]
        if quant in (Quantization.AWQ, Quantization.GPTQ):
            return _INT4_BYTES_PER_WEIGHT
        fixed = _BYTES_PER_WEIGHT.get(quant)
        if fixed is not None:
            return fixed
        return float(dtype_bytes("bfloat16" if spec.model.dtype == "auto" else spec.model.dtype))

    def profile(self, spec: LLMDeploymentSpec) -> ModelProfile:
        params = self._parameters(spec)
        if params is None:
            return ModelProfile(None, None, None, "unknown")
        weights = int(params * self._bytes_per_weight(spec))
        return ModelProfile(params, weights, None, "model name")

    def fit(
        self, spec: LLMDeploymentSpec, gpu_memory_bytes: int, tensor: int, pipeline: int
    ) -> MemoryFit:
        weights = self.profile(spec).weights_bytes
        if weights is None:
            return MemoryFit(True, "model size unknown")
        per_gpu = weights / (tensor * pipeline)
        allowed = gpu_memory_bytes * spec.resources.gpu_memory_utilization * self.weight_share
        return MemoryFit(
            per_gpu <= allowed,
            f"per GPU: {_gib(per_gpu)} weights (estimated from the name), "
            f"at most {_gib(allowed)} allowed",
        )


class EstimatedMemory:
    """The catalog's model when it knows the architecture, else the name-based estimate."""

    def __init__(self) -> None:
        self.catalog = CatalogMemory()
        self.by_name = ParameterCountMemory()

    def _pick(self, spec: LLMDeploymentSpec) -> ModelMemory:
        return self.catalog if self.catalog.architecture(spec) is not None else self.by_name

    def profile(self, spec: LLMDeploymentSpec) -> ModelProfile:
        return self._pick(spec).profile(spec)

    def fit(
        self, spec: LLMDeploymentSpec, gpu_memory_bytes: int, tensor: int, pipeline: int
    ) -> MemoryFit:
        return self._pick(spec).fit(spec, gpu_memory_bytes, tensor, pipeline)


def profiler_quantization(name: str | None) -> Quantization:
    """The profiler's weight format for ``spec.model.quantization``."""
    return _QUANTIZATION[name]
