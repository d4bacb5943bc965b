"""The reconcile loop against a small in-memory API (the real API server is in tests/e2e)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from llmd_builders import make_body, make_node

from goodput.operator import naming
from goodput.operator.gpu_selection import FirstFitSelector
from goodput.operator.metrics import OperatorMetrics
from goodput.operator.model_memory import EstimatedMemory
from goodput.operator.reconcile import Reconciler
from goodput.operator.settings import WorkloadSettings

H100 = "NVIDIA-H100-80GB-HBM3"


class FakeKube:
    """Stores applied objects by (kind, namespace, name), like server-side apply would."""

    def __init__(self, nodes: list[dict[str, Any]]) -> None:
        self.nodes = nodes
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.applies = 0
        self.parents: dict[tuple[str, str], dict[str, Any]] = {}

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
        return [
            {"metadata": {"name": "llama-abc"}, "spec": {"nodeName": "gpu-0"}},
            {"metadata": {"name": "llama-def"}, "spec": {}},
        ]

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get(("Deployment", namespace, name))

    def get_llmdeployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.parents.get((namespace, name))

    def patch_llmdeployment_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None:
        self.parents[(namespace, name)].setdefault("status", {}).update(status)


def _reconciler(kube: FakeKube) -> tuple[Reconciler, OperatorMetrics]:
    memory = EstimatedMemory()
    metrics = OperatorMetrics()
    r = Reconciler(kube, FirstFitSelector(memory), memory, metrics, WorkloadSettings())
    return r, metrics


def _sample(metrics: OperatorMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_converge_applies_owned_objects_and_reports_placement() -> None:
    kube = FakeKube([make_node("gpu-0", H100)])
    r, metrics = _reconciler(kube)
    out = r.converge(make_body(replicas=2))
    kinds = sorted(k[0] for k in kube.objects)
    assert kinds == ["ConfigMap", "Deployment", "Service"]
    s = out.status
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
    assert [n.reason for n in out.notices] == ["Placed", "Applied"]
    assert _sample(metrics, "goodput_operator_gpus_allocated", gpu_product=H100) == 2
    assert _sample(metrics, "goodput_operator_gpus_capacity", gpu_product=H100) == 8
    assert _sample(metrics, "goodput_operator_deployments", phase="Progressing") == 1


def test_converging_twice_is_idempotent_and_quiet() -> None:
    kube = FakeKube([make_node("gpu-0", H100)])
    r, _ = _reconciler(kube)
    body = make_body()
    first = r.converge(body)
    dep_before = copy.deepcopy(kube.objects[("Deployment", "ml", "llama")])
    body["status"] = first.status
    second = r.converge(body)
    assert kube.objects[("Deployment", "ml", "llama")] == dep_before
    assert len(kube.objects) == 3
    assert second.notices == ()
    placed = [c for c in second.status["conditions"] if c["type"] == "Placed"]
    assert placed[0]["lastTransitionTime"] == first.status["conditions"][0]["lastTransitionTime"]


def test_spec_change_rolls_the_pods_through_the_config_hash() -> None:
    kube = FakeKube([make_node("gpu-0", H100)])
    r, _ = _reconciler(kube)
    r.converge(make_body())
    tpl = kube.objects[("Deployment", "ml", "llama")]["spec"]["template"]
    r.converge(make_body(scheduling={"policy": "fcfs"}))
    tpl2 = kube.objects[("Deployment", "ml", "llama")]["spec"]["template"]
    key = naming.ANNOTATION_CONFIG_HASH
    assert tpl["metadata"]["annotations"][key] != tpl2["metadata"]["annotations"][key]


def test_unplaceable_spec_sets_placed_false_without_raising() -> None:
    kube = FakeKube([make_node("gpu-0", H100)])
    r, metrics = _reconciler(kube)
    out = r.converge(make_body(resources={"gpuTypes": ["B200"]}))
    assert kube.applies == 0
    placed = next(c for c in out.status["conditions"] if c["type"] == "Placed")
    assert (placed["status"], placed["reason"]) == ("False", "NoMatchingGPUType")
    assert "B200" in placed["message"]
    assert out.status["phase"] == "Pending"
    assert [(n.warning, n.reason) for n in out.notices] == [(True, "NoMatchingGPUType")]
    body = make_body(resources={"gpuTypes": ["B200"]})
    body["status"] = out.status
    assert r.converge(body).notices == (), "the same refusal is not re-announced"
    assert _sample(metrics, "goodput_operator_deployments", phase="Pending") == 1


def test_workload_changes_flow_into_the_parent_status() -> None:
    kube = FakeKube([make_node("gpu-0", H100)])
    r, _ = _reconciler(kube)
    parent = make_body()
    parent["status"] = r.converge(parent).status
    kube.parents[("ml", "llama")] = parent
    dep = kube.objects[("Deployment", "ml", "llama")]
    dep["status"] = {
        "observedGeneration": dep["metadata"]["generation"],
        "replicas": 1,
        "readyReplicas": 1,
        "updatedReplicas": 1,
        "conditions": [{"type": "Progressing", "reason": "NewReplicaSetAvailable"}],
    }
    new = r.workload_changed(parent, dep)
    assert new is not None and new["phase"] == "Available" and new["ready"] == "1/1"
    parent["status"].update(new)
    assert r.workload_changed(parent, dep) is None, "no patch when nothing changed"
