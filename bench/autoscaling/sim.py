"""A discrete-event simulation of one LLMDeployment's replicas under a scaler.

Each replica is an engine with continuous batching and a gateway in front, timed by the
profiler's step-latency model (``goodput.profiler.capacity.ReplicaTimings``, the same step times
the capacity planner uses):

- **Gateway.** At most ``limit`` requests in the engine (the profiler's largest batch whose
  decode step meets TPOT, as the operator tells the gateway); more wait in its queue. With the
  default ``overload: reject``, a request that would wait behind ``queue_cap`` others (as many as
  one replica serves within the TTFT objective) is answered 429: dropped.
- **Engine.** A prompt is prefilled in a step of its own (``prefill_s(prompt)``: whole
  ``max_num_batched_tokens`` chunks and the rest); the sequences already decoding get their token
  of that step. Between prefills, decode steps of the running batch ``B`` take ``decode_s(B)``.
  The prefill step yields the first token; a request finishes after ``output - 1`` more tokens.
  Prefills are served first come, first served, before decode steps (vLLM's scheduler puts new
  prompts into the next step).
- **Router.** Each arrival goes to the ready, not draining replica with the fewest requests
  (queued, prefilling and decoding). With no replica ready (at zero, or before the first cold
  start ends) it is held up to ``hold_s`` (what the router's hold-while-scaling-from-zero will
  do; not built yet), then dropped.
- **Scaler.** Every ``tick_s`` the scaler sees each replica's load report (the gateway's
  ``/v1/goodput/load`` answer, ``goodput.api.load_report.LoadReport``, counters included) and
  names the replica count. A new replica holds its GPUs from the decision on and serves after
  ``cold_start_s``; a removed one (the highest id first, as the operator removes them) stops
  taking requests, finishes what it holds and then frees its GPUs; one still starting is removed
  at once.

A request meets the SLO when its TTFT (arrival to first token, queueing and holding included) and
its TPOT (mean time per output token after the first) are both within the objectives; dropped
requests meet nothing. Attainment = requests that met / all requests.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from workload import Workload

from goodput.api.load_report import LoadReport
from goodput.profiler.capacity import ReplicaTimings


@dataclass(frozen=True)
class Serving:
    """What every replica runs with."""

    timings: ReplicaTimings
    limit: int  # requests in the engine at once
    queue_cap: int  # requests waiting in one gateway before it rejects
    gpus_per_replica: int
    cold_start_s: float
    ttft_s: float
    tpot_s: float
    hold_s: float = 300.0


class Scaler(Protocol):
    name: str

    def replicas(self, at_s: float, reports: dict[str, LoadReport], held: int, desired: int,
                 ready: int) -> int: ...  # fmt: skip


@dataclass
class _Request:
    arrival: float
    prompt: int
    output: int
    prefill_s: float
    first_token: float = math.nan


@dataclass
class Replica:
    id: int
    serving: Serving
    ready_at: float
    draining: bool = False
    queue: deque[_Request] = field(default_factory=deque)
    prefill: deque[_Request] = field(default_factory=deque)
    running: list[tuple[float, int, _Request]] = field(default_factory=list)  # (v_end, seq, req)
    v: float = 0.0  # tokens each running sequence has been given so far
    t: float = 0.0  # the state is advanced up to here
    stall_end: float | None = None  # end of the prefill step in progress
    seq: int = 0
    # Load-report counters.
    requests: int = 0
    met: int = 0
    finished: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0

    @property
    def held(self) -> int:
        return len(self.queue) + len(self.prefill) + len(self.running)

    def ready(self, now: float) -> bool:
        return now >= self.ready_at

    def report(self, now: float) -> LoadReport:
        return LoadReport(
            ready=self.ready(now) and not self.draining,
            draining=self.draining,
            queue=len(self.queue),
            inflight=len(self.prefill) + len(self.running),
            limit=self.serving.limit,
            requests=self.requests,
            met_slo=self.met,
            finished=self.finished,
            prompt_tokens=self.prompt_tokens,
            output_tokens=self.output_tokens,
        )

    def judge(self, request: _Request, end: float, outcomes: Outcomes) -> None:
        s = self.serving
        ttft = request.first_token - request.arrival
        tpot = (end - request.first_token) / (request.output - 1) if request.output > 1 else 0.0
        met = ttft <= s.ttft_s and tpot <= s.tpot_s
        outcomes.ttft_missed += ttft > s.ttft_s
        outcomes.tpot_missed += tpot > s.tpot_s
        self.requests += 1
        self.met += met
        self.finished += 1
        self.prompt_tokens += request.prompt
        self.output_tokens += request.output
        outcomes.served(met)

    def next_event(self) -> float:
        if self.prefill:
            assert self.stall_end is not None
            return self.stall_end
        if self.running:
            step = self.serving.timings.decode_step_s(len(self.running))
            return self.t + (self.running[0][0] - self.v) * step
        return math.inf

    def advance(self, until: float, outcomes: Outcomes) -> None:
        """Run the engine up to ``until``, finishing what finishes on the way."""
        if until < self.t:
            return
        while True:
            if self.prefill:
                assert self.stall_end is not None
                if self.stall_end > until:
                    self.t = until
                    return
                self.t = self.stall_end
                request = self.prefill.popleft()
                request.first_token = self.t
                if self.running:
                    self.v += 1.0
                    self._finish_due(outcomes)
                if request.output <= 1:
                    self.judge(request, self.t, outcomes)
                else:
                    self.seq += 1
                    heapq.heappush(self.running, (self.v + request.output - 1, self.seq, request))
                self._admit()
                self._start_prefill()
            elif self.running:
                step = self.serving.timings.decode_step_s(len(self.running))
                due = self.t + (self.running[0][0] - self.v) * step
                if due > until:
                    self.v += max(until - self.t, 0.0) / step
                    self.t = max(until, self.t)
                    return
                self.t = due
                self.v = self.running[0][0]
                self._finish_due(outcomes)
                self._admit()
                self._start_prefill()
            else:
                self.t = until
                return

    def _finish_due(self, outcomes: Outcomes) -> None:
        while self.running and self.running[0][0] <= self.v + 1e-6:
            _, _, request = heapq.heappop(self.running)
            self.judge(request, self.t, outcomes)

    def _admit(self) -> None:
        while self.queue and len(self.prefill) + len(self.running) < self.serving.limit:
            self.prefill.append(self.queue.popleft())

    def _start_prefill(self) -> None:
        if self.prefill and (self.stall_end is None or self.stall_end <= self.t):
            self.stall_end = self.t + self.prefill[0].prefill_s
        elif not self.prefill:
            self.stall_end = None

    def accept(self, request: _Request, outcomes: Outcomes) -> bool:
        """The gateway takes ``request`` (False: rejected, 429)."""
        if len(self.queue) >= self.serving.queue_cap and self.prefill_or_full():
            self.requests += 1
            outcomes.dropped += 1
            outcomes.judged += 1
            return False
        self.queue.append(request)
        self._admit()
        if self.stall_end is None:
            self._start_prefill()
        return True

    def prefill_or_full(self) -> bool:
        return len(self.prefill) + len(self.running) >= self.serving.limit


@dataclass
class Outcomes:
    requests: int = 0
    met: int = 0
    dropped: int = 0
    ttft_missed: int = 0  # of the served requests
    tpot_missed: int = 0

    judged: int = 0  # served or dropped so far

    def served(self, met: bool) -> None:
        self.met += met
        self.judged += 1


@dataclass
class Result:
    name: str
    outcomes: Outcomes
    gpu_seconds: float
    scale_events: int
    #: (at_s, replicas holding GPUs, ready replicas, requests judged so far, of them met)
    timeline: list[tuple[float, int, int, int, int]]
    decisions: dict[str, int]

    def summary(self) -> dict[str, float | int]:
        o = self.outcomes
        return {
            "gpu_hours": round(float(self.gpu_seconds) / 3600.0, 3),
            "attainment": round(int(o.met) / o.requests, 5) if o.requests else 1.0,
            "dropped": o.dropped,
            "scale_events": self.scale_events,
            "requests": o.requests,
            "ttft_missed": int(o.ttft_missed),
            "tpot_missed": int(o.tpot_missed),
        }


def simulate(
    workload: Workload,
    serving: Serving,
    scaler: Scaler,
    *,
    initial: int,
    tick_s: float = 15.0,
    prefill_s: NDArray[np.float64] | None = None,
) -> Result:
    """Replay ``workload`` against replicas that ``scaler`` sizes; ``initial`` replicas are
    warm at the start."""
    if prefill_s is None:
        prefill_s = serving.timings.prefill_s(workload.prompt_tokens.astype(np.float64))
    outcomes = Outcomes(requests=len(workload))
    replicas: dict[int, Replica] = {}
    next_id = 0
    events: list[tuple[float, int, int]] = []  # (time, version, replica id)
    version: dict[int, int] = {}
    held: deque[_Request] = deque()
    gpu_seconds, last_t = 0.0, 0.0
    scale_events, desired = 0, initial
    timeline: list[tuple[float, int, int, int, int]] = []
    decisions: dict[str, int] = {}

    def schedule(r: Replica) -> None:
        version[r.id] = version.get(r.id, 0) + 1
        t = r.next_event()
        if t < math.inf:
            heapq.heappush(events, (t, version[r.id], r.id))

    def add(now: float, warm: bool) -> None:
        nonlocal next_id
        r = Replica(next_id, serving, ready_at=now if warm else now + serving.cold_start_s, t=now)
        replicas[r.id] = r
        next_id += 1
        if not warm:
            heapq.heappush(events, (r.ready_at, -1, r.id))  # readiness: route the held requests

    def route(request: _Request, now: float) -> None:
        open_ = [r for r in replicas.values() if r.ready(now) and not r.draining]
        if not open_:
            held.append(request)
            return
        best = min(open_, key=lambda r: (r.held, r.id))
        best.advance(now, outcomes)
        best.accept(request, outcomes)
        schedule(best)

    def release_held(now: float) -> None:
        while held and now - held[0].arrival > serving.hold_s:
            held.popleft()
            outcomes.dropped += 1
            outcomes.judged += 1
        if any(r.ready(now) and not r.draining for r in replicas.values()):
            while held:
                route(held.popleft(), now)

    def drop_drained() -> None:
        for rid in [rid for rid, r in replicas.items() if r.draining and r.held == 0]:
            del replicas[rid]

    def advance_all(now: float) -> None:
        nonlocal gpu_seconds, last_t
        if now > last_t:
            gpu_seconds += (now - last_t) * len(replicas) * serving.gpus_per_replica
            last_t = now
        while events and events[0][0] <= now:
            t, ver, rid = heapq.heappop(events)
            r = replicas.get(rid)
            if r is None:
                continue
            if ver == -1:
                r.advance(t, outcomes)
                release_held(t)
                continue
            if version.get(rid) != ver:
                continue
            r.advance(t, outcomes)
            schedule(r)
            if r.draining and r.held == 0:
                del replicas[rid]

    for _ in range(initial):
        add(0.0, warm=True)
    arrivals = workload.arrival_s
    n, i = len(arrivals), 0
    next_tick = tick_s
    end = workload.day_s
    while i < n or next_tick <= end:
        t_arrival = float(arrivals[i]) if i < n else math.inf
        if t_arrival < next_tick:
            advance_all(t_arrival)
            request = _Request(
                float(t_arrival),
                int(workload.prompt_tokens[i]),
                int(workload.output_tokens[i]),
                float(prefill_s[i]),
            )
            i += 1
            if held:
                release_held(t_arrival)
            route(request, t_arrival)
            continue
        now = next_tick
        next_tick += tick_s
        advance_all(now)
        release_held(now)
        for r in replicas.values():
            r.advance(now, outcomes)
        drop_drained()
        serving_now = {r.id: r for r in replicas.values() if not r.draining}
        ready = sum(1 for r in serving_now.values() if r.ready(now))
        reports = {f"r{rid}": r.report(now) for rid, r in serving_now.items()}
        want = scaler.replicas(now, reports, len(held), desired, ready)
        reason = getattr(scaler, "last_reason", None)
        if reason is not None:
            decisions[reason] = decisions.get(reason, 0) + 1
        if want != desired:
            scale_events += 1
        while len(serving_now) < want:
            add(now, warm=False)
            serving_now = {r.id: r for r in replicas.values() if not r.draining}
        for rid in sorted(serving_now, reverse=True)[: max(len(serving_now) - want, 0)]:
            r = replicas[rid]
            if not r.ready(now) or r.held == 0:
                for request in (*r.queue, *r.prefill):  # never started: nothing to drain
                    route(request, now)
                del replicas[rid]
            else:
                r.draining = True
                for request in list(r.queue):  # a draining gateway hands its queue back
                    r.queue.remove(request)
                    route(request, now)
        desired = want
        ready = sum(1 for r in replicas.values() if r.ready(now) and not r.draining)
        timeline.append((now, len(replicas), ready, outcomes.judged, outcomes.met))
    advance_all(end)
    # The last requests finish; the GPU time after the day's end is not the day's.
    for r in replicas.values():
        r.advance(end + 3600.0, outcomes)
    outcomes.dropped += len(held)
    return Result(scaler.name, outcomes, gpu_seconds, scale_events, timeline, decisions)
