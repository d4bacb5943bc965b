"""The autoscaling loop: every ``interval_s``, for each LLMDeployment with
``spec.autoscaling.enabled``, read what its pods report, decide (``autoscaling.Autoscaler``), and
act through the API as any other client of the scale subresource would.

One daemon thread for the whole operator rather than kopf timers or daemons: kopf gives every
object with a timer or daemon a finalizer (``kopf.on.daemon`` and ``kopf.on.timer`` set
``requires_finalizer``), and the operator keeps LLMDeployments finalizer-free so that deleting one
never waits for a running operator (operator/handlers.py). The handlers tell the loop which
deployments exist (``track``, ``forget``); the loop reads each one afresh on every tick, so a
missed event costs at most a tick. Its state (the load window, the rule's ticks) lives in memory:
an operator restart starts it anew, which only makes the first window's decisions cautious.

Per tick and deployment:

1. The gateways' load reports (``GET /v1/goodput/load`` on each running pod's admin port, the
   keyless plain-HTTP port the router reads too) become a ``LoadSample`` through
   ``LoadWindow``; requests a router holds for want of any ready replica (``held`` of its
   ``/v1/goodput/endpoints``) are added: that is how a request at zero replicas wakes the
   deployment.
2. ``Autoscaler.decide`` sizes it. A scale-up the placement refused (``Placed`` False for want
   of GPUs) is passed as ``Unplaceable``, with the fleet's version, so it is reported and not
   asked for again until a node or a GPU changes.
3. A changed count is written through ``/scale``. Going down, the replicas with the least work
   in flight are named first in the ``goodput.dev/drain-first`` annotation, which the reconciler
   honours: they are the ones removed (their pods drain: docs/autoscaling.md).
4. ``status.sloAttainment`` and the ``Autoscaling`` condition follow every decision; an Event
   only when the count or the reason changes.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import numpy as np

from goodput.api.llmdeployment import LLMDeployment, LLMDeploymentSpec
from goodput.api.load_report import LOAD_PATH, LoadReport
from goodput.operator import naming, status
from goodput.operator.autoscaling import (
    Autoscaler,
    AutoscalerState,
    AutoscalingPolicy,
    Bounds,
    LoadWindow,
    ProfilerThroughput,
    ReplicaThroughput,
    ScaleDecision,
    Unplaceable,
)
from goodput.operator.gpu_catalog import gpu_for_label
from goodput.operator.kube import StaleWrite
from goodput.operator.model_memory import CatalogMemory, profiler_quantization, typical_lengths
from goodput.operator.reconcile import now as utc_now
from goodput.operator.router import ROUTER_PORT
from goodput.operator.settings import AutoscalingSettings
from goodput.operator.workload import GATEWAY_ADMIN_PORT
from goodput.profiler.capacity import SLO, LengthDistribution
from goodput.profiler.cold_start import ColdStart

#: The condition the loop keeps: True while it sizes the deployment, False when scaling cannot
#: help (at the maximum, unplaceable, an SLO no replica meets); its reason is the decision's.
AUTOSCALING = "Autoscaling"
ROUTER_STATUS_PATH = "/v1/goodput/endpoints"
#: Requests/s per replica for a model the profiler's catalog does not know (and no measured
#: ``replica_rps`` is set): a guess that keeps such a deployment scaling, said in every decision.
FALLBACK_REPLICA_RPS = 1.0
Obj = dict[str, Any]

log = logging.getLogger("goodput.operator.autoscaler")


class ScaleAPI(Protocol):
    """The API calls the loop makes (``goodput.operator.kube.Kube`` in production)."""

    def get_llmdeployment(self, namespace: str, name: str) -> Obj | None: ...
    def list_pods(self, namespace: str, selector: str) -> list[Obj]: ...
    def scale_llmdeployment(self, namespace: str, name: str, replicas: int) -> None: ...
    def annotate_llmdeployment(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> None: ...
    def patch_llmdeployment_status(
        self, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None
    ) -> None: ...
    def post_event(
        self, involved: Mapping[str, Any], warning: bool, reason: str, message: str
    ) -> None: ...


class ReportSource(Protocol):
    """Reads what the pods say about their load."""

    def gateway(self, pod_ip: str) -> LoadReport | None:
        """A gateway's load report; None when it does not answer."""
        ...

    def held(self, pod_ip: str, https: bool) -> int | None:
        """Requests a router holds for want of a ready replica; None when it does not answer."""
        ...


class HttpReports:
    """``ReportSource`` over HTTP, pod IP by pod IP (the operator lists the pods anyway).

    A router with ``spec.gateway.tls`` serves HTTPS only; its certificate names the Service,
    not the pod IP dialled here, and the count it returns is no secret, so that one read is
    not verified (the worst a forged count can do is ask for a replica the bounds allow)."""

    def __init__(self, timeout_s: float = 2.0) -> None:
        self._http = httpx.Client(timeout=timeout_s)
        self._https = httpx.Client(timeout=timeout_s, verify=False)  # see above

    def gateway(self, pod_ip: str) -> LoadReport | None:
        try:
            reply = self._http.get(f"http://{_host(pod_ip)}:{GATEWAY_ADMIN_PORT}{LOAD_PATH}")
            return LoadReport.model_validate_json(reply.content) if reply.is_success else None
        except (httpx.HTTPError, ValueError):
            return None

    def held(self, pod_ip: str, https: bool) -> int | None:
        scheme, client = ("https", self._https) if https else ("http", self._http)
        try:
            reply = client.get(f"{scheme}://{_host(pod_ip)}:{ROUTER_PORT}{ROUTER_STATUS_PATH}")
            return int(reply.json().get("held") or 0) if reply.is_success else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None


def _host(ip: str) -> str:
    return f"[{ip}]" if ":" in ip else ip


@dataclass(frozen=True)
class FixedThroughput:
    """A replica's requests/s within the SLO as a given figure: measured
    (``GOODPUT_AUTOSCALING_REPLICA_RPS``), or the fallback for a model the profiler does not
    know."""

    rps: float

    def requests_per_second(self, mean_prompt: float | None, mean_output: float | None) -> float:
        return self.rps


@functools.lru_cache(maxsize=16)
def _reference_lengths(max_len: int) -> LengthDistribution:
    """The Azure conversation trace's lengths where the shared data is present (the shape the
    benchmark uses), else the typical lengths the placement sizes for, as one point."""
    try:
        return LengthDistribution.from_trace("azure-conv").truncated(max_len)
    except (OSError, ValueError):
        prompt, output = typical_lengths(max_len)
        return LengthDistribution(np.array([float(prompt)]), np.array([float(output)]))


def build_autoscaler(
    spec: LLMDeploymentSpec,
    deployment_status: Mapping[str, Any],
    settings: AutoscalingSettings,
) -> Autoscaler:
    """The rule for one deployment: the profiler's capacity for its model on its GPU type and
    shape, and its cold start as lead time; the operator's fallbacks where the catalog does not
    know the model."""
    policy = AutoscalingPolicy(scale_down_interval_s=settings.scale_down_interval_s)
    arch = CatalogMemory().architecture(spec)
    gpu_type = deployment_status.get("gpuType")
    placed = list(deployment_status.get("placement") or ())
    tp = int(placed[0].get("tensor", 1)) if placed else spec.resources.parallelism.tensor or 1
    pp = int(placed[0].get("pipeline", 1)) if placed else spec.resources.parallelism.pipeline or 1
    if arch is None or not gpu_type:
        rps = settings.replica_rps or FALLBACK_REPLICA_RPS
        cold = settings.cold_start_s or ColdStart().seconds(0.0)
        return Autoscaler(FixedThroughput(rps), cold, settings.interval_s, policy=policy)
    quantization = profiler_quantization(spec.model.quantization)
    max_len = spec.model.max_model_len or arch.max_position_embeddings
    slo = SLO(spec.slo.ttft_ms / 1000, spec.slo.tpot_ms / 1000, spec.slo.percentile / 100)
    throughput: ReplicaThroughput = FixedThroughput(settings.replica_rps or 0.0)
    if settings.replica_rps is None:
        throughput = ProfilerThroughput(
            arch, gpu_for_label(str(gpu_type)), slo, _reference_lengths(max_len),
            tp=tp, pp=pp, quantization=quantization, max_model_len=max_len,
            gpu_memory_utilization=spec.resources.gpu_memory_utilization,
        )  # fmt: skip
    cold = settings.cold_start_s or ColdStart().for_model(
        arch, quantization=quantization, tp=tp, pp=pp
    )
    return Autoscaler(throughput, cold, settings.interval_s, policy=policy)


def unplaceable(
    deployment_status: Mapping[str, Any], wanted: int, fleet_version: str, floor: int = 0
) -> Unplaceable | None:
    """The placement's refusal of ``wanted`` replicas, when new nodes could cure it (the
    replicas placed before keep running: the status lists them). The cap never goes below
    ``floor`` (``minReplicas``): a deployment whose very first placement waits for GPUs keeps
    asking for its minimum rather than being scaled to what runs, nothing."""
    placed = status.find(deployment_status.get("conditions") or [], status.PLACED)
    if placed is None or placed.status != "False":
        return None
    if placed.reason not in status.RETRYABLE_PLACEMENT_REASONS:
        return None
    running = len(deployment_status.get("placement") or ())
    return Unplaceable(
        wanted=wanted,
        placed=max(running, floor),
        reason=f"{placed.reason}: {placed.message}",
        fleet_version=fleet_version,
    )


def drain_order(pods: Sequence[Mapping[str, Any]], reports: Mapping[str, LoadReport]) -> list[int]:
    """Replica ids, the one with the least work (queued and in flight) first; among equals the
    highest id first (the order scaling down used before there were reports)."""
    work: dict[int, int] = {}
    for pod in pods:
        labels = (pod.get("metadata") or {}).get("labels") or {}
        replica = labels.get(naming.LABEL_REPLICA)
        if replica is None or not str(replica).isdigit():
            continue
        report = reports.get(pod["metadata"]["name"])
        load = 1_000_000 if report is None else report.queue + report.inflight
        work[int(replica)] = min(load, work.get(int(replica), load))
    return sorted(work, key=lambda r: (work[r], -r))


@dataclass
class _Tracked:
    """What the loop keeps of one deployment between ticks."""

    window: LoadWindow = field(default_factory=LoadWindow)
    state: AutoscalerState = field(default_factory=AutoscalerState)
    autoscaler: Autoscaler | None = None
    built_for: str = ""  # what the autoscaler was built from (model, SLO, shape)
    said: tuple[str, int] | None = None  # the last Event's (reason, replicas)
    #: The placement's last refusal of a scale-up: kept (the count it capped is placeable
    #: again at once) until the fleet's version moves on.
    refused: Unplaceable | None = None


def _live(pod: Mapping[str, Any]) -> bool:
    meta, st = pod.get("metadata") or {}, pod.get("status") or {}
    return (
        bool(st.get("podIP")) and st.get("phase") == "Running" and not meta.get("deletionTimestamp")
    )


class AutoscalingLoop:
    """Decides for every tracked deployment once per ``settings.interval_s`` (``run`` in a
    thread; ``tick`` is one round, called directly by tests)."""

    def __init__(
        self,
        kube: ScaleAPI,
        reports: ReportSource,
        settings: AutoscalingSettings,
        fleet_version: Callable[[], str] = lambda: "",
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], str] | None = None,
        build: Callable[
            [LLMDeploymentSpec, Mapping[str, Any], AutoscalingSettings], Autoscaler
        ] = build_autoscaler,
    ) -> None:
        self.kube, self.reports, self.settings = kube, reports, settings
        self.fleet_version, self.clock, self.now = fleet_version, clock, now or utc_now
        self.build = build
        self._tracked: dict[tuple[str, str], _Tracked] = {}
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- which deployments ------------------------------------------------------------------

    def track(self, namespace: str, name: str) -> None:
        with self._guard:
            self._tracked.setdefault((namespace, name), _Tracked())

    def forget(self, namespace: str, name: str) -> None:
        with self._guard:
            self._tracked.pop((namespace, name), None)

    def tracked(self) -> list[tuple[str, str]]:
        with self._guard:
            return sorted(self._tracked)

    # -- running ----------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="autoscaler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def run(self) -> None:
        while not self._stop.wait(self.settings.interval_s):
            self.tick()

    def tick(self) -> dict[tuple[str, str], ScaleDecision]:
        """One round over the tracked deployments: what was decided for each (an error in one
        is logged, and the others still get their turn)."""
        decided = {}
        for key in self.tracked():
            try:
                decision = self.tick_one(*key)
            except Exception:
                log.exception(f"autoscaling {key[0]}/{key[1]} failed; next tick tries again")
                continue
            if decision is not None:
                decided[key] = decision
        return decided

    def tick_one(self, namespace: str, name: str) -> ScaleDecision | None:
        body = self.kube.get_llmdeployment(namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            self.forget(namespace, name)
            return None
        obj = LLMDeployment.model_validate(body)
        spec, current = obj.spec, body.get("status") or {}
        with self._guard:
            tracked = self._tracked.get((namespace, name))
        if tracked is None:
            return None
        if not spec.autoscaling.enabled:
            if spec.lora_capacity is None:
                self.forget(namespace, name)
            else:  # tracked for status.adapters alone
                self._adapters(obj, self._reports(obj)[1])
            return None
        if status.find(current.get("conditions") or [], status.PLACED) is None:
            return None  # not converged once yet: nothing to scale
        built_for = "|".join(
            (spec.model.model_dump_json(), spec.slo.model_dump_json(),
             str(current.get("gpuType")), str(current.get("placement", [{}])[:1]))
        )  # fmt: skip
        if tracked.autoscaler is None or tracked.built_for != built_for:
            tracked.autoscaler, tracked.built_for = self.build(spec, current, self.settings), (
                built_for)  # fmt: skip
        pods, reports = self._reports(obj)
        if spec.lora_capacity is not None:
            self._adapters(obj, reports)
        sample = tracked.window.observe(self.clock(), reports, held=self._held(obj))
        fleet = self.fleet_version()
        refused = unplaceable(current, spec.replicas, fleet, spec.autoscaling.min_replicas)
        if refused is not None or (tracked.refused and tracked.refused.fleet_version != fleet):
            tracked.refused = refused
        decision, tracked.state = tracked.autoscaler.decide(
            tracked.state,
            sample,
            desired=spec.replicas,
            ready=int(current.get("readyReplicas") or 0),
            bounds=Bounds.from_spec(spec.autoscaling),
            slo_attainment=spec.slo.attainment,
            unplaceable=tracked.refused,
            fleet_version=fleet,
        )
        if decision.replicas != spec.replicas:
            self._scale(body, decision, drain_order(pods, reports))
        self._report(namespace, name, decision, tracked)
        return decision

    def _reports(self, obj: LLMDeployment) -> tuple[list[dict[str, Any]], dict[str, LoadReport]]:
        """The running pods and their gateways' load reports, by pod name."""
        meta = obj.metadata
        pods = [
            p
            for p in self.kube.list_pods(meta.namespace, naming.selector_string(meta.name))
            if _live(p)
        ]
        reports = {
            str(p["metadata"]["name"]): r
            for p in pods
            if (r := self.reports.gateway(p["status"]["podIP"])) is not None
        }
        return pods, reports

    def _adapters(self, obj: LLMDeployment, reports: Mapping[str, LoadReport]) -> None:
        """``status.adapters`` from the gateways' reports: which pods have each adapter loaded
        (written when it changed; a stale write is left to the next tick)."""
        meta = obj.metadata
        adapters = status.adapter_status(obj.spec, reports)
        body = self.kube.get_llmdeployment(meta.namespace, meta.name)
        if body is None or (body.get("status") or {}).get("adapters") == adapters:
            return
        try:
            self.kube.patch_llmdeployment_status(
                meta.namespace, meta.name, {"adapters": adapters},
                body["metadata"].get("resourceVersion"),
            )  # fmt: skip
        except StaleWrite:
            log.info(f"{meta.namespace}/{meta.name}: status.adapters raced a write; next tick")

    def _held(self, obj: LLMDeployment) -> int:
        """Requests the deployment's routers hold for want of a ready replica."""
        if not obj.spec.needs_router:
            return 0
        meta = obj.metadata
        https = obj.spec.gateway.tls is not None
        routers = self.kube.list_pods(meta.namespace, f"{naming.LABEL_ROUTER}={meta.name}")
        return sum(self.reports.held(p["status"]["podIP"], https) or 0 for p in routers if _live(p))

    def _scale(self, body: Mapping[str, Any], decision: ScaleDecision, order: list[int]) -> None:
        meta = body["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        if decision.reason in ("ScaleDown", "ScaleToZero"):
            going = order[: decision.previous - decision.replicas]
            self.kube.annotate_llmdeployment(
                namespace, name, {naming.ANNOTATION_DRAIN_FIRST: ",".join(map(str, going)) or None}
            )
        log.info(f"{namespace}/{name}: {decision.reason}: {decision.message}")
        self.kube.scale_llmdeployment(namespace, name, decision.replicas)

    def _report(
        self, namespace: str, name: str, decision: ScaleDecision, tracked: _Tracked
    ) -> None:
        """``sloAttainment`` and the condition, guarded by resourceVersion (the reconciler
        writes the status too); an Event when the count or the reason changed."""
        verdict = status.Verdict(
            AUTOSCALING, "False" if decision.warning else "True", decision.reason,
            decision.message,
        )  # fmt: skip
        for attempt in range(3):
            body = self.kube.get_llmdeployment(namespace, name)
            if body is None:
                return
            current = body.get("status") or {}
            conditions = current.get("conditions") or []
            patch: dict[str, Any] = {}
            if status.find(conditions, AUTOSCALING) != verdict:
                generation = int(body["metadata"].get("generation") or 0)
                patch["conditions"] = status.set_conditions(
                    conditions, [verdict], generation, self.now()
                )
            if decision.attainment is not None:
                attained = round(decision.attainment, 4)
                if current.get("sloAttainment") != attained:
                    patch["sloAttainment"] = attained
            if patch:
                try:
                    self.kube.patch_llmdeployment_status(
                        namespace, name, patch, body["metadata"].get("resourceVersion")
                    )
                except StaleWrite:
                    if attempt == 2:
                        raise
                    continue
            break
        said = (decision.reason, decision.replicas)
        if decision.replicas != decision.previous or (
            tracked.said is None or tracked.said[0] != decision.reason
        ):
            if body is not None:
                self.kube.post_event(body, decision.warning, decision.reason, decision.message)
            tracked.said = said
