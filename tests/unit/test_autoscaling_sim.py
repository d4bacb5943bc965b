"""The autoscaling benchmark's simulator (bench/autoscaling/sim.py) against what it claims: a
replica's timing is the profiler's step model, GPU time is counted while replicas exist, a
removed replica drains what it holds, and the router holds requests while no replica is ready."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from goodput.api.load_report import LoadReport
from goodput.profiler import catalog
from goodput.profiler.capacity import replica_timings

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "autoscaling"))

from contenders import StaticReplicas
from sim import Serving, simulate
from workload import DAY, Workload, compressed_day

TIMINGS = replica_timings(catalog.get("llama-3-8b"), catalog.gpu("H100-80GB"), context=1024)


def serving(cold_start_s: float = 60.0) -> Serving:
    return Serving(TIMINGS, limit=64, queue_cap=16, gpus_per_replica=2,
                   cold_start_s=cold_start_s, ttft_s=1.0, tpot_s=0.05)  # fmt: skip


def workload(arrivals: list[float], prompt: int, output: int, day_s: float) -> Workload:
    n = len(arrivals)
    return Workload("test", np.array(arrivals), np.full(n, prompt, dtype=np.int64),
                    np.full(n, output, dtype=np.int64), day_s, DAY)  # fmt: skip


class Recorder:
    """A static count that remembers what the reports said."""

    def __init__(self, name: str, counts: list[int]) -> None:
        self.name, self.counts = name, counts
        self.reports: list[dict[str, LoadReport]] = []
        self.held: list[int] = []

    def replicas(self, at_s: float, reports: dict[str, LoadReport], held: int, desired: int,
                 ready: int) -> int:  # fmt: skip
        self.reports.append(reports)
        self.held.append(held)
        return self.counts[min(len(self.reports) - 1, len(self.counts) - 1)]


def test_a_lone_requests_ttft_is_the_profilers_prefill() -> None:
    prefill = float(TIMINGS.prefill_s(np.array([1024.0]))[0])
    outcomes = []
    for ttft_s in (prefill * 0.99, prefill * 1.01):
        s = Serving(TIMINGS, limit=64, queue_cap=16, gpus_per_replica=1, cold_start_s=60.0,
                    ttft_s=ttft_s, tpot_s=TIMINGS.decode_step_s(1) * 1.01)  # fmt: skip
        w = workload([1.0], 1024, 101, 60.0)
        outcomes.append(simulate(w, s, StaticReplicas("one", 1), initial=1).outcomes)
    assert (outcomes[0].ttft_missed, outcomes[0].met) == (1, 0)
    # Then 100 decode steps at batch 1: TPOT = one step.
    assert (outcomes[1].ttft_missed, outcomes[1].tpot_missed, outcomes[1].met) == (0, 0, 1)


def test_gpu_time_is_replicas_times_gpus_times_the_day() -> None:
    result = simulate(workload([], 1, 1, 600.0), serving(), StaticReplicas("three", 3), initial=3)
    assert result.gpu_seconds == pytest.approx(3 * 2 * 600.0)


def test_a_request_behind_a_long_prefill_misses_its_tpot() -> None:
    # A short answer decoding while an 8k-token prompt is prefilled: its tokens wait for that
    # step, the per-request TPOT the SLO judges exceeds the objective.
    arrivals = [1.0, 1.001]
    w = Workload("test", np.array(arrivals), np.array([16, 8192]), np.array([3, 2]), 60.0, DAY)
    result = simulate(w, serving(), StaticReplicas("one", 1), initial=1)
    assert float(TIMINGS.prefill_s(np.array([8192.0]))[0]) > 2 * 0.05
    assert result.outcomes.tpot_missed == 1


def test_scaling_down_drains_and_scaling_up_waits_a_cold_start() -> None:
    arrivals = list(np.arange(1.0, 300.0, 0.5))
    scaler = Recorder("down-up", [1, 1, 1, 1, 1, 2])  # 1 from 15 s; 2 again from 90 s
    result = simulate(workload(arrivals, 512, 200, 300.0), serving(cold_start_s=60.0), scaler,
                      initial=2)  # fmt: skip
    assert result.outcomes.dropped == 0
    assert result.outcomes.judged == len(arrivals)  # every request finished
    ready = [r for _, _, r, _, _ in result.timeline]
    assert ready[0] == 1  # the drained replica no longer counts as ready
    at_90 = [t for t, *_ in result.timeline].index(90.0)
    assert ready[at_90 + 3] == 1 and ready[at_90 + 4] == 2  # ready 60 s after it was asked for


def test_requests_are_held_at_zero_replicas_and_served_once_one_starts() -> None:
    scaler = Recorder("from-zero", [1])
    result = simulate(workload([5.0, 6.0], 64, 8, 200.0), serving(cold_start_s=30.0), scaler,
                      initial=0)  # fmt: skip
    assert result.outcomes.dropped == 0 and result.outcomes.met == 0  # served, after 40 s
    assert scaler.held[0] == 2


def test_the_compressed_day_keeps_its_mean_and_its_trough() -> None:
    w = compressed_day("day", DAY, day_s=14_400.0, mean_rps=16.0)
    assert len(w) / w.day_s == pytest.approx(16.0, rel=0.02)
    _, hourly = w.rate(w.day_s / 24)
    assert hourly.argmin() in (3, 4, 5) and hourly.argmax() in range(10, 17)
    assert hourly.min() / hourly.max() == pytest.approx(0.2, abs=0.08)
