"""The gateway's Prometheus metrics. Names and labels are a contract with the operator and the
Helm chart's dashboards and alerts (see docs/serving.md); every series carries ``deployment`` and
``model`` (in a request's series: the model it asked for, the base or an adapter). Gauges that
describe current state are computed at scrape time, off the hot path."""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from goodput.serving.engine_state import EngineSnapshot

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_TPOT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)
_E2E_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
_WAIT_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
_ERROR_RATIO_BUCKETS = (-0.9, -0.5, -0.25, -0.1, 0.0, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)

BASE_LABELS = ("deployment", "model")


class RollingAttainment:
    """Fraction of recent requests (rejections included) that met their SLO."""

    def __init__(self, window_s: float = 300.0, clock: Callable[[], float] = time.monotonic):
        self.window_s = window_s
        self._clock = clock
        self._events: deque[tuple[float, bool]] = deque()
        self._met = 0

    def record(self, met: bool) -> None:
        self._events.append((self._clock(), met))
        self._met += met
        self._expire()

    def _expire(self) -> None:
        horizon = self._clock() - self.window_s
        while self._events and self._events[0][0] < horizon:
            _, met = self._events.popleft()
            self._met -= met

    def ratio(self) -> float:
        """1.0 with no traffic in the window: nothing was missed."""
        self._expire()
        return self._met / len(self._events) if self._events else 1.0


@dataclass
class Totals:
    """Counts since the gateway started, reported in its load report: the autoscaler turns two
    reports into rates (Prometheus counters would do the same, but the operator reads the load
    report, not Prometheus)."""

    requests: int = 0  # judged: finished, failed or rejected
    met_slo: int = 0
    finished: int = 0
    prompt_tokens: int = 0  # of finished requests
    output_tokens: int = 0

    def judged(self, met: bool) -> None:
        self.requests += 1
        self.met_slo += met

    def finished_one(self, prompt_tokens: int, output_tokens: int) -> None:
        self.finished += 1
        self.prompt_tokens += prompt_tokens
        self.output_tokens += output_tokens


class GatewayMetrics:
    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        deployment: str,
        model: str,
        queue_depth: Callable[[], float],
        inflight: Callable[[], float],
        concurrency_limit: Callable[[], float] = lambda: math.nan,
        attainment: RollingAttainment,
    ) -> None:
        self._base = {"deployment": deployment, "model": model}
        by_priority = (*BASE_LABELS, "priority")

        def histogram(
            name: str, doc: str, buckets: tuple[float, ...], labels: tuple[str, ...]
        ) -> Histogram:
            return Histogram(name, doc, labels, buckets=buckets, registry=registry)

        self.ttft = histogram(
            "goodput_request_ttft_seconds", "Time to first token.", _LATENCY_BUCKETS, by_priority
        )
        self.tpot = histogram(
            "goodput_request_tpot_seconds",
            "Mean time per output token after the first.",
            _TPOT_BUCKETS,
            by_priority,
        )
        self.e2e = histogram(
            "goodput_request_e2e_seconds",
            "Request latency, end to end.",
            _E2E_BUCKETS,
            by_priority,
        )
        self.requests = Counter(
            "goodput_requests",
            "Requests by outcome.",
            (*by_priority, "outcome"),
            registry=registry,
        )
        self.rejections = Counter(
            "goodput_rejections",
            "Requests turned away, by reason.",
            (*BASE_LABELS, "reason"),
            registry=registry,
        )
        self.queue_wait = histogram(
            "goodput_queue_wait_seconds",
            "Time spent waiting in the gateway before dispatch.",
            _WAIT_BUCKETS,
            by_priority,
        )
        self.predicted_tokens = histogram(
            "goodput_predicted_output_tokens",
            "Predicted output tokens (median).",
            _TOKEN_BUCKETS,
            BASE_LABELS,
        ).labels(**self._base)
        self.output_tokens = histogram(
            "goodput_output_tokens", "Actual output tokens.", _TOKEN_BUCKETS, BASE_LABELS
        ).labels(**self._base)
        self.prediction_error = histogram(
            "goodput_output_tokens_prediction_error_ratio",
            "(predicted median - actual) / max(actual, 1) output tokens.",
            _ERROR_RATIO_BUCKETS,
            BASE_LABELS,
        ).labels(**self._base)
        self.internal_errors = Counter(
            "goodput_internal_errors",
            "Requests answered 500 because of an unexpected error in the gateway itself.",
            BASE_LABELS,
            registry=registry,
        ).labels(**self._base)
        self.refusals = Counter(
            "goodput_auth_refusals",
            "Requests refused before admission: no or a wrong API key (unauthorized), a class "
            "the key may not use (forbidden), over the tenant's quota (quota).",
            (*BASE_LABELS, "reason"),
            registry=registry,
        )
        self.adapter_cold_loads = Counter(
            "goodput_adapter_cold_loads",
            "Adapters loaded into the engine for a request that found them unloaded (`model`: "
            "the adapter).",
            BASE_LABELS,
            registry=registry,
        )
        self.adapter_load_seconds = histogram(
            "goodput_adapter_load_seconds",
            "Time to load an adapter into the engine (an eviction before it included).",
            _LATENCY_BUCKETS,
            BASE_LABELS,
        )
        # Zero series from the start: a dashboard's "no cold loads yet" is 0, not an empty panel.
        self.adapter_cold_loads.labels(**self._base)
        self.adapter_load_seconds.labels(**self._base)
        self.generated_tokens = Counter(
            "goodput_generated_tokens", "Output tokens generated.", BASE_LABELS, registry=registry
        ).labels(**self._base)

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, BASE_LABELS, registry=registry).labels(**self._base)

        gauge("goodput_queue_depth", "Requests waiting in the gateway.").set_function(queue_depth)
        gauge("goodput_inflight_requests", "Requests dispatched to the engine.").set_function(
            inflight
        )
        gauge(
            "goodput_concurrency_limit",
            "Most requests the scheduler lets the engine run at once now, for the deployment's "
            "SLO (learned from the token stream); NaN while unlimited.",
        ).set_function(concurrency_limit)
        gauge(
            "goodput_slo_attainment_ratio",
            f"Fraction of requests in the last {attainment.window_s:.0f} s that met their SLO.",
        ).set_function(attainment.ratio)
        self.engine_up = gauge("goodput_engine_up", "1 if the engine answered its last poll.")
        self.engine_kv = gauge(
            "goodput_engine_kv_cache_usage_ratio", "The engine's KV-cache usage, 0 to 1."
        )
        self.engine_running = gauge(
            "goodput_engine_running_requests", "Requests the engine is running."
        )
        self.engine_waiting = gauge(
            "goodput_engine_waiting_requests", "Requests waiting inside the engine."
        )

    @property
    def base_labels(self) -> dict[str, str]:
        return dict(self._base)

    def labels(self, priority: str, model: str | None = None) -> dict[str, str]:
        """A request's labels: ``model`` is the name it asked for (an adapter's, or the base
        model's when None), so each adapter's traffic is a series of its own."""
        return {**self._base, "priority": priority, **({"model": model} if model else {})}

    def adapter_loaded(self, adapter: str, seconds: float) -> None:
        self.adapter_cold_loads.labels(**{**self._base, "model": adapter}).inc()
        self.adapter_load_seconds.labels(**{**self._base, "model": adapter}).observe(seconds)

    def reject(self, reason: str, priority: str, model: str | None = None) -> None:
        self.rejections.labels(**self._base, reason=reason).inc()
        self.requests.labels(**self.labels(priority, model), outcome="rejected").inc()

    def engine_polled(self, snapshot: EngineSnapshot) -> None:
        self.engine_up.set(1.0 if snapshot.up else 0.0)
        if snapshot.kv_usage is not None:
            self.engine_kv.set(snapshot.kv_usage)
        if snapshot.running is not None:
            self.engine_running.set(snapshot.running)
        if snapshot.waiting is not None:
            self.engine_waiting.set(snapshot.waiting)
