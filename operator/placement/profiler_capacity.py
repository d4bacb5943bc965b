"""SLO capacity from the profiler: its fitted step-latency model and queueing capacity model.

``goodput.profiler.capacity`` models vLLM's continuous batching with chunked prefill on top of a
step-latency regressor fitted to GPU timings, so it is the authority on what a replica sustains;
``RooflineCapacity`` remains the fallback for models the profiler's catalog does not know.
Results are cached per (model, SLO, lengths, GPU type, shape): a fleet has many deployments of
few models, and the operator solves again on every change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from goodput.operator.placement.capacity import ReplicaCapacity, RooflineCapacity
from goodput.operator.placement.demand import ModelDemand
from goodput.operator.placement.pools import GpuPool
from goodput.operator.placement.shape import Shape
from goodput.profiler import catalog
from goodput.profiler.capacity import SLO, LengthDistribution, capacity
from goodput.profiler.latency import LatencyModel


@dataclass
class ProfilerCapacity:
    """Requests/s within the SLO as the profiler predicts them (cached)."""

    fallback: ReplicaCapacity = field(default_factory=RooflineCapacity)
    _cache: dict[tuple[object, ...], float] = field(default_factory=dict)

    def requests_per_second(self, demand: ModelDemand, pool: GpuPool, shape: Shape) -> float:
        facts, target = demand.model, demand.target
        key = (
            facts,
            target.ttft_s,
            target.tpot_s,
            target.prompt_tokens,
            target.output_tokens,
            demand.gpu_memory_utilization,
            pool.gpu,
            shape.tensor,
            shape.pipeline,
        )
        if key in self._cache:
            return self._cache[key]
        try:
            arch = catalog.get(facts.name)
        except KeyError:
            rps = self.fallback.requests_per_second(demand, pool, shape)
        else:
            rps = capacity(
                arch,
                pool.gpu,
                tp=shape.tensor,
                pp=shape.pipeline,
                slo=SLO(target.ttft_s, target.tpot_s),
                lengths=LengthDistribution.fixed(target.prompt_tokens, target.output_tokens),
                model=LatencyModel.for_gpu(pool.gpu),
                quantization=facts.quantization,
                gpu_memory_utilization=demand.gpu_memory_utilization,
            ).max_rps
        self._cache[key] = rps
        return rps
