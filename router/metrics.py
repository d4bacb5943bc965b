"""The router's Prometheus metrics (``goodput_router_*``), every series labelled with the
router's ``router`` name. The engines' own prefix-cache counters, as their gateways last
reported them, are re-exported per replica so that a panel can set the router's predicted hits
beside what the engines counted."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from goodput.router.endpoints import Endpoint

OUTCOMES = ("ok", "rejected", "no_replica", "error", "invalid", "unauthorized")
RETRY_REASONS = ("rejected", "unavailable", "failed")
_OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _EndpointCollector(Collector):
    def __init__(self, router: str, endpoints: Callable[[], Iterable[Endpoint]]) -> None:
        self.router = router
        self.endpoints = endpoints

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        states = GaugeMetricFamily(
            "goodput_router_endpoints",
            "Replicas known to the router, by state.",
            labels=["router", "state"],
        )
        counts = {"ready": 0, "draining": 0, "unavailable": 0}
        queries = CounterMetricFamily(
            "goodput_router_engine_prefix_cache_queries_tokens",
            "Prompt tokens the replica's engine looked up in its prefix cache (its own counter).",
            labels=["router", "endpoint"],
        )
        hits = CounterMetricFamily(
            "goodput_router_engine_prefix_cache_hits_tokens",
            "Prompt tokens the replica's engine found in its prefix cache (its own counter).",
            labels=["router", "endpoint"],
        )
        load = GaugeMetricFamily(
            "goodput_router_endpoint_load_requests",
            "Requests at the replica as the router believes (reported plus sent since).",
            labels=["router", "endpoint"],
        )
        for e in self.endpoints():
            if e.draining:
                counts["draining"] += 1
            elif e.ready and (e.report is None or e.report.ready):
                counts["ready"] += 1
            else:
                counts["unavailable"] += 1
            load.add_metric([self.router, e.name], e.load)
            r = e.report
            if r is not None and r.prefix_cache_queries is not None:
                queries.add_metric([self.router, e.name], r.prefix_cache_queries)
                hits.add_metric([self.router, e.name], r.prefix_cache_hits or 0.0)
        for state, n in counts.items():
            states.add_metric([self.router, state], n)
        yield states
        yield load
        yield queries
        yield hits


class RouterMetrics:
    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        router: str,
        endpoints: Callable[[], Iterable[Endpoint]],
        queue_depth: Callable[[], float],
        held: Callable[[], float] = lambda: 0.0,
    ) -> None:
        self.router = router
        labels = ("router",)
        self.requests = Counter(
            "goodput_router_requests_total",
            "Requests the router answered, by outcome (ok, rejected, no_replica, error, invalid).",
            (*labels, "outcome"),
            registry=registry,
        )
        self.internal_errors = Counter(
            "goodput_router_internal_errors_total",
            "Unexpected exceptions answered with an OpenAI-format 500 (a bug: alert on it).",
            labels,
            registry=registry,
        )
        self.decisions = Counter(
            "goodput_router_decisions_total",
            "Routing decisions by the stage that decided them (the scorer that most separated "
            "the winner from the runner-up; tie; only-choice).",
            (*labels, "stage"),
            registry=registry,
        )
        self.retries = Counter(
            "goodput_router_retries_total",
            "Requests sent again to another replica, by why (rejected, unavailable, failed).",
            (*labels, "reason"),
            registry=registry,
        )
        self.prefix_blocks = Counter(
            "goodput_router_prefix_blocks_total",
            "Whole prompt blocks of routed requests.",
            labels,
            registry=registry,
        )
        self.prefix_predicted_hit_blocks = Counter(
            "goodput_router_prefix_predicted_hit_blocks_total",
            "Of those, blocks the chosen replica was believed to hold already.",
            labels,
            registry=registry,
        )
        self.overhead = Histogram(
            "goodput_router_decision_seconds",
            "Time to decide a request's replica (parse, hash, filters, scorers, picker).",
            labels,
            buckets=_OVERHEAD_BUCKETS,
            registry=registry,
        )
        self.queue_wait = Histogram(
            "goodput_router_queue_wait_seconds",
            "Time requests waited in the router's queue while every replica was saturated.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.hold_wait = Histogram(
            "goodput_router_hold_wait_seconds",
            "Time requests were held while no replica was ready (scale from zero), of those "
            "that were then routed.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.ttft = Histogram(
            "goodput_router_ttft_seconds",
            "Arrival at the router to the first byte of a streamed answer.",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        # Every label set exists from the start (at zero): a rate over "no retries yet" is 0,
        # not an absent series.
        for outcome in OUTCOMES:
            self.requests.labels(router, outcome)
        for reason in RETRY_REASONS:
            self.retries.labels(router, reason)
        for metric in (
            self.internal_errors, self.prefix_blocks, self.prefix_predicted_hit_blocks,
            self.overhead, self.queue_wait, self.hold_wait, self.ttft,
        ):  # fmt: skip
            metric.labels(router)
        for name, text, read in (
            ("goodput_router_queue_depth", "Requests waiting in the router's queue.", queue_depth),
            (
                "goodput_router_held_requests",
                "Requests held while no replica is ready: the operator's signal to scale from "
                "zero.",
                held,
            ),
        ):
            Gauge(name, text, labels, registry=registry).labels(router).set_function(read)
        registry.register(_EndpointCollector(router, endpoints))
