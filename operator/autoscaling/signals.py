"""What the autoscaler reads: one ``LoadSample`` per deployment per tick, made from the load
reports its pods' gateways answer on ``/v1/goodput/load`` (``goodput.api.load_report``).

The reports carry gauges (queue, in-flight) and counters since the gateway started (requests
judged, of them met the SLO, finished, prompt and output tokens). ``LoadWindow`` turns two
rounds of reports into the tick's rates and counts; the autoscaler keeps its own window of ticks.
Arrivals are not counted by the gateway: every request it accepts is, at any moment, queued, in
flight, or judged once, so arrivals over a tick are the change of ``requests + queue +
inflight``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from goodput.api.load_report import LoadReport


@dataclass(frozen=True)
class LoadSample:
    """One deployment's load over the tick ending at ``at_s`` (the caller's monotonic clock),
    summed over the pods that answered."""

    at_s: float
    arrival_rps: float  # requests arriving per second over the tick
    span_s: float = 0.0  # the tick's length; 0: a first observation, no rate yet
    queue: int = 0  # waiting in the gateways now
    inflight: int = 0  # running in the engines now
    held: int = 0  # held by a router for want of any ready replica (scale from zero)
    ready: int = 0  # pods that answered ready
    judged: int = 0  # requests judged during the tick (finished, failed or rejected)
    met: int = 0  # of them, met the SLO
    finished: int = 0  # requests that ran to completion during the tick
    prompt_tokens: int = 0  # of the finished ones
    output_tokens: int = 0

    @property
    def busy(self) -> bool:
        """Any request arriving, waiting or running: the deployment is not idle."""
        return self.arrival_rps > 0 or self.queue + self.inflight + self.held + self.judged > 0


def _counters(r: LoadReport) -> tuple[int, int, int, int, int, int]:
    return (
        r.requests + r.queue + r.inflight,
        r.requests,
        r.met_slo,
        r.finished,
        r.prompt_tokens,
        r.output_tokens,
    )


class LoadWindow:
    """Turns successive rounds of a deployment's load reports (pod name -> report) into
    ``LoadSample``s.

    A pod seen for the first time is a baseline: its counters count from its own start, which
    may lie long before this tick (an operator restart sees every pod anew). A counter that went
    down belongs to a restarted gateway and counts from zero, as Prometheus' ``rate()`` does. A
    pod that stopped answering drops out until it answers again.
    """

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, ...]] = {}
        self._at_s: float | None = None

    def observe(self, at_s: float, reports: Mapping[str, LoadReport], held: int = 0) -> LoadSample:
        deltas = [0, 0, 0, 0, 0, 0]
        now: dict[str, tuple[int, ...]] = {}
        for pod, report in reports.items():
            counters = _counters(report)
            now[pod] = counters
            before = self._last.get(pod)
            if before is None:
                continue
            restarted = counters[1] < before[1]  # ``requests`` went down
            for i, (new, old) in enumerate(zip(counters, before, strict=True)):
                # Arrivals include two gauges: a request that left unjudged (a client gone
                # before the gateway judged it) lowers them; that is no restart.
                deltas[i] += new if restarted else max(new - old, 0)
        span = None if self._at_s is None else at_s - self._at_s
        self._last, self._at_s = now, at_s
        arrivals, judged, met, finished, prompt, output = deltas
        return LoadSample(
            at_s=at_s,
            arrival_rps=arrivals / span if span else 0.0,
            span_s=span or 0.0,
            queue=sum(r.queue for r in reports.values()),
            inflight=sum(r.inflight for r in reports.values()),
            held=held,
            ready=sum(1 for r in reports.values() if r.ready),
            judged=judged,
            met=met,
            finished=finished,
            prompt_tokens=prompt,
            output_tokens=output,
        )
