"""SLO capacity of one replica: requests per second it serves while meeting TTFT and TPOT.

``RooflineCapacity`` is a first-principles stand-in used until ``goodput.profiler.capacity``
provides fitted step-latency models: decoding is memory-bound, so a step reads every weight byte
of a GPU plus the KV of the batch; tensor parallelism adds two all-reduces per layer over the
node's links, pipeline stages add one activation hop per stage boundary. The batch is the largest
whose step time meets the TPOT target and whose KV fits; prefill is compute-bound and must meet
TTFT. Any object with the same method can replace it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from goodput.operator.gpu_catalog import NODE_NETWORK_BANDWIDTH, Interconnect, link_bandwidth
from goodput.operator.placement.demand import ModelDemand
from goodput.operator.placement.pools import GpuPool
from goodput.operator.placement.shape import Shape, kv_bytes_per_token_per_gpu

#: Fixed cost of one all-reduce, seconds (kernel launch and synchronisation).
ALLREDUCE_LATENCY = {
    Interconnect.NVSWITCH: 8e-6,
    Interconnect.NVLINK: 10e-6,
    Interconnect.PCIE: 25e-6,
}
#: Fixed cost of one pipeline hop between nodes, seconds.
STAGE_HOP_LATENCY = 30e-6


class ReplicaCapacity(Protocol):
    """Judges how many requests per second one replica of a shape serves within the SLO."""

    def requests_per_second(self, demand: ModelDemand, pool: GpuPool, shape: Shape) -> float:
        """0 when the SLO cannot be met with this shape on this pool."""
        ...


@dataclass(frozen=True, slots=True)
class RooflineCapacity:
    """Memory-bound decode and compute-bound prefill with achievable-efficiency factors."""

    bandwidth_efficiency: float = 0.75
    flops_efficiency: float = 0.45
    max_batch: int = 256  # vLLM's max_num_seqs default

    def decode_step_seconds(
        self, demand: ModelDemand, pool: GpuPool, shape: Shape, batch: float
    ) -> float:
        tp, pp = shape.tensor, shape.pipeline
        model, target = demand.model, demand.target
        bandwidth = pool.gpu.memory_bandwidth_bytes_per_s * self.bandwidth_efficiency
        context = target.prompt_tokens + target.output_tokens / 2
        micro = batch / pp
        kv_read = micro * context * kv_bytes_per_token_per_gpu(demand, tp, pp)
        stage = (shape.weights_per_gpu + kv_read) / bandwidth
        if tp > 1:
            activation = micro * model.hidden_size * 2
            per_layer = ALLREDUCE_LATENCY[pool.interconnect] + (
                2 * (tp - 1) / tp * activation / link_bandwidth(pool.gpu, pool.interconnect)
            )
            stage += 2 * (model.layers / pp) * per_layer
        hop = STAGE_HOP_LATENCY + micro * model.hidden_size * 2 / NODE_NETWORK_BANDWIDTH
        hops = (pp - 1) * hop
        return pp * stage + hops

    def requests_per_second(self, demand: ModelDemand, pool: GpuPool, shape: Shape) -> float:
        target = demand.target
        flops = pool.gpu.bf16_dense_flops_per_s * self.flops_efficiency
        prefill = 2 * demand.model.parameters * target.prompt_tokens / (flops * shape.tensor)
        if prefill > target.ttft_s:
            return 0.0
        base = self.decode_step_seconds(demand, pool, shape, 0.0)
        per_seq = self.decode_step_seconds(demand, pool, shape, 1.0) - base
        if base >= target.tpot_s:
            return 0.0
        slo_batch = (target.tpot_s - base) / per_seq if per_seq > 0 else float(self.max_batch)
        kv_batch = shape.kv_tokens / max(1, target.prompt_tokens + target.output_tokens)
        batch = min(slo_batch, kv_batch, float(self.max_batch))
        if batch < 1:
            return 0.0
        tokens_per_second = batch / self.decode_step_seconds(demand, pool, shape, batch)
        prefill_share = prefill / shape.pipeline  # stages prefill different requests at once
        return 1.0 / (target.output_tokens / tokens_per_second + prefill_share)
