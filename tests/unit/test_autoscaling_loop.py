"""The operator's autoscaling loop against an in-memory API and scripted load reports: it scales
through the scale subresource, writes sloAttainment and the Autoscaling condition, posts an
Event only when something changes, wakes a deployment at zero on the router's held requests,
names the least busy replica to drain, and does not ask again for a scale-up the placement
refused until the fleet changes."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from llmd_builders import make_body

from goodput.api.llmdeployment import LLMDeploymentSpec
from goodput.api.load_report import LoadReport
from goodput.operator import naming, status
from goodput.operator.autoscaler import (
    AUTOSCALING,
    FALLBACK_REPLICA_RPS,
    AutoscalingLoop,
    FixedThroughput,
    build_autoscaler,
    drain_order,
)
from goodput.operator.autoscaling import Autoscaler, ProfilerThroughput
from goodput.operator.kube import StaleWrite
from goodput.operator.settings import AutoscalingSettings

TICK_S = 15.0
SETTINGS = AutoscalingSettings(interval_s=TICK_S, replica_rps=1.0, cold_start_s=30.0)


class FakeAPI:
    """One LLMDeployment with a resourceVersion, its pods, and what the loop wrote."""

    def __init__(self, replicas: int, autoscaling: dict[str, Any], placed: int | None = None):
        body = make_body(replicas=replicas, autoscaling={"enabled": True, **autoscaling})
        body["metadata"]["resourceVersion"] = "1"
        placed = replicas if placed is None else placed
        body["status"] = {
            "conditions": [_placed("True", "GPUsChosen")],
            "readyReplicas": placed,
            "placement": [
                {"replica": i, "nodes": ["gpu-0"], "gpus": 1, "tensor": 1, "pipeline": 1}
                for i in range(placed)
            ],
        }
        self.body = body
        self.pods: list[dict[str, Any]] = [_pod(i) for i in range(placed)]
        self.routers: list[dict[str, Any]] = []
        self.scaled: list[int] = []
        self.annotations: list[dict[str, str | None]] = []
        self.events: list[tuple[bool, str]] = []
        self.stale_next = False

    def get_llmdeployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.body)

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return copy.deepcopy(self.routers if naming.LABEL_ROUTER in selector else self.pods)

    def scale_llmdeployment(self, namespace: str, name: str, replicas: int) -> None:
        self.scaled.append(replicas)
        self.body["spec"]["replicas"] = replicas
        self._bump()

    def annotate_llmdeployment(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> None:
        self.annotations.append(dict(annotations))

    def patch_llmdeployment_status(
        self, namespace: str, name: str, patch: Mapping[str, Any], resource_version: str | None
    ) -> None:
        if self.stale_next or resource_version != self.body["metadata"]["resourceVersion"]:
            self.stale_next = False
            self._bump()
            raise StaleWrite("changed")
        self.body["status"].update(copy.deepcopy(dict(patch)))
        self._bump()

    def post_event(
        self, involved: Mapping[str, Any], warning: bool, reason: str, message: str
    ) -> None:
        self.events.append((warning, reason))

    def _bump(self) -> None:
        self.body["metadata"]["resourceVersion"] = str(
            int(self.body["metadata"]["resourceVersion"]) + 1
        )

    def condition(self) -> status.Verdict | None:
        return status.find(self.body["status"]["conditions"], AUTOSCALING)


def _placed(state: str, reason: str) -> dict[str, Any]:
    return {
        "type": status.PLACED,
        "status": state,
        "reason": reason,
        "message": reason,
        "lastTransitionTime": "2026-12-03T18:00:00Z",
    }


def _pod(replica: int) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"llama-r{replica}-x",
            "labels": {naming.LABEL_DEPLOYMENT: "llama", naming.LABEL_REPLICA: str(replica)},
        },
        "status": {"podIP": f"10.0.0.{replica + 1}", "phase": "Running"},
    }


class FakeReports:
    """Per pod IP, a gateway's counters advanced by ``serve``; per router IP, a held count."""

    def __init__(self) -> None:
        self.reports: dict[str, LoadReport] = {}
        self.held_by: dict[str, int] = {}

    def serve(self, api: FakeAPI, per_pod: int, inflight: dict[int, int] | None = None) -> None:
        """Each pod judged ``per_pod`` more requests (all within the SLO) since the last tick."""
        for pod in api.pods:
            ip, replica = (
                pod["status"]["podIP"],
                int(pod["metadata"]["labels"][naming.LABEL_REPLICA]),
            )
            old = self.reports.get(ip) or LoadReport(ready=True, queue=0, inflight=0)
            self.reports[ip] = LoadReport(
                ready=True,
                queue=0,
                inflight=(inflight or {}).get(replica, 0),
                requests=old.requests + per_pod,
                met_slo=old.met_slo + per_pod,
                finished=old.finished + per_pod,
                prompt_tokens=old.prompt_tokens + 100 * per_pod,
                output_tokens=old.output_tokens + 20 * per_pod,
            )

    def gateway(self, pod_ip: str) -> LoadReport | None:
        return self.reports.get(pod_ip)

    def held(self, pod_ip: str, https: bool) -> int | None:
        return self.held_by.get(pod_ip)


def _fixed(spec: LLMDeploymentSpec, st: Mapping[str, Any], s: AutoscalingSettings) -> Autoscaler:
    return Autoscaler(FixedThroughput(s.replica_rps or 1.0), s.cold_start_s or 0.0, s.interval_s)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _loop(
    api: FakeAPI, reports: FakeReports, fleet: list[str] | None = None
) -> tuple[AutoscalingLoop, Clock]:
    clock = Clock()
    versions = fleet if fleet is not None else ["v1"]
    loop = AutoscalingLoop(
        api, reports, SETTINGS, lambda: versions[0], clock, lambda: "2026-12-03T19:00:00Z", _fixed
    )
    loop.track("ml", "llama")
    return loop, clock


def _ticks(loop: AutoscalingLoop, clock: Clock, api: FakeAPI, reports: FakeReports, n: int,
           per_pod: int, inflight: dict[int, int] | None = None) -> list[str]:  # fmt: skip
    reasons = []
    for _ in range(n):
        clock.t += TICK_S
        reports.serve(api, per_pod, inflight)
        reasons.append(loop.tick()[("ml", "llama")].reason)
    return reasons


def test_rising_load_scales_up_through_the_scale_subresource_and_says_why_once() -> None:
    api, reports = FakeAPI(1, {"minReplicas": 1, "maxReplicas": 4}), FakeReports()
    loop, clock = _loop(api, reports)
    assert _ticks(loop, clock, api, reports, 2, per_pod=3) == ["Steady", "Steady"]  # 0.2 req/s
    assert api.scaled == [] and api.events == [(False, "Steady")]
    # 45 requests a tick on one replica: 3 req/s against 1 req/s per replica.
    reasons = _ticks(loop, clock, api, reports, 1, per_pod=45)
    assert reasons == ["ScaleUp"] and api.scaled and api.scaled[-1] >= 3
    assert api.body["spec"]["replicas"] == api.scaled[-1]
    condition = api.condition()
    assert condition is not None and (condition.status, condition.reason) == ("True", "ScaleUp")
    assert "req/s" in condition.message
    assert api.body["status"]["sloAttainment"] == 1.0
    assert api.events[-1] == (False, "ScaleUp")
    # While the load stays, the count settles (starting replicas count as supply) and an Event
    # is posted only for a change of count or reason: not once a tick.
    events, said = len(api.events), "ScaleUp"
    expected = 0
    for _ in range(8):
        clock.t += TICK_S
        reports.serve(api, 45)
        d = loop.tick()[("ml", "llama")]
        expected += d.replicas != d.previous or d.reason != said
        said = d.reason
    assert len(api.events) - events == expected < 4
    assert api.body["spec"]["replicas"] <= 4 and api.scaled[-2:] == api.scaled[-2:]


def test_a_status_write_that_lost_a_race_is_retried_from_a_fresh_read() -> None:
    api, reports = FakeAPI(1, {"minReplicas": 1, "maxReplicas": 4}), FakeReports()
    loop, clock = _loop(api, reports)
    api.stale_next = True
    _ticks(loop, clock, api, reports, 1, per_pod=1)
    assert api.condition() is not None


def test_requests_held_by_the_router_wake_a_deployment_at_zero() -> None:
    api = FakeAPI(0, {"minReplicas": 0, "maxReplicas": 2, "scaleToZeroAfterSeconds": 60})
    reports = FakeReports()
    api.routers = [
        {
            "metadata": {"name": "llama-router-x"},
            "status": {"podIP": "10.0.1.1", "phase": "Running"},
        }
    ]
    loop, clock = _loop(api, reports)
    assert _ticks(loop, clock, api, reports, 1, per_pod=0) == ["ScaledToZero"]
    reports.held_by["10.0.1.1"] = 2
    assert _ticks(loop, clock, api, reports, 1, per_pod=0) == ["ScaleUpFromZero"]
    assert api.scaled == [1]
    assert api.events[-1] == (False, "ScaleUpFromZero")


def test_idle_goes_to_zero_after_the_idle_period_draining_the_last_replica() -> None:
    api = FakeAPI(1, {"minReplicas": 0, "maxReplicas": 2, "scaleToZeroAfterSeconds": 60})
    reports = FakeReports()
    loop, clock = _loop(api, reports)
    reasons = _ticks(loop, clock, api, reports, 6, per_pod=0)
    assert "ScaleToZero" in reasons and reasons[-1] == "ScaledToZero" and api.scaled == [0]
    assert api.annotations == [{naming.ANNOTATION_DRAIN_FIRST: "0"}]


def test_scaling_down_names_the_replica_with_the_least_in_flight_first() -> None:
    api = FakeAPI(3, {"minReplicas": 1, "maxReplicas": 4, "scaleDownStabilizationSeconds": 0})
    reports = FakeReports()
    loop, clock = _loop(api, reports)
    busy = {0: 2, 1: 0, 2: 1}
    reasons = _ticks(loop, clock, api, reports, 8, per_pod=0, inflight=busy)
    assert "ScaleDown" in reasons, reasons
    # Down to one at once (nothing arrives): the idle replica goes first, the busiest stays.
    assert api.scaled[0] == 1
    assert api.annotations[0] == {naming.ANNOTATION_DRAIN_FIRST: "1,2"}


def test_drain_order_is_least_work_first_and_unreported_pods_last() -> None:
    pods = [_pod(0), _pod(1), _pod(2), _pod(3)]
    reports = {
        "llama-r0-x": LoadReport(ready=True, queue=1, inflight=1),
        "llama-r1-x": LoadReport(ready=True, queue=0, inflight=0),
        "llama-r2-x": LoadReport(ready=True, queue=0, inflight=0),
    }
    assert drain_order(pods, reports) == [2, 1, 0, 3]


def test_a_refused_scale_up_is_reported_and_asked_again_only_when_the_fleet_changes() -> None:
    api, reports = FakeAPI(1, {"minReplicas": 1, "maxReplicas": 10}), FakeReports()
    fleet = ["v1"]
    loop, clock = _loop(api, reports, fleet)
    assert _ticks(loop, clock, api, reports, 2, per_pod=45) == ["Steady", "ScaleUp"]
    wanted = api.scaled[-1]
    # The placement found no GPUs for the new replicas; the one placed before keeps serving.
    api.body["status"]["conditions"] = [_placed("False", "InsufficientGPUs")]
    assert _ticks(loop, clock, api, reports, 1, per_pod=45) == ["ScaleUpUnplaceable"]
    assert api.scaled[-1] == 1 and api.events[-1] == (True, "ScaleUpUnplaceable")
    condition = api.condition()
    assert condition is not None and condition.status == "False"
    # Back at one replica the placement is happy again; the loop does not ask blindly.
    api.body["status"]["conditions"] = [_placed("True", "GPUsChosen")]
    for _ in range(3):
        assert _ticks(loop, clock, api, reports, 1, per_pod=45) == ["ScaleUpUnplaceable"]
    assert api.scaled[-1] == 1 and len(api.scaled) == 2
    fleet[0] = "v2"  # a node joined
    assert _ticks(loop, clock, api, reports, 1, per_pod=45) == ["ScaleUp"]
    assert api.scaled[-1] == wanted


def test_a_deployment_that_stops_autoscaling_or_goes_away_is_forgotten() -> None:
    api, reports = FakeAPI(1, {"minReplicas": 1, "maxReplicas": 4}), FakeReports()
    loop, clock = _loop(api, reports)
    api.body["spec"]["autoscaling"]["enabled"] = False
    clock.t += TICK_S
    assert loop.tick() == {} and loop.tracked() == []
    loop.track("ml", "llama")
    api.body["spec"]["autoscaling"]["enabled"] = True
    api.body["metadata"]["deletionTimestamp"] = "2026-12-03T19:00:00Z"
    assert loop.tick() == {} and loop.tracked() == []


def test_the_profiler_sizes_catalogued_models_and_the_setting_the_others() -> None:
    known = LLMDeploymentSpec.model_validate(make_body()["spec"])
    placed = {"gpuType": "NVIDIA-H100-80GB-HBM3", "placement": [{"tensor": 1, "pipeline": 1}]}
    autoscaler = build_autoscaler(known, placed, AutoscalingSettings(interval_s=5))
    assert isinstance(autoscaler.throughput, ProfilerThroughput)
    assert autoscaler.throughput.requests_per_second(1000, 200) > 1
    assert 60 < autoscaler.cold_start_s < 200 and autoscaler.tick_s == 5
    spec = make_body()["spec"]
    spec["model"] = {"name": "acme/unknown-7b"}
    unknown = LLMDeploymentSpec.model_validate(spec)
    assert build_autoscaler(unknown, placed, AutoscalingSettings()).throughput == (
        FixedThroughput(FALLBACK_REPLICA_RPS)
    )
    measured = build_autoscaler(known, placed, AutoscalingSettings(replica_rps=0.5))
    assert measured.throughput.requests_per_second(None, None) == 0.5
    assert build_autoscaler(unknown, {}, AutoscalingSettings(cold_start_s=42)).cold_start_s == 42


def test_a_deployment_waiting_for_its_first_gpus_keeps_asking_for_its_minimum() -> None:
    api = FakeAPI(1, {"minReplicas": 1, "maxReplicas": 4}, placed=0)
    api.body["status"]["conditions"] = [_placed("False", "InsufficientGPUs")]
    reports = FakeReports()
    loop, clock = _loop(api, reports)
    _ticks(loop, clock, api, reports, 3, per_pod=0)
    assert api.scaled == [] and api.body["spec"]["replicas"] == 1


def test_a_deployment_serving_adapters_gets_status_adapters_from_its_gateways() -> None:
    """Tracked for its adapters even without autoscaling: which pods have each one loaded."""
    api, reports = FakeAPI(2, {}), FakeReports()
    api.body["spec"]["autoscaling"]["enabled"] = False
    api.body["spec"]["adapters"] = [
        {"name": "sql", "source": "org/sql"},
        {"name": "chat", "source": "org/chat"},
    ]
    catalog = ["sql", "chat"]
    reports.reports = {
        "10.0.0.1": LoadReport.model_validate(
            {"ready": True, "queue": 0, "inflight": 0,
             "adapters": {"catalog": catalog, "loaded": ["sql"], "capacity": 4,
                          "coldLoads": {"sql": 2}}}
        ),
        "10.0.0.2": LoadReport.model_validate(
            {"ready": True, "queue": 0, "inflight": 0,
             "adapters": {"catalog": catalog, "loaded": ["chat", "sql"], "capacity": 4,
                          "coldLoads": {"sql": 1, "chat": 1}}}
        ),
    }  # fmt: skip
    loop, _ = _loop(api, reports)
    assert loop.tick() == {}, "nothing to scale"
    assert api.body["status"]["adapters"] == [
        {"name": "sql", "loadedOn": ["llama-r0-x", "llama-r1-x"], "coldLoads": 3},
        {"name": "chat", "loadedOn": ["llama-r1-x"], "coldLoads": 1},
    ]
    version = api.body["metadata"]["resourceVersion"]
    loop.tick()
    assert api.body["metadata"]["resourceVersion"] == version, "unchanged: not written again"
    assert loop.tracked() == [("ml", "llama")]
