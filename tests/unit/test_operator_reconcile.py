"""The reconcile loop against a small in-memory API (the real API server is in tests/e2e)."""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Mapping
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException
from llmd_builders import make_body, make_node

from goodput.operator import naming
from goodput.operator.kube import StaleWrite, apply_body
from goodput.operator.metrics import OperatorMetrics
from goodput.operator.model_memory import EstimatedMemory
from goodput.operator.placement.first_fit import FirstFitSelector
from goodput.operator.reconcile import Reconciler, replica_ids, without_drained
from goodput.operator.settings import WorkloadSettings

H100 = "NVIDIA-H100-80GB-HBM3"


class FakeKube:
    """Stores applied objects by (kind, namespace, name) like server-side apply, and the
    LLMDeployments with a resourceVersion that status writes must match."""

    def __init__(self, nodes: list[dict[str, Any]]) -> None:
        self.nodes = nodes
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.applies = 0
        self.parents: dict[tuple[str, str], dict[str, Any]] = {}
        self.status_writes = 0
        self.conflicts = 0
        self.deleted: list[str] = []

    def add_parent(self, body: dict[str, Any]) -> None:
        body["metadata"]["resourceVersion"] = "1"
        self.parents[(body["metadata"]["namespace"], body["metadata"]["name"])] = body

    def parent(self) -> dict[str, Any]:
        return self.parents[("ml", "llama")]

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        self.applies += 1
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        stored = copy.deepcopy(dict(obj))
        if obj["kind"] == "Deployment":
            gen = self.objects.get(key, {}).get("metadata", {}).get("generation", 0)
            if self.objects.get(key, {}).get("spec") != stored["spec"]:
                gen += 1
            stored["metadata"]["generation"] = gen
            stored["status"] = self.objects.get(key, {}).get("status", {})
        self.objects[key] = stored
        return copy.deepcopy(stored)

    def list_nodes(self) -> list[dict[str, Any]]:
        return self.nodes

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """Replica 0's pod is bound to gpu-0, replica 1's is pending."""
        bound = {"metadata": {"name": "llama-r0-abc", "labels": {naming.LABEL_REPLICA: "0"}}}
        pending = {"metadata": {"name": "llama-r1-def", "labels": {naming.LABEL_REPLICA: "1"}}}
        return [{**bound, "spec": {"nodeName": "gpu-0"}}, {**pending, "spec": {}}]

    def list_deployments(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        """Deployments matching a selector of ``key=value`` and ``key`` (exists) terms."""
        terms = [t.partition("=") for t in selector.split(",")]
        return [
            copy.deepcopy(obj)
            for (kind, ns, _), obj in sorted(self.objects.items())
            if kind == "Deployment"
            and ns == namespace
            and all(
                k in obj["metadata"]["labels"] and (not eq or obj["metadata"]["labels"][k] == v)
                for k, eq, v in terms
            )
        ]

    def delete_deployment(self, namespace: str, name: str) -> None:
        self.deleted.append(name)
        self.objects.pop(("Deployment", namespace, name), None)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.deleted.append(f"{kind}/{name}")
        self.objects.pop((kind, namespace, name), None)

    def deployment(self, name: str) -> dict[str, Any]:
        return self.objects[("Deployment", "ml", name)]

    def deployments(self) -> list[str]:
        return sorted(k[2] for k in self.objects if k[0] == "Deployment")

    def get_llmdeployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.parents.get((namespace, name)))

    def patch_llmdeployment_status(
        self, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None
    ) -> None:
        stored = self.parents[(namespace, name)]
        if (
            resource_version is not None
            and resource_version != stored["metadata"]["resourceVersion"]
        ):
            self.conflicts += 1
            raise StaleWrite("changed")
        stored.setdefault("status", {}).update(copy.deepcopy(dict(status)))
        stored["metadata"]["resourceVersion"] = str(int(stored["metadata"]["resourceVersion"]) + 1)
        self.status_writes += 1

    def ready(self) -> None:
        """Every replica Deployment's pod is up to date and ready."""
        for name in self.deployments():
            dep = self.deployment(name)
            dep["status"] = {
                "observedGeneration": dep["metadata"]["generation"],
                "replicas": 1,
                "readyReplicas": 1,
                "updatedReplicas": 1,
                "conditions": [{"type": "Progressing", "reason": "NewReplicaSetAvailable"}],
            }


def _reconciler(kube: FakeKube) -> tuple[Reconciler, OperatorMetrics]:
    memory = EstimatedMemory()
    metrics = OperatorMetrics()
    r = Reconciler(kube, FirstFitSelector(memory), memory, metrics, WorkloadSettings())
    return r, metrics


def _sample(metrics: OperatorMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def _run(r: Reconciler, kube: FakeKube, **spec: Any) -> tuple[Any, dict[str, Any]]:
    """Converge the stored parent (after updating its spec) and store its status."""
    parent = kube.parent()
    parent["spec"].update(spec)
    parent["metadata"]["generation"] += 1 if spec else 0
    outcome = r.converge(copy.deepcopy(parent))
    r.store_status("ml", "llama", outcome)
    return outcome, kube.parent()["status"]


def _kube(**spec: Any) -> FakeKube:
    kube = FakeKube([make_node("gpu-0", H100)])
    kube.add_parent(make_body(**spec))
    return kube


def test_converge_applies_owned_objects_and_reports_placement() -> None:
    kube = _kube(replicas=2)
    r, metrics = _reconciler(kube)
    outcome, s = _run(r, kube)
    kinds = sorted(k[0] for k in kube.objects)
    assert kinds == ["ConfigMap", "Deployment", "Deployment", "Service"]
    assert kube.deployments() == ["llama-r0", "llama-r1"], "one Deployment per replica"
    assert s["observedGeneration"] == 1
    assert s["gpuType"] == H100 and s["gpus"] == 2
    assert s["selector"] == f"{naming.LABEL_DEPLOYMENT}=llama"
    assert s["endpoint"] == "http://llama.ml.svc:80/v1"
    assert s["phase"] == "Progressing" and s["ready"] == "0/2"
    assert s["profile"]["source"] == "catalog:llama-3-8b" and s["profile"]["weightsGiB"] > 10
    assert s["profile"]["maxConcurrency"] >= 1
    assert s["placement"] == [
        {"replica": 0, "nodes": ["gpu-0"], "gpus": 1, "tensor": 1, "pipeline": 1}
    ]
    placed = next(c for c in s["conditions"] if c["type"] == "Placed")
    assert placed["status"] == "True" and H100 in placed["message"]
    assert [n.reason for n in outcome.notices] == ["Placed", "Applied"]
    assert _sample(metrics, "goodput_operator_gpus_allocated", gpu_product=H100) == 2
    assert _sample(metrics, "goodput_operator_gpus_capacity", gpu_product=H100) == 8
    assert _sample(metrics, "goodput_operator_deployments", phase="Progressing") == 1


def test_converging_twice_is_idempotent_and_quiet() -> None:
    kube = _kube()
    r, _ = _reconciler(kube)
    _, first = _run(r, kube)
    first = copy.deepcopy(first)
    dep_before = copy.deepcopy(kube.deployment("llama-r0"))
    writes = kube.status_writes
    outcome, second = _run(r, kube)
    assert kube.deployment("llama-r0") == dep_before
    assert len(kube.objects) == 3 and kube.deleted == []
    assert outcome.notices == ()
    assert kube.status_writes == writes, "an unchanged status is not written again"
    assert second["conditions"] == first["conditions"]


def test_spec_change_rolls_the_pods_through_the_config_hash() -> None:
    kube = _kube()
    r, _ = _reconciler(kube)
    _run(r, kube)
    tpl = kube.deployment("llama-r0")["spec"]["template"]
    _run(r, kube, scheduling={"policy": "fcfs"})
    tpl2 = kube.deployment("llama-r0")["spec"]["template"]
    key = naming.ANNOTATION_CONFIG_HASH
    assert tpl["metadata"]["annotations"][key] != tpl2["metadata"]["annotations"][key]
    assert kube.parent()["status"]["observedGeneration"] == 2


def test_unplaceable_spec_sets_placed_false_without_raising() -> None:
    kube = _kube(resources={"gpuTypes": ["B200"]})
    r, metrics = _reconciler(kube)
    outcome, s = _run(r, kube)
    assert kube.applies == 0
    placed = next(c for c in s["conditions"] if c["type"] == "Placed")
    assert (placed["status"], placed["reason"]) == ("False", "NoMatchingGPUType")
    assert "B200" in placed["message"]
    assert s["phase"] == "Pending"
    assert [(n.warning, n.reason) for n in outcome.notices] == [(True, "NoMatchingGPUType")]
    again, _ = _run(r, kube)
    assert again.notices == (), "the same refusal is not re-announced"
    assert _sample(metrics, "goodput_operator_deployments", phase="Pending") == 1


class RefusingKube(FakeKube):
    """The API server refusing every Deployment for its content (a 422), as it would an
    object the schema lets through but the Deployment's own validation does not."""

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        if obj["kind"] == "Deployment":
            refusal = {"message": "spec.template: Invalid value: 'x'"}
            raise ApiException(422, "Unprocessable Entity", body=json.dumps(refusal))
        return super().apply(obj)


def test_a_refused_workload_ends_in_placed_false_not_a_retry_loop() -> None:
    kube = RefusingKube([make_node("gpu-0", H100)])
    kube.add_parent(make_body())
    r, _ = _reconciler(kube)
    outcome, s = _run(r, kube)
    placed = next(c for c in s["conditions"] if c["type"] == "Placed")
    assert (placed["status"], placed["reason"]) == ("False", "WorkloadRejected")
    assert "Invalid value: 'x'" in placed["message"], "the API server's own words"
    assert [(n.warning, n.reason) for n in outcome.notices] == [(True, "WorkloadRejected")]
    again, _ = _run(r, kube)
    assert again.notices == (), "the same refusal is not re-announced"


def test_a_transient_api_error_still_raises_for_a_retry() -> None:
    class Flaky(FakeKube):
        def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
            raise ApiException(503, "Service Unavailable")

    kube = Flaky([make_node("gpu-0", H100)])
    kube.add_parent(make_body())
    r, _ = _reconciler(kube)
    with pytest.raises(ApiException):
        r.converge(copy.deepcopy(kube.parent()))


def test_the_apply_body_is_utf8_without_surrogate_escapes() -> None:
    body = apply_body({"source": "model-\U0001c097-\U0001f600", "lone": "\ud800"})
    assert b"\\ud" not in body, "the API server's YAML decoder refuses surrogate escapes"
    assert json.loads(body)["source"] == "model-\U0001c097-\U0001f600"
    assert json.loads(body)["lone"] == "?"


def test_workload_readiness_flows_into_the_parent_status() -> None:
    kube = _kube()
    r, metrics = _reconciler(kube)
    _run(r, kube)
    kube.ready()
    new = r.store_status("ml", "llama")
    assert new is not None and new["phase"] == "Available" and new["ready"] == "1/1"
    assert kube.parent()["status"]["phase"] == "Available"
    assert _sample(metrics, "goodput_operator_deployments", phase="Available") == 1
    writes = kube.status_writes
    r.store_status("ml", "llama")
    assert kube.status_writes == writes, "no write when nothing changed"


def test_the_watch_writes_nothing_before_the_first_convergence() -> None:
    kube = _kube()
    r, _ = _reconciler(kube)
    assert r.store_status("ml", "llama") is None
    assert "status" not in kube.parent()


def test_a_concurrent_write_is_not_clobbered() -> None:
    """The handler converged from an old read; the watch wrote meanwhile: the handler's write
    fails its resourceVersion check, re-reads, and keeps the newer readiness."""
    kube = _kube()
    r, _ = _reconciler(kube)
    outcome = r.converge(kube.parent())
    stale = kube.get_llmdeployment("ml", "llama")
    _run(r, kube)  # first status
    kube.ready()
    r.store_status("ml", "llama")  # the watch: Available
    assert stale is not None
    real_get = kube.get_llmdeployment
    reads = iter([stale])
    kube.get_llmdeployment = lambda ns, n: next(reads, None) or real_get(ns, n)  # type: ignore[method-assign]
    r.store_status("ml", "llama", outcome)
    assert kube.conflicts == 1, "the stale write was refused, then retried on a fresh read"
    assert kube.parent()["status"]["phase"] == "Available"


def test_scaling_touches_only_the_added_or_removed_replicas() -> None:
    kube = _kube(replicas=2)
    r, _ = _reconciler(kube)
    _run(r, kube)
    kube.ready()
    r0 = copy.deepcopy(kube.deployment("llama-r0"))
    _, s = _run(r, kube, replicas=3)
    assert kube.deployments() == ["llama-r0", "llama-r1", "llama-r2"]
    assert kube.deployment("llama-r0") == r0, "an existing replica is not rolled"
    assert s["phase"] == "Progressing" and s["ready"] == "2/3"
    _, s = _run(r, kube, replicas=1)
    assert kube.deployments() == ["llama-r0"] and sorted(kube.deleted) == ["llama-r1", "llama-r2"]
    assert kube.deployment("llama-r0") == r0
    assert s["phase"] == "Available" and s["ready"] == "1/1" and s["replicas"] == 1
    assert [p["replica"] for p in s["placement"]] == [0]


def test_scaled_to_zero_has_no_workloads_and_says_so() -> None:
    kube = _kube(replicas=1)
    r, _ = _reconciler(kube)
    _run(r, kube)
    _, s = _run(r, kube, replicas=0)
    assert kube.deployments() == [] and s["phase"] == "Pending"
    assert s["placement"] == [] and "scaled to zero" in s["message"]


def test_stale_workloads_are_deleted_only_when_owned() -> None:
    """The single Deployment of the older layout goes; a look-alike someone else owns stays."""
    kube = _kube()
    old = {
        "kind": "Deployment",
        "metadata": {
            "name": "llama",
            "namespace": "ml",
            "labels": naming.labels("llama"),
            "ownerReferences": [naming.owner_reference("llama", "uid-1")],
        },
        "spec": {"replicas": 1},
    }
    foreign = copy.deepcopy(old)
    foreign["metadata"].update(name="llama-copy", ownerReferences=[])
    kube.apply(old)
    kube.apply(foreign)
    r, _ = _reconciler(kube)
    _, s = _run(r, kube)
    assert kube.deployments() == ["llama-copy", "llama-r0"] and kube.deleted == ["llama"]
    assert [p["replica"] for p in s["placement"]] == [0]


def test_a_new_pod_template_rolls_serving_replicas_one_at_a_time() -> None:
    kube = _kube(replicas=2)
    r, _ = _reconciler(kube)
    _run(r, kube)
    kube.ready()
    old = {n: copy.deepcopy(kube.deployment(n)) for n in kube.deployments()}
    _, s = _run(r, kube, engine={"args": ["--max-num-seqs", "32"]})
    assert kube.deployment("llama-r0") != old["llama-r0"], "the lowest replica rolls first"
    assert kube.deployment("llama-r1") == old["llama-r1"], "the other keeps serving meanwhile"
    assert r.rolling("ml", "llama") and s["phase"] == "Progressing"
    _run(r, kube)  # the watch converges again: replica 0 has not served on the new spec yet
    assert kube.deployment("llama-r1") == old["llama-r1"]
    kube.ready()  # replica 0's new pod is ready
    _run(r, kube)
    assert kube.deployment("llama-r1") != old["llama-r1"] and not r.rolling("ml", "llama")
    tpl = [kube.deployment(n)["spec"]["template"] for n in kube.deployments()]
    assert all("32" in t["spec"]["containers"][0]["args"] for t in tpl)
    kube.ready()
    _, s = _run(r, kube)
    assert s["phase"] == "Available" and s["ready"] == "2/2"


class PausingKube(FakeKube):
    """Holds the first replica Deployment's apply until released: a converge caught between
    reading its LLMDeployment and writing what follows from that read."""

    def __init__(self, nodes: list[dict[str, Any]]) -> None:
        super().__init__(nodes)
        self.paused, self.release = threading.Event(), threading.Event()

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        if obj["kind"] == "Deployment" and not self.paused.is_set():
            self.paused.set()
            assert self.release.wait(10)
        return super().apply(obj)


def test_converges_of_one_deployment_never_overlap_and_the_last_read_wins() -> None:
    """A converge of 3 replicas (a watch's, say) is mid-apply when the LLMDeployment is scaled
    to 0 and its handler converges. Overlapping, the handler's would find nothing to delete yet,
    and the first would then create all three for an LLMDeployment that wants none."""
    kube = PausingKube([make_node("gpu-0", H100)])
    kube.add_parent(make_body(replicas=3))
    r, _ = _reconciler(kube)
    first = threading.Thread(target=r.reconcile, args=("ml", "llama"))
    first.start()
    assert kube.paused.wait(10)
    kube.parent()["spec"]["replicas"] = 0
    kube.parent()["metadata"]["generation"] += 1
    second = threading.Thread(target=r.reconcile, args=("ml", "llama"))
    second.start()
    second.join(0.5)
    waited = second.is_alive()
    kube.release.set()
    first.join(10)
    second.join(10)
    assert kube.deployments() == [] and sorted(kube.deleted) == ["llama-r0", "llama-r1", "llama-r2"]
    assert waited, "the second converge waited for the first"
    s = kube.parent()["status"]
    assert s["observedGeneration"] == kube.parent()["metadata"]["generation"]
    assert s["placement"] == []


def test_the_handlers_converge_the_spec_as_it_is_now() -> None:
    kube = _kube(replicas=2)
    r, _ = _reconciler(kube)
    r.reconcile("ml", "llama")
    kube.parent()["spec"]["replicas"] = 1  # changed after the event that calls reconcile
    parent, outcome = r.reconcile("ml", "llama") or ({}, None)
    assert kube.deployments() == ["llama-r0"] and parent["spec"]["replicas"] == 1
    assert outcome is not None and outcome.placed.status == "True"
    del kube.parents[("ml", "llama")]
    assert r.reconcile("ml", "llama") is None and r.refresh("ml", "llama") is None


def test_a_replica_deployment_the_spec_does_not_want_goes_on_the_next_event() -> None:
    """A replica Deployment beyond the spec's count (left by a converge of an older spec) is
    deleted by the next event on any replica Deployment; without one, an event only updates the
    status."""
    kube = _kube(replicas=1)
    r, _ = _reconciler(kube)
    r.reconcile("ml", "llama")
    kube.ready()
    applies = kube.applies
    assert r.refresh("ml", "llama") is None and kube.applies == applies
    assert kube.parent()["status"]["ready"] == "1/1"
    stray = copy.deepcopy(kube.deployment("llama-r0"))
    stray["metadata"]["name"] = "llama-r1"
    stray["metadata"]["labels"][naming.LABEL_REPLICA] = "1"
    kube.apply(stray)
    assert r.refresh("ml", "llama") is not None
    assert kube.deployments() == ["llama-r0"] and kube.deleted == ["llama-r1"]


def test_scaling_down_removes_the_replicas_the_autoscaler_names_first() -> None:
    """The autoscaler names the replica with the least work in flight (goodput.dev/drain-first)
    before it lowers spec.replicas: that one goes, not the highest id; a stale annotation moves
    nothing once the count matches."""
    kube = _kube(replicas=3)
    r, _ = _reconciler(kube)
    _run(r, kube)
    assert kube.deployments() == ["llama-r0", "llama-r1", "llama-r2"]
    kube.parent()["metadata"]["annotations"] = {naming.ANNOTATION_DRAIN_FIRST: "0"}
    _run(r, kube, replicas=2)
    assert kube.deployments() == ["llama-r1", "llama-r2"] and kube.deleted == ["llama-r0"]
    _run(r, kube, replicas=3)  # up again: the lowest free id, the others untouched
    assert kube.deployments() == ["llama-r0", "llama-r1", "llama-r2"]
    _run(r, kube, replicas=1)  # the annotation names one; the second to go is the highest
    assert kube.deployments() == ["llama-r1"]
    _run(r, kube, replicas=1)
    assert kube.deployments() == ["llama-r1"]


def test_replica_ids_keep_the_running_ones() -> None:
    assert replica_ids([], 2) == [0, 1]
    assert replica_ids([0, 1, 2], 2) == [0, 1]
    assert replica_ids([0, 1, 2], 2, first=[1]) == [0, 2]
    assert replica_ids([2], 2, first=[2]) == [0, 2], "not removed when none are too many"
    assert replica_ids([0, 2], 3) == [0, 1, 2]
    assert replica_ids([0, 1], 0, first=[1]) == []
    placement = [{"replica": 0}, {"replica": 1}, {"replica": 2}]
    assert without_drained(placement, 2, [1, 2]) == [{"replica": 0}, {"replica": 2}]
    assert without_drained(placement, 3, [1]) == placement
