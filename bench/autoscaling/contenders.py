"""The scalers the benchmark compares, each behind ``sim.Scaler``.

- ``StaticReplicas``: a fixed count (sized for the day's peak, or its mean).
- ``InflightHPA``: what a Kubernetes HorizontalPodAutoscaler does on a per-pod custom metric,
  here the gateway's requests in flight and queued (``goodput_inflight_requests`` +
  ``goodput_queue_depth``): ``ceil(current x mean / target)``, nothing within a 10 % tolerance,
  up at once, down to the highest recommendation of the last 300 s (the HPA's defaults).
- ``GoodputScaler``: ``goodput.operator.autoscaling`` itself: the pods' load reports through
  ``LoadWindow`` into ``Autoscaler.decide``, as the operator will call it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from goodput.api.load_report import LoadReport
from goodput.operator.autoscaling import Autoscaler, AutoscalerState, Bounds, LoadWindow


@dataclass
class StaticReplicas:
    name: str
    count: int

    def replicas(self, at_s: float, reports: dict[str, LoadReport], held: int, desired: int,
                 ready: int) -> int:  # fmt: skip
        return self.count


@dataclass
class InflightHPA:
    """The HPA's algorithm on average requests per pod (kube-controller-manager defaults)."""

    target_per_replica: float
    min_replicas: int
    max_replicas: int
    name: str = "hpa-inflight"
    tolerance: float = 0.1
    stabilization_s: float = 300.0
    _recommendations: deque[tuple[float, int]] = field(default_factory=deque)

    def replicas(self, at_s: float, reports: dict[str, LoadReport], held: int, desired: int,
                 ready: int) -> int:  # fmt: skip
        # The HPA averages over the pods that report a metric (ready ones); unready pods are
        # left out of a scale-up's average and count as 0 in a scale-down's, approximated here
        # by averaging over the ready pods.
        ready_reports = [r for r in reports.values() if r.ready]
        if not ready_reports:
            proposal = desired if held == 0 else max(desired, 1)
        else:
            per_pod = sum(r.inflight + r.queue for r in ready_reports) / len(ready_reports)
            ratio = per_pod / self.target_per_replica
            proposal = desired
            if abs(ratio - 1.0) > self.tolerance:
                proposal = math.ceil(ratio * len(ready_reports))
        proposal = min(max(proposal, self.min_replicas), self.max_replicas)
        self._recommendations.append((at_s, proposal))
        while self._recommendations[0][0] < at_s - self.stabilization_s:
            self._recommendations.popleft()
        if proposal >= desired:
            return proposal
        return min(desired, max(r for _, r in self._recommendations))


@dataclass
class GoodputScaler:
    autoscaler: Autoscaler
    bounds: Bounds
    slo_attainment: float
    name: str = "goodput"
    window: LoadWindow = field(default_factory=LoadWindow)
    state: AutoscalerState = field(default_factory=AutoscalerState)
    last_reason: str | None = None
    messages: list[tuple[float, str, str]] = field(default_factory=list)

    def replicas(self, at_s: float, reports: dict[str, LoadReport], held: int, desired: int,
                 ready: int) -> int:  # fmt: skip
        sample = self.window.observe(at_s, reports, held=held)
        decision, self.state = self.autoscaler.decide(
            self.state,
            sample,
            desired=desired,
            ready=ready,
            bounds=self.bounds,
            slo_attainment=self.slo_attainment,
        )
        self.last_reason = decision.reason
        if decision.direction != "none":
            self.messages.append((at_s, decision.reason, decision.message))
        return decision.replicas
