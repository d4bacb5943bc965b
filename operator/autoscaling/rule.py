"""The autoscaler's decision: how many replicas a deployment should have now, and why.

Pure: ``Autoscaler.decide(state, sample, ...)`` takes data (the tick's ``LoadSample``, the
replicas as they are, the spec's bounds, what the placement could not do) and returns a
``ScaleDecision`` and the state to pass next time. No clock, no API: the operator's timer and the
autoscaling benchmark (bench/autoscaling) call the same code.

The rule, once per tick:

1. **Demand.** The arrival rate expected one cold start (plus a tick) ahead, from the forecast
   stage, never below the last minute's rate; plus the requests waiting (in gateways, or held
   by a router at zero replicas) spread over ``backlog_drain_s``.
2. **Supply.** What one replica serves within the SLO: the throughput stage (the profiler's
   capacity model at the lengths the pods report) times a ``correction`` that the observed
   attainment calibrates. The model judges a replica by its mean step times; the SLO judges
   every request, and a short answer decoded behind a long prompt's prefill misses its TPOT
   where the mean does not. When requests miss the SLO on replicas that are loaded (past
   ``calibration_utilization`` of their corrected supply) yet within what the corrected model
   says they serve, and settled (no change of the count or the correction for a cold start and
   an observation window), the correction shrinks by ``correction_step``; while the SLO is met
   under load, settled, it creeps back up by a quarter step.
3. **Up** at once to ``ceil(R + headroom x sqrt(R))``, ``R = demand / supply`` (square-root
   staffing: the relative headroom shrinks as the replicas pool more traffic), when that
   exceeds the current count. Replicas still starting count as supply already (no second
   request for the same shortfall).
4. **Down** only to the highest count that the same sizing with ``scale_down_headroom``
   recommended over the stabilisation window: the larger headroom is the hysteresis band, the
   window keeps a dip from removing replicas that the rebound needs. One scale-down per
   ``scale_down_interval_s`` at most, never while a replica is starting or the SLO is being
   missed, never within one window of the autoscaler's own start.
5. **Zero**, with ``minReplicas`` 0: after the idle period (``scaleToZeroAfterSeconds``) without
   a request; back to at least one replica at the first request seen (arriving, queued or held).
6. **Bounds** clamp to ``[minReplicas, maxReplicas]``; a placement that could not hold the last
   scale-up caps the count at what it placed until the fleet changes (not retried blindly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

from goodput.api.llmdeployment import AutoscalingSpec
from goodput.operator.autoscaling.forecast import ArrivalForecast, TrendForecast
from goodput.operator.autoscaling.signals import LoadSample
from goodput.operator.autoscaling.throughput import ReplicaThroughput

#: The idle period before scaling to zero when ``minReplicas`` is 0 and the spec names none.
DEFAULT_IDLE_BEFORE_ZERO_S = 600.0


@dataclass(frozen=True)
class AutoscalingPolicy:
    """Operator-wide tuning; the spec's ``autoscaling`` sets bounds and the two windows."""

    #: Spare replicas per square root of the replicas the demand fills (square-root staffing):
    #: a replica's SLO capacity is judged for Poisson arrivals, real traffic is burstier within
    #: a minute, and the fewer the replicas the larger that burstiness is relative to them.
    headroom: float = 0.6
    #: The same for scale-down: the gap to ``headroom`` is the hysteresis band.
    scale_down_headroom: float = 0.9
    #: Seconds over which a backlog (queued or held requests) should be served by added supply.
    backlog_drain_s: float = 60.0
    #: Seconds the current arrival rate is averaged over (the forecast's level).
    rate_s: float = 60.0
    #: Seconds of ticks the attainment is judged over, and the fewest requests it needs.
    observation_s: float = 300.0
    slo_min_requests: int = 100
    #: Seconds of finished requests the mean lengths are taken over: a replica's capacity
    #: depends on them steeply (long prompts set the TTFT percentile), and a few minutes' mean
    #: swings with a handful of long prompts.
    lengths_s: float = 1800.0
    #: Calibration: misses count against the model only on replicas loaded past this share of
    #: their corrected supply, and only while the attainment over ``calibration_s`` is below the
    #: target too (the SLO's error budget is spent over a period, not per burst); then the
    #: correction shrinks by ``correction_step``. Above the middle of the budget for a whole
    #: observation under load, it grows by a quarter step; within [min_correction, 1].
    calibration_s: float = 1800.0
    calibration_utilization: float = 0.5
    correction_step: float = 0.1
    min_correction: float = 0.4
    #: Fewest seconds between two scale-downs.
    scale_down_interval_s: float = 60.0
    #: Ticks kept: the forecast's window and the stabilisation window must fit in it.
    history_s: float = 3600.0


@dataclass(frozen=True)
class Bounds:
    """The spec's ``autoscaling`` as the rule reads it."""

    min_replicas: int
    max_replicas: int
    stabilization_s: float = 300.0
    idle_before_zero_s: float | None = None  # None: never to zero (``minReplicas`` > 0)

    @classmethod
    def from_spec(cls, spec: AutoscalingSpec) -> Bounds:
        idle = None
        if spec.min_replicas == 0:
            idle = float(spec.scale_to_zero_after_seconds or DEFAULT_IDLE_BEFORE_ZERO_S)
        return cls(
            min_replicas=spec.min_replicas,
            max_replicas=spec.max_replicas,
            stabilization_s=float(spec.scale_down_stabilization_seconds),
            idle_before_zero_s=idle,
        )


@dataclass(frozen=True)
class Unplaceable:
    """The last scale-up the placement could not carry out: of ``wanted`` replicas it placed
    ``placed``, on the fleet as it was at ``fleet_version`` (any string that changes when the
    nodes or the GPUs other pods hold change)."""

    wanted: int
    placed: int
    reason: str
    fleet_version: str


@dataclass(frozen=True)
class ScaleDecision:
    """Desired replicas, with the reason as an Event/condition reason (CamelCase) and a message
    that carries the numbers it was decided on."""

    replicas: int
    previous: int
    reason: str
    message: str
    demand_rps: float  # the forecast demand the count was sized for
    replica_rps: float  # what one replica serves within the SLO (corrected)
    correction: float  # the attainment's correction of the profiler's figure
    needed: int  # replicas the demand needs, before bounds, stabilisation and placement
    attainment: float | None  # over the observation window (None: nothing judged)
    warning: bool = False  # the SLO is at risk and scaling cannot help (max, placement, model)

    @property
    def direction(self) -> Literal["up", "down", "none"]:
        if self.replicas > self.previous:
            return "up"
        return "down" if self.replicas < self.previous else "none"


@dataclass(frozen=True)
class Tick:
    """What the state keeps of one sample."""

    at_s: float
    arrival_rps: float
    measured: bool  # the rate is one (not a first observation's 0)
    judged: int
    met: int
    finished: int
    prompt_tokens: int
    output_tokens: int
    recommended: int  # the scale-down recommendation at this tick

    @classmethod
    def of(cls, s: LoadSample, recommended: int) -> Tick:
        return cls(s.at_s, s.arrival_rps, s.span_s > 0, s.judged, s.met, s.finished,
                   s.prompt_tokens, s.output_tokens, recommended)  # fmt: skip


@dataclass(frozen=True)
class AutoscalerState:
    """What the rule remembers between ticks. Kept by the caller; lost on an operator restart,
    which only makes the next decisions cautious (no scale-down for one window, the model's
    supply uncorrected)."""

    ticks: tuple[Tick, ...] = ()
    started_s: float | None = None
    last_busy_s: float | None = None
    last_up_s: float | None = None
    last_down_s: float | None = None
    correction: float = 1.0
    calibrated_s: float | None = None  # when the correction last moved


@dataclass(frozen=True)
class _Reading:
    """What one tick's sample and the state's ticks say, before any judgement."""

    rate_now: float
    forecast: float
    demand: float
    backlog: int
    model_rps: float  # the throughput stage's figure, uncorrected
    judged: int  # requests judged in the observation window since the last change took effect
    met: int
    judged_long: int  # requests judged over the calibration window
    met_long: int


@dataclass(frozen=True)
class _Proposal:
    replicas: int
    reason: str
    note: str = ""
    warning: bool = False


@dataclass
class Autoscaler:
    """The rule above, with its two judgements pluggable: ``throughput`` (what a replica
    serves) and ``forecast`` (what the rate will be); ``cold_start_s`` is how far ahead."""

    throughput: ReplicaThroughput
    cold_start_s: float
    tick_s: float = 15.0
    forecast: ArrivalForecast = field(default_factory=TrendForecast)
    policy: AutoscalingPolicy = field(default_factory=AutoscalingPolicy)

    def decide(
        self,
        state: AutoscalerState,
        sample: LoadSample,
        *,
        desired: int,
        ready: int,
        bounds: Bounds,
        slo_attainment: float,
        unplaceable: Unplaceable | None = None,
        fleet_version: str = "",
    ) -> tuple[ScaleDecision, AutoscalerState]:
        """``desired``: spec.replicas now; ``ready``: replicas serving; ``slo_attainment``: the
        spec's target fraction of requests meeting the SLO."""
        p, now = self.policy, sample.at_s
        state = replace(
            state,
            ticks=tuple(t for t in state.ticks if t.at_s > now - p.history_s),
            started_s=now if state.started_s is None else state.started_s,
            last_busy_s=now if sample.busy or state.last_busy_s is None else state.last_busy_s,
        )
        reading, before = self._read(state, sample), state.correction
        state = self._calibrate(state, sample, reading, desired, ready, slo_attainment)
        supply = reading.model_rps * state.correction

        def size(rate: float, headroom: float) -> int:
            return replicas_for(rate, supply, headroom) if supply > 0 else desired

        needed = size(reading.demand, p.headroom)
        recommended = min(
            max(size(reading.demand, p.scale_down_headroom), bounds.min_replicas, 1),
            bounds.max_replicas,
        )
        missing = reading.judged >= p.slo_min_requests and (
            reading.met < slo_attainment * reading.judged
        )
        if supply <= 0:
            proposal = _Proposal(desired, "SLOUnattainable", warning=True)
        elif desired == 0:
            proposal = _Proposal(max(needed, 1), "ScaleUpFromZero") if sample.busy else (
                _Proposal(0, "ScaledToZero"))  # fmt: skip
        elif needed > desired:
            by_rate = size(reading.forecast, p.headroom)
            reason = "ScaleUpBacklog" if needed > by_rate else "ScaleUp"
            if state.calibrated_s == now and state.correction < before:
                reason = "ScaleUpSLOMissed"  # the model's supply was just corrected down
            proposal = _Proposal(needed, reason)
        elif (
            bounds.min_replicas == 0
            and bounds.idle_before_zero_s is not None
            and state.last_busy_s is not None
            and now - state.last_busy_s >= bounds.idle_before_zero_s
        ):
            proposal = _Proposal(
                0, "ScaleToZero", f"; no request for {now - state.last_busy_s:.0f} s"
            )
        else:
            proposal = self._down(state, now, desired, ready, recommended, missing, bounds)
        proposal = self._constrain(proposal, bounds, unplaceable, fleet_version)
        if missing and proposal.replicas <= desired:
            proposal = replace(proposal, warning=True, note=f"{proposal.note}; the SLO is missed")

        attainment = reading.met / reading.judged if reading.judged else None
        attained = f"{reading.met}/{reading.judged} met the SLO" if reading.judged else (
            "no request judged")  # fmt: skip
        message = (
            f"{desired} -> {proposal.replicas} replicas: demand {reading.demand:.2f} req/s (last "
            f"minute {reading.rate_now:.2f}, forecast {reading.forecast:.2f} in "
            f"{self.cold_start_s + self.tick_s:.0f} s, backlog {reading.backlog}); "
            f"{supply:.2f} req/s per replica within the SLO (profiler {reading.model_rps:.2f} x "
            f"{state.correction:.2f}); {attained}{proposal.note}"
        )
        decision = ScaleDecision(
            replicas=proposal.replicas,
            previous=desired,
            reason=proposal.reason,
            message=message,
            demand_rps=reading.demand,
            replica_rps=supply,
            correction=state.correction,
            needed=needed,
            attainment=attainment,
            warning=proposal.warning,
        )
        state = replace(
            state,
            ticks=(*state.ticks, Tick.of(sample, recommended)),
            last_up_s=now if proposal.replicas > desired else state.last_up_s,
            last_down_s=now if proposal.replicas < desired else state.last_down_s,
        )
        return decision, state

    def _read(self, state: AutoscalerState, sample: LoadSample) -> _Reading:
        p, now = self.policy, sample.at_s
        rates = [(t.at_s, t.arrival_rps) for t in state.ticks if t.measured]
        rates.append((now, sample.arrival_rps))
        level = [r for t, r in rates if t > now - p.rate_s]
        rate_now = sum(level) / len(level)
        forecast = max(rate_now, self.forecast.rate_at(rates, self.cold_start_s + self.tick_s))
        backlog = sample.queue + sample.held

        lengths = [t for t in state.ticks if t.at_s > now - p.lengths_s]
        finished = sample.finished + sum(t.finished for t in lengths)
        mean_prompt = mean_output = None
        if finished:
            mean_prompt = (sample.prompt_tokens + sum(t.prompt_tokens for t in lengths)) / finished
            mean_output = (sample.output_tokens + sum(t.output_tokens for t in lengths)) / finished

        # Attainment since the last change could have taken effect, within the observation.
        changed = max(
            (s for s in (state.last_up_s, state.calibrated_s) if s is not None), default=None
        )
        since = now - p.observation_s
        if changed is not None:
            since = max(since, changed + self.cold_start_s)
        judged_ticks = [t for t in (*state.ticks, Tick.of(sample, 0)) if t.at_s > since]
        long_ticks = [
            t for t in (*state.ticks, Tick.of(sample, 0)) if t.at_s > now - p.calibration_s
        ]
        return _Reading(
            rate_now=rate_now,
            forecast=forecast,
            demand=forecast + backlog / p.backlog_drain_s,
            backlog=backlog,
            model_rps=self.throughput.requests_per_second(mean_prompt, mean_output),
            judged=sum(t.judged for t in judged_ticks),
            met=sum(t.met for t in judged_ticks),
            judged_long=sum(t.judged for t in long_ticks),
            met_long=sum(t.met for t in long_ticks),
        )

    def _calibrate(
        self,
        state: AutoscalerState,
        sample: LoadSample,
        reading: _Reading,
        desired: int,
        ready: int,
        slo_attainment: float,
    ) -> AutoscalerState:
        """Move the correction when the observations say the corrected model is wrong: misses
        on settled, loaded replicas while the period's error budget is spent (it was
        optimistic), or the SLO met well within its budget under load (it may be
        pessimistic)."""
        p = self.policy
        supply = reading.model_rps * state.correction
        # Steady for a whole observation: the replicas it judges were the ones serving it, not a
        # ramp's (whose misses are the forecast's, and are judged after the replicas arrived).
        changes = [c for c in (state.last_up_s, state.last_down_s, state.calibrated_s) if c]
        since_change = sample.at_s - max(changes, default=-math.inf)
        settled = (
            ready >= desired > 0
            and sample.held == 0
            and since_change >= self.cold_start_s + p.observation_s
        )
        # Loaded, yet within what the corrected model says the ready replicas serve: misses
        # beyond that are the model's own prediction (a forecast that lagged), not its error.
        load = reading.rate_now / (supply * ready) if supply > 0 and ready else 0.0
        loaded = p.calibration_utilization <= load <= 1.0
        if not (settled and loaded and reading.judged >= p.slo_min_requests):
            return state
        long_run = reading.met_long / max(reading.judged_long, 1)
        if reading.met < slo_attainment * reading.judged and long_run < slo_attainment:
            correction = max(p.min_correction, state.correction * (1 - p.correction_step))
        elif (
            reading.met >= slo_attainment * reading.judged and long_run >= (1 + slo_attainment) / 2
        ):
            correction = min(1.0, state.correction * (1 + p.correction_step / 4))
        else:
            return state
        if correction == state.correction:
            return state
        return replace(state, correction=correction, calibrated_s=sample.at_s)

    def _down(
        self,
        state: AutoscalerState,
        now: float,
        desired: int,
        ready: int,
        recommended: int,
        missing: bool,
        bounds: Bounds,
    ) -> _Proposal:
        """Down to the highest count the window recommended, when that is fewer and nothing
        holds it back."""
        window = [t.recommended for t in state.ticks if t.at_s > now - bounds.stabilization_s]
        stabilized = max([recommended, *window])
        if stabilized >= desired:
            if recommended < desired:
                return _Proposal(desired, "ScaleDownStabilizing", (
                    f"; {recommended} would do now, {stabilized} was recommended within the "
                    f"last {bounds.stabilization_s:.0f} s"))  # fmt: skip
            return _Proposal(desired, "Steady")
        interval = self.policy.scale_down_interval_s
        held_by = (
            "a replica is starting" if desired > ready
            else "the SLO is being missed" if missing
            else "the autoscaler started less than one window ago"
            if state.started_s is not None and now - state.started_s < bounds.stabilization_s
            else f"the last scale-down was less than {interval:.0f} s ago"
            if state.last_down_s is not None and now - state.last_down_s < interval
            else None
        )  # fmt: skip
        if held_by is not None:
            return _Proposal(desired, "ScaleDownHeld", f"; {stabilized} would do, held: {held_by}")
        return _Proposal(stabilized, "ScaleDown")

    @staticmethod
    def _constrain(
        proposal: _Proposal,
        bounds: Bounds,
        unplaceable: Unplaceable | None,
        fleet_version: str,
    ) -> _Proposal:
        if proposal.replicas > bounds.max_replicas:
            proposal = _Proposal(bounds.max_replicas, "AtMaxReplicas", proposal.note, True)
        if proposal.reason != "ScaleToZero" and proposal.replicas < bounds.min_replicas:
            proposal = replace(proposal, replicas=bounds.min_replicas)
        if (
            unplaceable is not None
            and unplaceable.fleet_version == fleet_version
            and proposal.replicas > unplaceable.placed
        ):
            note = (
                f"{proposal.note}; wanted {proposal.replicas}, the fleet holds "
                f"{unplaceable.placed}: {unplaceable.reason} (tried again when the nodes change)"
            )
            proposal = _Proposal(unplaceable.placed, "ScaleUpUnplaceable", note, True)
        return proposal


def replicas_for(rate: float, replica_rps: float, headroom: float) -> int:
    """Replicas for ``rate`` when each serves ``replica_rps`` within the SLO: the load ``R =
    rate / replica_rps`` plus ``headroom x sqrt(R)`` spare (0 for no rate)."""
    load = rate / replica_rps
    return math.ceil(load + headroom * math.sqrt(load) - 1e-9)
