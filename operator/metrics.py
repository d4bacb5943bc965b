"""The operator's Prometheus metrics (names are a contract with the chart's dashboards).

- ``goodput_operator_reconciliations_total{handler, result}``
- ``goodput_operator_reconcile_duration_seconds{handler}``
- ``goodput_operator_gpus_allocated{gpu_product}``: GPUs requested by desired replicas.
- ``goodput_operator_gpus_capacity{gpu_product}``: allocatable GPUs on schedulable nodes.
- ``goodput_operator_deployments{phase}``
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from threading import Lock
from typing import get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from goodput.api.llmdeployment import Phase
from goodput.operator.inventory import GpuNode

PHASES: tuple[str, ...] = get_args(Phase)

# Every ``handler`` label value the operator uses. Their series exist from start-up at zero, so
# the first reconciliation after a scrape is an increase that ``rate()`` can see; a series born
# at 1 would show no rate until the second one.
HANDLERS: tuple[str, ...] = (
    "llmdeployment_create",
    "llmdeployment_update",
    "llmdeployment_resume",
    "retry_placement",
    "replace_lost_node",
    "workload_event",
)
RESULTS: tuple[str, ...] = ("success", "error")


@dataclass(frozen=True)
class DeploymentFacts:
    phase: str
    gpu_product: str | None
    gpus: int


class OperatorMetrics:
    """Metrics plus the per-deployment facts the fleet gauges are summed from."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.reconciliations = Counter(
            "goodput_operator_reconciliations",
            "Reconciliations by handler and result.",
            ["handler", "result"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "goodput_operator_reconcile_duration_seconds",
            "Time spent in one reconciliation.",
            ["handler"],
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=self.registry,
        )
        self.gpus_allocated = Gauge(
            "goodput_operator_gpus_allocated",
            "GPUs requested by the desired replicas of all LLMDeployments.",
            ["gpu_product"],
            registry=self.registry,
        )
        self.gpus_capacity = Gauge(
            "goodput_operator_gpus_capacity",
            "Allocatable GPUs on schedulable nodes.",
            ["gpu_product"],
            registry=self.registry,
        )
        self.deployments = Gauge(
            "goodput_operator_deployments",
            "LLMDeployments by phase.",
            ["phase"],
            registry=self.registry,
        )
        for phase in PHASES:
            self.deployments.labels(phase=phase).set(0)
        for handler in HANDLERS:
            self.duration.labels(handler=handler)
            for result in RESULTS:
                self.reconciliations.labels(handler=handler, result=result)
        self._facts: dict[str, DeploymentFacts] = {}
        self._lock = Lock()

    @contextmanager
    def reconciling(self, handler: str) -> Iterator[None]:
        """Count and time one handler run; an exception counts as an error and propagates."""
        if handler not in HANDLERS:
            raise ValueError(f"unknown handler label {handler!r}: add it to HANDLERS")
        start = time.perf_counter()
        try:
            yield
        except BaseException:
            self.reconciliations.labels(handler=handler, result="error").inc()
            raise
        else:
            self.reconciliations.labels(handler=handler, result="success").inc()
        finally:
            self.duration.labels(handler=handler).observe(time.perf_counter() - start)

    def observe_deployment(self, key: str, facts: DeploymentFacts) -> None:
        with self._lock:
            self._facts[key] = facts
            self._refresh()

    def forget_deployment(self, key: str) -> None:
        with self._lock:
            self._facts.pop(key, None)
            self._refresh()

    def observe_capacity(self, nodes: Iterable[GpuNode]) -> None:
        capacity: Tally[str] = Tally()
        for node in nodes:
            capacity[node.product] += node.gpus
        with self._lock:
            self.gpus_capacity.clear()
            for product, gpus in capacity.items():
                self.gpus_capacity.labels(gpu_product=product).set(gpus)

    def _refresh(self) -> None:
        phases = Tally(f.phase for f in self._facts.values())
        for phase in PHASES:
            self.deployments.labels(phase=phase).set(phases[phase])
        allocated: Tally[str] = Tally()
        for f in self._facts.values():
            if f.gpu_product:
                allocated[f.gpu_product] += f.gpus
        self.gpus_allocated.clear()
        for product, gpus in allocated.items():
            self.gpus_allocated.labels(gpu_product=product).set(gpus)

    def serve(self, host: str, port: int) -> None:
        """Expose /metrics on a background thread."""
        start_http_server(port, addr=host, registry=self.registry)
