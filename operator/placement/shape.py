"""Parallel shapes: how many GPUs one replica needs and how they are split.

A shape is a tensor-parallel degree (GPUs of one node that share every layer) times a pipeline
degree (nodes that each hold a slice of the layers). Tensor parallelism needs the fast links of
one interconnect domain; pipeline parallelism only passes activations between stages, so it is
the way across nodes, used only when no single node can hold the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from goodput.operator.placement.demand import ModelDemand
from goodput.operator.placement.pools import GpuPool


@dataclass(frozen=True, slots=True)
class Shape:
    """A feasible parallel shape on one GPU pool, with its memory plan."""

    tensor: int
    pipeline: int
    weights_per_gpu: int
    kv_tokens: int  # tokens the replica's KV cache holds

    @property
    def gpus(self) -> int:
        return self.tensor * self.pipeline


def kv_bytes_per_token_per_gpu(demand: ModelDemand, tensor: int, pipeline: int) -> float:
    """KV heads shard over tensor ranks until each rank has one; beyond that they are copied."""
    model = demand.model
    return model.kv_bytes_per_token / (min(tensor, max(1, model.kv_heads)) * pipeline)


def memory_plan(demand: ModelDemand, pool: GpuPool, tensor: int, pipeline: int) -> Shape | None:
    """The shape's memory plan, or None when weights plus the SLO's KV headroom do not fit."""
    usable = pool.gpu.memory_bytes * demand.gpu_memory_utilization - demand.model.overhead_bytes
    weights = -(-demand.model.weights_bytes // (tensor * pipeline))
    spare = usable - weights
    if spare <= 0:
        return None
    kv_tokens = int(spare / kv_bytes_per_token_per_gpu(demand, tensor, pipeline))
    if kv_tokens < demand.target.kv_tokens:
        return None
    return Shape(tensor, pipeline, weights, kv_tokens)


def split_layers(layers: int, stage_memory: list[float]) -> list[int]:
    """Layers per pipeline stage, proportional to each stage's memory (largest remainder).

    Every stage gets at least one layer; equal stages get an even split.
    """
    if not stage_memory:
        return []
    total = sum(stage_memory)
    exact = [layers * m / total for m in stage_memory]
    counts = [max(1, int(x)) for x in exact]
    order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - int(exact[i])), i))
    i = 0
    while sum(counts) < layers:
        counts[order[i % len(order)]] += 1
        i += 1
    while sum(counts) > layers:
        shrinkable = [k for k in range(len(counts)) if counts[k] > 1]
        j = max(shrinkable, key=lambda k: (counts[k] - exact[k], k))
        counts[j] -= 1
    return counts


class ShapeChooser(Protocol):
    """Judges which parallel shapes a deployment may take on a GPU pool, best first."""

    def candidates(self, demand: ModelDemand, pool: GpuPool) -> list[Shape] | str:
        """Shapes that hold the model, in order of preference, or why none does."""
        ...


@dataclass(frozen=True, slots=True)
class SmallestFittingShape:
    """The fewest GPUs that hold weights plus KV headroom; tensor parallelism first.

    Tensor degrees are powers of two that divide the attention heads and fit one node (its
    interconnect domain), smallest first: a bigger group only buys KV room and per-token speed at
    the price of all-reduce traffic, and the solver moves to the next candidate when a shape
    cannot meet the SLO. Pipeline stages across nodes come only when no tensor group of one node
    holds the model; among pipelined shapes, fewest GPUs first, then fewest stages (fewer hops).
    """

    max_pipeline: int = 16

    def tensor_degrees(self, demand: ModelDemand, pool: GpuPool) -> list[int]:
        heads = demand.model.attention_heads
        out, tp = [], 1
        while tp <= pool.max_gpus_per_node:
            if heads <= 0 or heads % tp == 0:
                out.append(tp)
            tp *= 2
        return out

    def candidates(self, demand: ModelDemand, pool: GpuPool) -> list[Shape] | str:
        degrees = self.tensor_degrees(demand, pool)
        if demand.tensor is not None:
            if demand.tensor > pool.max_gpus_per_node:
                return f"tensor {demand.tensor} exceeds the {pool.max_gpus_per_node} GPUs of a node"
            degrees = [demand.tensor]
        max_pp = min(self.max_pipeline, pool.nodes, demand.model.layers)
        if demand.pipeline is not None:
            if demand.pipeline > 1 and demand.pipeline > pool.nodes:
                return f"pipeline {demand.pipeline} exceeds its {pool.nodes} nodes"
            stages = [demand.pipeline]
        else:
            single = [s for tp in degrees if (s := memory_plan(demand, pool, tp, 1)) is not None]
            if single:
                return single
            stages = list(range(2, max_pp + 1))
        shapes = [
            s
            for tp in degrees
            for pp in stages
            if (s := memory_plan(demand, pool, tp, pp)) is not None
        ]
        if shapes:
            return sorted(shapes, key=lambda s: (s.gpus, s.pipeline))[:8]
        tensor = f"tensor parallelism <= {max(degrees, default=0)} within one interconnect domain"
        if stages == [1]:
            return f"{tensor} is too small"
        return f"{tensor} x pipeline <= {max(stages, default=1)} across nodes is too small"
