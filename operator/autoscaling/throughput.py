"""What one replica sustains within the SLO: the autoscaler's unit of supply.

The profiler's capacity model (``goodput.profiler.capacity``: the step-latency model under
continuous batching, TTFT at the SLO's percentile, TPOT, KV cache) answers in requests per
second for a length distribution. The gateways report mean prompt and output tokens, not whole
distributions, and the TTFT percentile depends on the long tail of prompts; so the distribution's
shape comes from a reference (by default the Azure conversation trace) and its scale from what
the pods report.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

from goodput.profiler.architectures import ModelArchitecture
from goodput.profiler.capacity import SLO, LengthDistribution, capacity
from goodput.profiler.hardware import GPUType
from goodput.profiler.memory import Quantization


class ReplicaThroughput(Protocol):
    def requests_per_second(self, mean_prompt: float | None, mean_output: float | None) -> float:
        """Requests/s one replica serves within the SLO for requests of these mean lengths
        (None: not observed yet; the model's own assumption). 0: the SLO cannot be met."""
        ...


def _bucket(value: float, step: float = 0.05) -> float:
    """Round to a 5 % grid on a log scale: means that wander a little reuse one prediction."""
    return math.exp(round(math.log(max(value, 1.0)) / step) * step)


@dataclass
class ProfilerThroughput:
    """``goodput.profiler.capacity`` for one replica shape, the ``reference`` lengths scaled to
    the reported means (cached per 5 % bucket of each mean)."""

    arch: ModelArchitecture
    gpu: GPUType
    slo: SLO
    reference: LengthDistribution
    tp: int = 1
    pp: int = 1
    quantization: Quantization | str = Quantization.NONE
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    _cache: dict[tuple[float, float], float] = field(default_factory=dict, repr=False)

    def requests_per_second(self, mean_prompt: float | None, mean_output: float | None) -> float:
        prompt = _bucket(mean_prompt or self.reference.mean_prompt)
        output = _bucket(mean_output or self.reference.mean_output)
        key = (prompt, output)
        if key not in self._cache:
            lengths = LengthDistribution(
                self.reference.prompt_tokens * (prompt / self.reference.mean_prompt),
                self.reference.output_tokens * (output / self.reference.mean_output),
            )
            self._cache[key] = capacity(
                self.arch,
                self.gpu,
                tp=self.tp,
                pp=self.pp,
                slo=self.slo,
                lengths=lengths,
                quantization=self.quantization,
                max_model_len=self.max_model_len,
                gpu_memory_utilization=self.gpu_memory_utilization,
            ).max_rps
        return self._cache[key]
