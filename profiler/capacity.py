"""Capacity of one replica: the request rate it sustains within a TTFT/TPOT SLO.

A steady-state model of vLLM's continuous batching with chunked prefill, driven by the step-latency
model and bounded by the memory plan's KV cache:

* ``B`` sequences decode together; a decode step at batch ``B`` and the mean context takes
  ``t_d(B)``. Each request also needs its prompt prefilled, which costs ``t_pf`` of extra GPU time
  on top of the decode steps it rides along with (the prefill step's time less a decode step's).
* Little's law over the decode phase gives the rate: each request stays ``E[O]`` steps, so
  ``λ(B) = B / (E[O]·t_d(B) + B·E[t_pf])``; the step time seen by a decoding request (TPOT) is
  ``t_d(B) / (1 - λ·E[t_pf])``.
* TTFT is the prompt's own prefill in chunks of ``max_num_batched_tokens - B`` tokens plus the wait
  for the prefill work ahead of it (an M/G/1 queue whose utilisation is the prefill share).
The largest ``B`` whose TPOT, TTFT and KV demand all hold gives the replica's capacity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from goodput.profiler.architectures import ModelArchitecture
from goodput.profiler.datasets import load_azure_trace, load_sharegpt_lengths
from goodput.profiler.hardware import GPUType
from goodput.profiler.latency import LatencyModel, Step
from goodput.profiler.memory import (
    DEFAULT_MAX_NUM_BATCHED_TOKENS,
    Quantization,
    dtype_bytes,
    kv_cache_tokens,
    memory_plan,
    weight_format,
)

# vLLM's default --max-num-seqs.
DEFAULT_MAX_NUM_SEQS = 256


@dataclass(frozen=True)
class SLO:
    """Latency targets at a percentile (the CRD's ``spec.slo``)."""

    ttft_s: float
    tpot_s: float
    percentile: float = 0.99


@dataclass(frozen=True)
class LengthDistribution:
    """Prompt and output lengths (tokens) of the requests a replica will serve, as samples."""

    prompt_tokens: NDArray[np.float64]
    output_tokens: NDArray[np.float64]

    @classmethod
    def fixed(cls, prompt_tokens: int, output_tokens: int) -> LengthDistribution:
        return cls(np.array([float(prompt_tokens)]), np.array([float(output_tokens)]))

    @classmethod
    def from_trace(cls, name: str) -> LengthDistribution:
        """Lengths from the shared data: ``azure-conv``, ``azure-code`` or ``sharegpt``."""
        if name == "sharegpt":
            lengths = load_sharegpt_lengths()
            prompts, outputs = lengths.prompt_tokens, lengths.output_tokens
        elif name in ("azure-conv", "azure-code"):
            trace = load_azure_trace("conv" if name == "azure-conv" else "code")
            prompts, outputs = trace.context_tokens, trace.generated_tokens
        else:
            raise ValueError(f"unknown trace {name!r}: azure-conv, azure-code or sharegpt")
        return cls(prompts.astype(np.float64), np.maximum(outputs, 1).astype(np.float64))

    def truncated(self, max_model_len: int) -> LengthDistribution:
        """Drop requests the engine would reject (prompt + output beyond ``max_model_len``)."""
        keep = self.prompt_tokens + self.output_tokens <= max_model_len
        if not keep.any():
            raise ValueError(f"no request fits in max_model_len={max_model_len}")
        return LengthDistribution(self.prompt_tokens[keep], self.output_tokens[keep])

    @property
    def mean_prompt(self) -> float:
        return float(self.prompt_tokens.mean())

    @property
    def mean_output(self) -> float:
        return float(self.output_tokens.mean())


@dataclass(frozen=True)
class Capacity:
    """What one replica sustains within the SLO (``max_rps`` 0: the SLO cannot be met)."""

    max_rps: float
    max_batch: int  # largest decode batch whose step time meets the TPOT target and whose KV fits
    batch_at_max_rps: int
    tpot_s: float  # at max_rps
    ttft_p50_s: float
    ttft_p99_s: float  # at the SLO's percentile
    output_tokens_per_s: float
    kv_cache_tokens: int
    limited_by: str  # ttft | tpot | kv_cache | max_num_seqs | throughput | unattainable


@dataclass(frozen=True)
class ReplicaTimings:
    """Engine step times of one replica shape, from the step-latency model: what the capacity
    planner and the autoscaling simulator (bench/autoscaling) both run on, so the two cannot
    disagree about how fast a replica is."""

    decode_s: NDArray[np.float64]  # a decode step at batch 1..max_num_seqs, at ``context``
    context: int  # the decoding sequences' context the decode steps were predicted at
    prefill_grid: NDArray[np.float64]  # prompt lengths the prefill time was predicted at
    prefill_grid_s: NDArray[np.float64]
    chunk_tokens: int  # max_num_batched_tokens: a longer prompt is prefilled in chunks
    kv_cache_tokens: int  # per pipeline stage

    @property
    def max_num_seqs(self) -> int:
        return len(self.decode_s)

    def decode_step_s(self, batch: int) -> float:
        """A decode step at ``batch`` sequences (clamped to 1..max_num_seqs)."""
        return float(self.decode_s[min(max(batch, 1), len(self.decode_s)) - 1])

    def prefill_s(self, prompts: NDArray[np.float64]) -> NDArray[np.float64]:
        """Each prompt's prefill time: whole chunks of ``chunk_tokens`` plus the remainder.

        Predicted on a grid of chunk sizes and interpolated, so a trace of 20k prompts costs a
        few dozen predictions. Later chunks' attention to the earlier ones is not counted.
        """
        chunks, rest = np.divmod(prompts.astype(np.int64), self.chunk_tokens)
        rest_time = np.where(rest > 0, np.interp(rest, self.prefill_grid, self.prefill_grid_s), 0.0)
        result: NDArray[np.float64] = chunks * self.prefill_grid_s[-1] + rest_time
        return result


def replica_timings(
    arch: ModelArchitecture,
    gpu: GPUType,
    *,
    tp: int = 1,
    pp: int = 1,
    context: int,
    model: LatencyModel | None = None,
    quantization: Quantization | str = Quantization.NONE,
    kv_dtype: str = "auto",
    max_model_len: int | None = None,
    gpu_memory_utilization: float = 0.9,
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
    max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
) -> ReplicaTimings:
    """Step times of one replica of ``arch`` on ``tp x pp`` ``gpu``s, sequences decoding at
    ``context`` tokens. A pipeline's steps pass every stage, so they take ``pp`` stage times."""
    model = model or LatencyModel.for_gpu(gpu)
    model_len = max_model_len or arch.max_position_embeddings
    plan = memory_plan(
        arch, quantization=quantization, kv_dtype=kv_dtype, tp=tp, pp=pp,
        max_model_len=model_len, max_num_batched_tokens=max_num_batched_tokens,
    )  # fmt: skip
    weight_bytes = weight_format(plan.quantization, dtype_bytes(plan.dtype)).bytes_per_weight(
        arch.hidden_size
    )
    kv_bytes = float(dtype_bytes(plan.kv_cache_dtype))
    stage_layers = -(-arch.num_layers // pp)
    decode_steps = [
        Step(arch, tp, decode_seqs=b, decode_context=context, layers=stage_layers,
             weight_bytes=weight_bytes, kv_bytes=kv_bytes)
        for b in range(1, max_num_seqs + 1)
    ]  # fmt: skip
    budget = max_num_batched_tokens
    grid = np.unique(np.append(2 ** np.arange(0, math.floor(math.log2(budget)) + 1), budget))
    prefill_steps = [
        Step(arch, tp, prefill_seqs=1, prefill_tokens=int(n), layers=stage_layers,
             cuda_graph=n <= 512, weight_bytes=weight_bytes, kv_bytes=kv_bytes)
        for n in grid
    ]  # fmt: skip
    return ReplicaTimings(
        decode_s=pp * model.predict(decode_steps, gpu),
        context=context,
        prefill_grid=grid.astype(np.float64),
        prefill_grid_s=pp * model.predict(prefill_steps, gpu),
        chunk_tokens=budget,
        kv_cache_tokens=kv_cache_tokens(plan, gpu, gpu_memory_utilization),
    )


def capacity(
    arch: ModelArchitecture,
    gpu: GPUType,
    *,
    tp: int = 1,
    pp: int = 1,
    slo: SLO,
    lengths: LengthDistribution,
    model: LatencyModel | None = None,
    quantization: Quantization | str = Quantization.NONE,
    kv_dtype: str = "auto",
    max_model_len: int | None = None,
    gpu_memory_utilization: float = 0.9,
    max_num_seqs: int = DEFAULT_MAX_NUM_SEQS,
    max_num_batched_tokens: int = DEFAULT_MAX_NUM_BATCHED_TOKENS,
) -> Capacity:
    """Requests/s one replica of ``arch`` on ``tp x pp`` ``gpu``s sustains within ``slo``."""
    lengths = lengths.truncated(max_model_len or arch.max_position_embeddings)
    mean_prompt, mean_output = lengths.mean_prompt, lengths.mean_output
    # Each of the pp stages holds its own group of B sequences; a token passes every stage.
    timings = replica_timings(
        arch, gpu, tp=tp, pp=pp, context=int(mean_prompt + mean_output / 2), model=model,
        quantization=quantization, kv_dtype=kv_dtype, max_model_len=max_model_len,
        gpu_memory_utilization=gpu_memory_utilization, max_num_seqs=max_num_seqs,
        max_num_batched_tokens=max_num_batched_tokens,
    )  # fmt: skip
    kv_tokens = timings.kv_cache_tokens
    batches = np.arange(1, max_num_seqs + 1)
    t_decode = timings.decode_s

    # A prompt's prefill on its own sets its TTFT; riding along with decodes that read the
    # weights anyway, it adds its time less a one-token step's to the GPU's work.
    prefill = timings.prefill_s(lengths.prompt_tokens)
    prefill_extra = np.maximum(prefill - float(t_decode[0]), 0.0)
    mean_extra, second_moment = float(prefill_extra.mean()), float((prefill_extra**2).mean())

    rate = batches / (mean_output * t_decode + batches * mean_extra) * pp
    busy = np.minimum(rate * mean_extra / pp, 0.999)  # share of time spent prefilling
    tpot = t_decode / (1 - busy)
    # M/G/1 waiting time for the prefill work ahead (Pollaczek-Khinchine), exponential tail.
    mean_wait = (rate / pp) * second_moment / (2 * (1 - busy))
    ttft_p50 = float(np.quantile(prefill, 0.5)) + _wait_quantile(mean_wait, busy, 0.5)
    own = float(np.quantile(prefill, slo.percentile))
    ttft_p = own + _wait_quantile(mean_wait, busy, slo.percentile)
    kv_ok = batches * (mean_prompt + mean_output) <= kv_tokens * pp
    tpot_ok = tpot <= slo.tpot_s
    ttft_ok = np.asarray(ttft_p <= slo.ttft_s)
    feasible = kv_ok & tpot_ok & ttft_ok
    decode_fits = kv_ok & (t_decode <= slo.tpot_s)
    max_batch = int(batches[decode_fits].max()) if decode_fits.any() else 0
    if not feasible.any():
        return Capacity(0.0, max_batch, 0, float(tpot[0]), float(ttft_p50[0]), float(ttft_p[0]),
                        0.0, kv_tokens, "unattainable")  # fmt: skip
    best = int(np.argmax(np.where(feasible, rate, -1.0)))
    limited_by = _limit(best, len(batches), kv_ok, tpot_ok, ttft_ok)
    return Capacity(
        max_rps=float(rate[best]),
        max_batch=max_batch,
        batch_at_max_rps=int(batches[best]),
        tpot_s=float(tpot[best]),
        ttft_p50_s=float(ttft_p50[best]),
        ttft_p99_s=float(ttft_p[best]),
        output_tokens_per_s=float(rate[best] * mean_output),
        kv_cache_tokens=kv_tokens,
        limited_by=limited_by,
    )


def _wait_quantile(
    mean_wait: NDArray[np.float64], busy: NDArray[np.float64], q: float
) -> NDArray[np.float64]:
    """Quantile of an M/G/1 wait approximated as P(W > t) = busy · exp(-t · busy / mean)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(busy > 0, mean_wait / busy, 0.0)
        tail = np.log(np.maximum(busy, 1e-12) / (1 - q))
    result: NDArray[np.float64] = np.maximum(0.0, scale * tail)
    return result


def _limit(best: int, n: int, kv_ok: NDArray[np.bool_], tpot_ok: NDArray[np.bool_],
           ttft_ok: NDArray[np.bool_]) -> str:  # fmt: skip
    """What stopped the batch from growing past ``best``."""
    if best + 1 >= n:
        return "max_num_seqs"
    nxt = best + 1
    if not kv_ok[nxt]:
        return "kv_cache"
    if not tpot_ok[nxt]:
        return "tpot"
    if not ttft_ok[nxt]:
        return "ttft"
    return "throughput"  # a larger batch would still meet the SLO but serve fewer requests/s
