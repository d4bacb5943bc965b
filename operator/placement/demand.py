"""What one LLMDeployment needs from the fleet, as plain data.

The solver never calls the profiler itself: an adapter fills these from ``goodput.profiler``
(architecture catalog, memory plan, capacity model) and the LLMDeployment spec, so the solver is
pure and testable with hand-written numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3


@dataclass(frozen=True, slots=True)
class ModelFacts:
    """Architecture facts that decide memory and communication."""

    name: str
    weights_bytes: int
    parameters: int  # touched by each token (active parameters of an MoE)
    layers: int
    attention_heads: int
    kv_heads: int
    hidden_size: int
    kv_bytes_per_token: int  # all layers, K and V
    #: Per-GPU memory besides weights and KV: activations of a prefill chunk, CUDA context,
    #: graphs and NCCL buffers. The profiler's memory plan gives it; 1 GiB when unknown.
    overhead_bytes: int = GIB
    quantization: str = "none"  # weight format, as the profiler names it


@dataclass(frozen=True, slots=True)
class ServingTarget:
    """The SLO and the load one deployment must serve."""

    ttft_s: float
    tpot_s: float
    prompt_tokens: int  # typical prompt length
    output_tokens: int  # typical output length
    concurrency: int  # sequences one replica must hold in its KV cache at once
    target_rps: float | None = None  # demand; None: serve at min replicas
    min_kv_tokens: int = 0  # e.g. one sequence of maxModelLen, which vLLM checks at start-up

    @property
    def kv_tokens(self) -> int:
        """KV headroom one replica needs: every concurrent sequence at full length."""
        return max(self.min_kv_tokens, self.concurrency * (self.prompt_tokens + self.output_tokens))


@dataclass(frozen=True, slots=True)
class ModelDemand:
    """One deployment to place. ``name`` is its key (``namespace/name``)."""

    name: str
    model: ModelFacts
    target: ServingTarget
    min_replicas: int = 1
    max_replicas: int = 1
    gpu_types: tuple[str, ...] = ()  # user's preference order; empty: any
    tensor: int | None = None  # fixed by the user; None: chosen by placement
    pipeline: int | None = None
    gpu_memory_utilization: float = 0.9  # share of each GPU the engine may use
    #: Placement priority: under scarcity a higher one goes short last (arrival order never
    #: decides). 0 unless the spec says otherwise.
    priority: int = 0
    #: Replicas someone who measures load asks for (the autoscaler's decision, the scale
    #: subresource); used as demand when no target rate is given: that many replicas of the
    #: best shape's capacity. None: no such input.
    desired_replicas: int | None = None
