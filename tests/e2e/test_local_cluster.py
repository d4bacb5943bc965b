"""The local control plane is real: real scheduling, real controllers, kwok-simulated nodes."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from kubernetes.utils import parse_quantity

from goodput.dev.cluster import LocalCluster
from goodput.dev.fleet import Fleet

from . import waiting

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]

T = TypeVar("T")
H100 = "NVIDIA-H100-80GB-HBM3"


def wait_for(probe: Callable[[], T | None], what: str, **kwargs: Any) -> T:
    """The shared helper at this module's bound: 60 s (no operator here, only the cluster)."""
    return waiting.wait_for(probe, timeout=60, what=what, **kwargs)


def describe(cluster: LocalCluster, namespace: str) -> str:
    """Pods, events and GPU use: why something did not happen (the cluster may be shared)."""
    return "\n".join(
        [
            cluster.kubectl("get", "pods", "-A", "-o", "wide", check=False),
            cluster.kubectl("get", "events", "-n", namespace, check=False),
        ]
    )


def get_json(cluster: LocalCluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json"))


@pytest.fixture
def namespace(cluster: LocalCluster) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    wait_for(
        lambda: cluster.kubectl("get", "serviceaccount", "default", "-n", name, check=False),
        what=f"default ServiceAccount in {name}",
    )
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


def apply(cluster: LocalCluster, manifest: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(manifest))


def gpu_pod(name: str, gpus: int, product: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": "server",
                "image": "vllm/vllm-openai:v0.11.0",
                "resources": {
                    "requests": {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": str(gpus)},
                    "limits": {"nvidia.com/gpu": str(gpus)},
                },
            }
        ]
    }
    if product is not None:
        spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {
                                    "key": "nvidia.com/gpu.product",
                                    "operator": "In",
                                    "values": [product],
                                }
                            ]
                        }
                    ]
                }
            }
        }
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def with_namespace(manifest: dict[str, Any], namespace: str) -> dict[str, Any]:
    return {**manifest, "metadata": {**manifest["metadata"], "namespace": namespace}}


def test_fleet_nodes_exist_with_labels_capacity_and_are_ready(cluster: LocalCluster) -> None:
    expected = {n["metadata"]["name"]: n for n in Fleet.load("default").nodes()}
    nodes = {n["metadata"]["name"]: n for n in get_json(cluster, "nodes")["items"]}
    assert set(expected) <= set(nodes)
    for name, want in expected.items():
        node = nodes[name]
        for key, value in want["metadata"]["labels"].items():
            assert node["metadata"]["labels"][key] == value, (name, key)
        for resource, quantity in want["status"]["allocatable"].items():
            got = node["status"]["allocatable"][resource]
            assert parse_quantity(got) == parse_quantity(quantity), (name, resource)
        ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}
        assert ready["Ready"] == "True", name
        assert not any(
            t["key"].startswith("node.kubernetes.io/") for t in node["spec"].get("taints", [])
        )


def test_gpu_pod_is_bound_by_the_real_scheduler_and_runs(
    cluster: LocalCluster, namespace: str
) -> None:
    apply(cluster, with_namespace(gpu_pod("h100-server", 8, H100), namespace))

    def running() -> dict[str, Any] | None:
        pod = get_json(cluster, "pod", "h100-server", "-n", namespace)
        return pod if pod["status"].get("phase") == "Running" else None

    pod = wait_for(running, what="the GPU pod to run", explain=lambda: describe(cluster, namespace))
    node = get_json(cluster, "node", pod["spec"]["nodeName"])
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == H100
    conditions = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
    assert conditions["Ready"] == "True"
    assert pod["status"]["podIP"]
    events = get_json(cluster, "events", "-n", namespace)["items"]
    scheduled = [e for e in events if e["reason"] == "Scheduled"]
    assert any(
        (e.get("reportingComponent") or e["source"].get("component")) == "default-scheduler"
        for e in scheduled
    )


def test_pod_larger_than_any_node_stays_pending_with_failed_scheduling(
    cluster: LocalCluster, namespace: str
) -> None:
    apply(cluster, with_namespace(gpu_pod("too-big", 16), namespace))

    def failed_scheduling() -> list[dict[str, Any]] | None:
        events = get_json(cluster, "events", "-n", namespace)["items"]
        return [e for e in events if e["reason"] == "FailedScheduling"] or None

    events = wait_for(failed_scheduling, what="a FailedScheduling event")
    assert "Insufficient nvidia.com/gpu" in events[0]["message"]
    pod = get_json(cluster, "pod", "too-big", "-n", namespace)
    assert pod["status"]["phase"] == "Pending"
    assert not pod["spec"].get("nodeName")


def test_deployment_gets_replicaset_and_pods_and_deletion_collects_them(
    cluster: LocalCluster, namespace: str
) -> None:
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": namespace},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "containers": [
                        {"name": "web", "image": "nginx", "resources": {"requests": {"cpu": "1"}}}
                    ]
                },
            },
        },
    }
    apply(cluster, deployment)

    def ready() -> bool:
        status = get_json(cluster, "deployment", "web", "-n", namespace).get("status", {})
        return bool(status.get("readyReplicas") == 3)

    wait_for(ready, what="3 ready replicas", explain=lambda: describe(cluster, namespace))
    replicasets = get_json(cluster, "replicasets", "-n", namespace)["items"]
    assert len(replicasets) == 1
    assert replicasets[0]["metadata"]["ownerReferences"][0]["kind"] == "Deployment"
    pods = get_json(cluster, "pods", "-n", namespace, "-l", "app=web")["items"]
    assert len(pods) == 3 and all(p["status"]["phase"] == "Running" for p in pods)

    cluster.kubectl("delete", "deployment", "web", "-n", namespace, "--wait=false")

    def collected() -> bool:
        left = get_json(cluster, "replicasets,pods", "-n", namespace)["items"]
        return not left

    wait_for(collected, what="garbage collection of the ReplicaSet and pods")


def test_up_on_a_running_cluster_reuses_it(cluster: LocalCluster) -> None:
    before = {r.name: r.pid for r in cluster.supervisor.records()}
    started = time.monotonic()
    cluster.up(fleet="default")
    assert time.monotonic() - started < 30
    assert {r.name: r.pid for r in cluster.supervisor.records()} == before
