"""The autoscaler's decision (``goodput.operator.autoscaling``) over synthetic and recorded
metric series: data in, a ``ScaleDecision`` with its reason out."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np
import pytest

from goodput.api.llmdeployment import AutoscalingSpec
from goodput.api.load_report import LoadReport
from goodput.operator.autoscaling import (
    Autoscaler,
    AutoscalerState,
    AutoscalingPolicy,
    Bounds,
    LoadSample,
    LoadWindow,
    ProfilerThroughput,
    ScaleDecision,
    TrendForecast,
    Unplaceable,
)
from goodput.operator.autoscaling.rule import replicas_for
from goodput.profiler import catalog
from goodput.profiler.capacity import SLO, LengthDistribution, capacity
from goodput.profiler.cold_start import ColdStart

TICK = 15.0
COLD = 120.0


@dataclass
class FixedThroughput:
    """A replica serves ``rps`` whatever the lengths (the profiler is tested on its own)."""

    rps: float = 4.0

    def requests_per_second(self, mean_prompt: float | None, mean_output: float | None) -> float:
        return self.rps


def autoscaler(rps: float = 4.0) -> Autoscaler:
    return Autoscaler(FixedThroughput(rps), cold_start_s=COLD, tick_s=TICK)


def sample(at: float, rate: float, **kw: int) -> LoadSample:
    """A tick at ``rate`` whose requests all met the SLO unless ``met`` says otherwise."""
    judged = kw.pop("judged", round(rate * TICK))
    met = kw.pop("met", judged)
    return LoadSample(at_s=at, arrival_rps=rate, span_s=TICK, judged=judged, met=met, **kw)


@dataclass
class Run:
    """Replays a series through the autoscaler the way the operator's timer would: spec.replicas
    follows each decision; replicas become ready one cold start after they were asked for."""

    scaler: Autoscaler
    bounds: Bounds
    replicas: int
    attainment: float = 0.99
    state: AutoscalerState = field(default_factory=AutoscalerState)

    def __post_init__(self) -> None:
        self.decisions: list[ScaleDecision] = []
        self._ready_at: list[float] = [-math.inf] * self.replicas

    def ready(self, at: float) -> int:
        return sum(1 for t in self._ready_at if t <= at)

    def step(self, s: LoadSample, **kw: object) -> ScaleDecision:
        decision, self.state = self.scaler.decide(
            self.state,
            s,
            desired=self.replicas,
            ready=self.ready(s.at_s),
            bounds=self.bounds,
            slo_attainment=self.attainment,
            **kw,  # type: ignore[arg-type]
        )
        self.decisions.append(decision)
        if decision.replicas > self.replicas:
            self._ready_at += [s.at_s + COLD] * (decision.replicas - self.replicas)
        else:
            self._ready_at = self._ready_at[: decision.replicas]
        self.replicas = decision.replicas
        return decision

    def play(self, rates: Iterable[float], start: float = 0.0, **kw: int) -> list[ScaleDecision]:
        return [self.step(sample(start + i * TICK, r, **kw)) for i, r in enumerate(rates)]

    @property
    def changes(self) -> int:
        return sum(1 for d in self.decisions if d.direction != "none")


def steady(run: Run, rate: float, seconds: float, start: float = 0.0) -> float:
    """Feed ``rate`` for ``seconds``; returns the time after."""
    n = int(seconds / TICK)
    run.play([rate] * n, start=start)
    return start + n * TICK


# -- up --------------------------------------------------------------------------------------


def need(rate: float, headroom: float = 0.6) -> int:
    return replicas_for(rate, 4.0, headroom)


def test_a_ramp_is_sized_for_the_rate_one_cold_start_ahead() -> None:
    # 8 req/s, then +0.05 req/s every second for 15 minutes.
    run = Run(autoscaler(), Bounds(1, 30), replicas=need(8.0))
    t = steady(run, 8.0, 600)
    ramp = [8.0 + 0.05 * i * TICK for i in range(1, 61)]
    decisions = run.play(ramp, start=t)
    # 10 minutes in, the slope is known: demand = the last minute's rate + slope x lead.
    late = decisions[40]
    last_minute = sum(ramp[37:41]) / 4
    assert late.demand_rps == pytest.approx(last_minute + 0.05 * (COLD + TICK), rel=0.02)
    assert late.replicas == need(late.demand_rps)


def test_a_follower_without_the_forecast_is_behind_on_a_ramp() -> None:
    flat = Autoscaler(FixedThroughput(), cold_start_s=COLD, tick_s=TICK,
                      forecast=TrendForecast(damping=0.0))  # fmt: skip
    ours, theirs = Run(autoscaler(), Bounds(1, 30), 3), Run(flat, Bounds(1, 30), 3)
    rates = [8.0] * 40 + [8.0 + 0.05 * i * TICK for i in range(1, 61)]
    mine, followed = ours.play(rates), theirs.play(rates)
    assert all(a.replicas >= b.replicas for a, b in zip(mine, followed, strict=True))
    assert sum(a.replicas > b.replicas for a, b in zip(mine, followed, strict=True)) >= 10


def test_a_backlog_scales_up_even_at_a_steady_rate() -> None:
    run = Run(autoscaler(), Bounds(1, 20), replicas=need(10.0))
    t = steady(run, 10.0, 300)
    d = run.step(sample(t, 10.0, queue=240))  # 240 waiting: 4 req/s more for a minute
    assert (d.reason, d.replicas) == ("ScaleUpBacklog", need(14.0))


def test_misses_while_replicas_start_ask_for_no_more_replicas() -> None:
    # The same surge twice, once with every request missing its SLO while the replicas start:
    # the replicas already asked for are the answer, the model is not corrected.
    def surge(miss: bool) -> list[ScaleDecision]:
        run = Run(autoscaler(), Bounds(1, 20), replicas=need(6.0))
        t = steady(run, 6.0, 600)
        decisions: list[ScaleDecision] = []
        for i in range(8):  # two minutes: within the cold start
            asked = any(d.direction == "up" for d in decisions)
            extra = {"met": 0} if miss and asked else {}
            decisions.append(run.step(sample(t + i * TICK, 16.0, **extra)))
        return decisions

    met, missed = surge(False), surge(True)
    assert [d.replicas for d in missed] == [d.replicas for d in met]
    assert missed[-1].replicas >= need(16.0)
    assert all(d.correction == 1.0 for d in missed)


def test_slo_misses_on_loaded_replicas_correct_the_model_step_by_step() -> None:
    run = Run(autoscaler(), Bounds(1, 20), replicas=need(12.0))
    t = steady(run, 12.0, 1800)
    assert run.decisions[-1].reason == "Steady"
    # Now 10 % of requests miss: the profiler's figure was optimistic.
    misses = run.play([12.0] * 120, start=t, met=162)
    corrections = [d.correction for d in misses]
    steps = [i for i in range(1, len(misses)) if corrections[i] < corrections[i - 1]]
    assert corrections[steps[0]] == pytest.approx(0.9)
    # Each step waits for the last one's replicas to start and be judged.
    assert all((b - a) * TICK > COLD for a, b in pairwise(steps))
    assert min(corrections) >= AutoscalingPolicy().min_correction
    ups = [d for d in misses if d.direction == "up"]
    assert ups and ups[0].reason == "ScaleUpSLOMissed"
    assert run.replicas > need(12.0)


def test_the_correction_creeps_back_while_the_slo_is_met_under_load() -> None:
    run = Run(autoscaler(), Bounds(1, 20), replicas=8)
    run.state = AutoscalerState(correction=0.5)
    decisions = run.play([12.0] * 240)  # an hour, every request met
    corrections = [d.correction for d in decisions]
    assert corrections[-1] > 0.6
    assert corrections == sorted(corrections)  # up only, a quarter step per window at most
    assert corrections[-1] <= 0.5 * 1.025 ** (240 * TICK / 300 + 1)


def test_slo_missed_on_idle_replicas_warns_without_correcting_or_scaling() -> None:
    run = Run(autoscaler(), Bounds(1, 20), replicas=6)
    decisions = run.play([2.0] * 40, judged=60, met=30)
    assert all(d.direction == "none" for d in decisions)
    assert decisions[-1].warning and "the SLO is missed" in decisions[-1].message
    assert decisions[-1].correction == 1.0


def test_the_maximum_caps_and_warns() -> None:
    run = Run(autoscaler(), Bounds(1, 5), replicas=5)
    d = run.step(sample(0.0, 40.0))
    assert (d.replicas, d.reason, d.warning) == (5, "AtMaxReplicas", True)


# -- down ------------------------------------------------------------------------------------


def test_scale_down_waits_for_the_stabilisation_window() -> None:
    run = Run(autoscaler(), Bounds(1, 20, stabilization_s=300), replicas=need(20.0))
    t = steady(run, 20.0, 600)
    assert run.replicas == need(20.0)
    decisions = run.play([4.0] * 60, start=t)
    downs = [i for i, d in enumerate(decisions) if d.direction == "down"]
    # Nothing for one window after the drop (the 20 req/s recommendations are still in it) ...
    assert (downs[0] + 1) * TICK >= 300
    assert {d.reason for d in decisions[: downs[0]]} <= {"ScaleDownStabilizing", "Steady"}
    # ... then down to what 4 req/s needs with the scale-down headroom.
    assert run.replicas == replicas_for(4.0, 4.0, AutoscalingPolicy().scale_down_headroom)
    assert all((b - a) * TICK >= 60 for a, b in pairwise(downs))


def test_the_hysteresis_band_holds_the_count() -> None:
    # 5 replicas: up past 15.1 req/s (R + 0.6 sqrt R > 5), down below 10.2 (R + 0.9 sqrt R <= 4).
    run = Run(autoscaler(), Bounds(1, 20), replicas=5)
    rng = np.random.default_rng(0)
    run.play(list(rng.uniform(11.0, 14.0, size=200)))
    assert run.changes == 0


@pytest.mark.parametrize("phase_s", [240, 900])
def test_a_load_oscillating_across_a_boundary_does_not_flap(phase_s: int) -> None:
    # A square wave between 8 req/s (4 replicas) and 18 req/s (6): two hours of it.
    run = Run(autoscaler(), Bounds(1, 20), replicas=need(18.0))
    wave = [8.0 if (i * TICK // phase_s) % 2 == 0 else 18.0 for i in range(480)]
    run.play(wave)
    if phase_s < 300:
        # Phases shorter than the stabilisation window: it stays at the peaks' count (one more
        # where the trend of a window that ends high looks like a ramp).
        assert run.changes <= 1
        assert all(need(18.0) <= d.replicas <= need(18.0) + 1 for d in run.decisions)
    else:
        # Longer ones are followed, a few changes a phase (the last minute's level climbs over
        # four ticks), never one a tick.
        assert run.changes <= 3 * (480 * TICK / phase_s)


def test_no_scale_down_within_one_window_of_its_own_start() -> None:
    run = Run(autoscaler(), Bounds(1, 20, stabilization_s=300), replicas=8)
    decisions = run.play([1.0] * 19)  # 285 s
    assert all(d.direction == "none" for d in decisions)
    assert "started less than one window ago" in decisions[-1].message


# -- zero ------------------------------------------------------------------------------------


def test_an_idle_deployment_goes_to_zero_after_the_idle_period_and_back_on_a_request() -> None:
    bounds = Bounds.from_spec(
        AutoscalingSpec(enabled=True, minReplicas=0, maxReplicas=4, scaleToZeroAfterSeconds=600)
    )
    run = Run(autoscaler(), bounds, replicas=1)
    t = steady(run, 2.0, 300)
    idle = run.play([0.0] * 45, start=t)  # 675 s without a request
    zero = next(i for i, d in enumerate(idle) if d.replicas == 0)
    assert idle[zero].reason == "ScaleToZero"
    assert 600 <= (zero + 1) * TICK <= 600 + TICK
    t += 45 * TICK
    assert run.step(sample(t, 0.0)).reason == "ScaledToZero"
    # A router holding one request for want of a replica: one replica, at once.
    back = run.step(LoadSample(at_s=t + TICK, arrival_rps=0.0, held=1))
    assert (back.reason, back.replicas) == ("ScaleUpFromZero", 1)


def test_a_busy_zero_scales_to_what_the_rate_needs() -> None:
    run = Run(autoscaler(), Bounds(0, 10, idle_before_zero_s=600), replicas=0)
    assert run.step(sample(0.0, 10.0, judged=0)).replicas == need(10.0)


def test_min_replicas_one_never_goes_to_zero() -> None:
    run = Run(autoscaler(), Bounds.from_spec(AutoscalingSpec(minReplicas=1)), replicas=1)
    run.play([0.0] * 200)
    assert run.replicas == 1


def test_the_spec_default_idle_period_applies_with_min_zero() -> None:
    assert Bounds.from_spec(AutoscalingSpec(minReplicas=0)).idle_before_zero_s == 600
    assert Bounds.from_spec(AutoscalingSpec(minReplicas=1)).idle_before_zero_s is None


# -- placement -------------------------------------------------------------------------------


def test_a_scale_up_that_cannot_be_placed_is_reported_not_retried_until_the_fleet_changes() -> None:
    run = Run(autoscaler(), Bounds(1, 20), replicas=need(10.0))
    t = steady(run, 10.0, 600)
    t = steady(run, 20.0, 60, start=t)
    assert run.replicas == need(20.0) == 7
    blocked = Unplaceable(
        wanted=7, placed=5, reason="InsufficientGPUs: 0 of 8 free", fleet_version="v1"
    )
    later = [
        run.step(sample(t + i * TICK, 20.0), unplaceable=blocked, fleet_version="v1")
        for i in range(1, 10)
    ]
    assert all(d.replicas == 5 for d in later)
    assert later[0].reason == "ScaleUpUnplaceable" and later[0].warning
    assert "the fleet holds 5: InsufficientGPUs" in later[0].message
    # A node joined: the scale-up is tried again.
    retry = run.step(sample(t + 10 * TICK, 20.0), unplaceable=blocked, fleet_version="v2")
    assert retry.replicas == 7


# -- a recorded series -----------------------------------------------------------------------


def test_the_azure_hour_is_covered_with_few_changes() -> None:
    """The Azure conversation trace's hour, per 15 s, through LoadWindow and the rule: after
    the first cold start the replicas asked for (at 4 req/s each) cover the next tick's rate
    almost always, and the count changes a few times, not every tick."""
    from goodput.profiler.datasets import load_azure_trace

    arrivals = load_azure_trace("conv").arrival_s * 1.0
    counts = np.bincount((arrivals // TICK).astype(int))[:-1]
    window, run = LoadWindow(), Run(autoscaler(), Bounds(1, 20), replicas=2)
    served = 0
    for i, count in enumerate(counts):
        served += int(count)
        report = LoadReport(ready=True, queue=0, inflight=0, requests=served, metSlo=served)
        run.step(window.observe(i * TICK, {"pod": report}))
    asked = [d.replicas for d in run.decisions]
    rates = counts / TICK
    covered = [asked[i] * 4.0 >= rates[i + 1] for i in range(int(COLD / TICK), len(rates) - 1)]
    assert np.mean(covered) >= 0.98
    assert run.changes <= 12


# -- signals ---------------------------------------------------------------------------------


def report(requests: int, queue: int = 0, inflight: int = 0, **kw: int) -> LoadReport:
    return LoadReport(ready=True, queue=queue, inflight=inflight, requests=requests, **kw)


def test_load_window_rates_from_counters() -> None:
    w = LoadWindow()
    first = w.observe(0.0, {"a": report(100, queue=2), "b": report(50)})
    assert first.arrival_rps == 0.0 and first.queue == 2  # a baseline
    s = w.observe(10.0, {"a": report(130, queue=4, metSlo=20), "b": report(60, inflight=3)})
    # Arrivals = judged + change in queued and in flight: (30 + 2) + (10 + 3).
    assert s.arrival_rps == pytest.approx(4.5)
    assert (s.judged, s.queue, s.inflight, s.ready) == (40, 4, 3, 2)


def test_load_window_counts_a_restarted_gateway_from_zero_and_a_new_pod_from_its_next_report() -> (
    None
):
    w = LoadWindow()
    w.observe(0.0, {"a": report(1000)})
    s = w.observe(10.0, {"a": report(20), "new": report(500)})
    assert s.judged == 20  # restarted: its 20 since; the new pod is a baseline
    s = w.observe(20.0, {"a": report(30), "new": report(520)})
    assert s.judged == 30


def test_an_unjudged_departure_is_not_a_restart() -> None:
    w = LoadWindow()
    w.observe(0.0, {"a": report(100, queue=5)})
    s = w.observe(10.0, {"a": report(100, queue=0)})  # five clients gave up
    assert (s.judged, s.arrival_rps) == (0, 0.0)


def test_trend_forecast_extrapolates_a_line_and_never_goes_negative() -> None:
    # The last minute's mean (at 202.5 s on the line) plus the slope over the lead.
    line = [(t, 10.0 + 0.1 * t) for t in range(0, 240, 15)]
    assert TrendForecast().rate_at(line, 120.0) == pytest.approx(10.0 + 0.1 * (202.5 + 120))
    falling = [(t, 10.0 - 0.1 * t) for t in range(0, 240, 15)]
    assert TrendForecast().rate_at(falling, 600.0) == 0.0
    assert TrendForecast().rate_at([(0.0, 3.0)], 120.0) == 3.0


# -- the profiler's parts ----------------------------------------------------------------------


def test_profiler_throughput_is_the_capacity_model_at_the_reported_lengths() -> None:
    arch, gpu = catalog.get("llama-3-70b"), catalog.gpu("H100-80GB")
    slo = SLO(1.0, 0.05)
    reference = LengthDistribution.fixed(1024, 256)
    throughput = ProfilerThroughput(arch, gpu, slo, reference, tp=4)
    direct = capacity(arch, gpu, tp=4, slo=slo, lengths=reference).max_rps
    assert throughput.requests_per_second(None, None) == pytest.approx(direct, rel=0.05)
    assert throughput.requests_per_second(1024, 1024) < throughput.requests_per_second(1024, 128)


def test_cold_start_grows_with_the_checkpoint() -> None:
    cold = ColdStart()
    small = cold.for_model(catalog.get("llama-3-8b"))
    large = cold.for_model(catalog.get("llama-3-70b"), tp=4)
    assert 85 < small < large < 130  # 16 GB and 141 GB at 4 GB/s over the fixed phases
    assert cold.seconds(8e9) - cold.seconds(0) == pytest.approx(2.0)
