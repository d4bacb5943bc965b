"""An LLMDeployment's spec as the solver's ``ModelDemand``.

The replica count is ``spec.replicas`` (the scale subresource and the autoscaler move it), so the
solver places exactly that many. Typical request lengths are ``model_memory.typical_lengths``
(the Azure LLM conversation trace's: prompt ~1k tokens, output ~200): each replica must keep
``DEFAULT_CONCURRENCY`` such sequences in its KV cache, and at least one sequence of
``maxModelLen`` (vLLM refuses to start otherwise).
"""

from __future__ import annotations

from goodput.api.llmdeployment import LLMDeploymentSpec
from goodput.operator.model_memory import CatalogMemory, profiler_quantization, typical_lengths
from goodput.operator.placement.demand import ModelDemand, ServingTarget
from goodput.operator.placement.profiler_facts import model_facts

DEFAULT_CONCURRENCY = 16


def demand_from_spec(key: str, spec: LLMDeploymentSpec) -> ModelDemand | None:
    """The deployment's demand, or None when the profiler's catalog does not know the model."""
    arch = CatalogMemory().architecture(spec)
    if arch is None:
        return None
    facts = model_facts(
        arch,
        dtype=spec.model.dtype,
        quantization=profiler_quantization(spec.model.quantization),
        kv_dtype=spec.kv_cache.dtype,
    )
    max_len = spec.model.max_model_len or arch.max_position_embeddings
    prompt, output = typical_lengths(max_len)
    target = ServingTarget(
        ttft_s=spec.slo.ttft_ms / 1000,
        tpot_s=spec.slo.tpot_ms / 1000,
        prompt_tokens=prompt,
        output_tokens=output,
        concurrency=DEFAULT_CONCURRENCY,
        min_kv_tokens=max_len,
    )
    parallel = spec.resources.parallelism
    return ModelDemand(
        name=key,
        model=facts,
        target=target,
        min_replicas=spec.replicas,
        max_replicas=spec.replicas,
        gpu_types=tuple(spec.resources.gpu_types),
        tensor=parallel.tensor,
        pipeline=parallel.pipeline,
        gpu_memory_utilization=spec.resources.gpu_memory_utilization,
    )
