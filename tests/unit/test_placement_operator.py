"""The placement solver behind the operator's GPU selection seam (no cluster: a small fake API)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

from llmd_builders import make_body

from goodput.api.llmdeployment import LLMDeployment
from goodput.operator.gpu_selection import (
    FirstFitSelector,
    Placement,
    SelectionContext,
    Unplaceable,
    gpu_nodes,
)
from goodput.operator.inventory import GpuInventory
from goodput.operator.metrics import OperatorMetrics
from goodput.operator.model_memory import EstimatedMemory
from goodput.operator.placement.selector import SolverSelector
from goodput.operator.reconcile import Reconciler
from goodput.operator.settings import WorkloadSettings

H100 = "NVIDIA-H100-80GB-HBM3"
L4 = "NVIDIA-L4"


def node(name: str, product: str, gpus: int, zone: str) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "labels": {
                "nvidia.com/gpu.product": product,
                "topology.kubernetes.io/zone": zone,
                "goodput.dev/rack": f"{zone}-r0",
            },
        },
        "spec": {},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}},
    }


FLEET = [
    node("h100-a1", H100, 8, "a"),
    node("h100-a2", H100, 8, "a"),
    node("h100-b", H100, 8, "b"),
    node("l4-a", L4, 4, "a"),
    node("l4-b", L4, 4, "b"),
]


def pod(name: str, node_name: str, gpus: int, owner: str | None = None) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": "ml",
            "uid": name,
            "labels": {"goodput.dev/deployment": owner} if owner else {},
        },
        "spec": {
            "nodeName": node_name,
            "containers": [{"resources": {"requests": {"nvidia.com/gpu": str(gpus)}}}],
        },
        "status": {"phase": "Running"},
    }


def selector(pods: Sequence[dict[str, Any]] = (), *, pin: bool = True) -> SolverSelector:
    inventory = GpuInventory.from_objects(FLEET, pods)
    return SolverSelector(FirstFitSelector(EstimatedMemory()), inventory, pin_nodes=pin)


def select(
    sel: SolverSelector,
    *,
    placement: list[dict[str, Any]] | None = None,
    gpu_type: str | None = None,
    fleet: Sequence[dict[str, Any]] = FLEET,
    **spec: Any,
) -> Placement | Unplaceable:
    obj = LLMDeployment.model_validate(make_body(**spec))
    context = SelectionContext("ml/llama", fleet, placement or [], gpu_type)
    return sel.select(obj.spec, gpu_nodes(fleet), context)


def test_solver_places_replicas_on_exact_nodes_across_zones() -> None:
    out = select(selector(), replicas=2, resources={"gpuTypes": ["H100"]})
    assert isinstance(out, Placement)
    assert (out.gpu_product, out.tensor, out.pipeline) == (H100, 1, 1)
    assert sorted(out.pinned_nodes) == ["h100-a1", "h100-b"]  # one per zone
    assert "2 replicas" in out.detail and "spread over 2 zones" in out.detail


def test_other_pods_gpus_are_left_alone() -> None:
    busy = [
        pod("train", "h100-a1", 8),
        pod("train-2", "h100-a2", 8),
        pod("other-llm", "h100-b", 8, owner="chat"),
    ]
    out = select(selector(busy), replicas=1, resources={"gpuTypes": ["H100"]})
    assert isinstance(out, Unplaceable)
    assert (out.reason, out.retryable) == ("InsufficientGPUs", True)
    assert "largest free block 0" in out.message
    own = [pod("llama-0", "h100-a1", 8, owner="llama")]  # its own pods are re-derived, not taken
    assert isinstance(select(selector(own), resources={"gpuTypes": ["H100"]}), Placement)


def test_a_model_no_node_holds_is_reported_as_a_multi_node_plan() -> None:
    out = select(
        selector(),
        model={"name": "llama-405b", "architecture": "llama-3.1-405b"},
        slo={"ttftMs": 5000, "tpotMs": 200},
        resources={"gpuTypes": ["H100"]},
    )
    assert isinstance(out, Unplaceable) and out.reason == "MultiNodeReplica"
    assert "pipeline 2 across nodes (h100-a1+h100-a2)" in out.message and not out.retryable


def test_memory_refusal_names_the_constraint() -> None:
    out = select(
        selector(),
        model={"name": "llama-70b", "architecture": "llama-3-70b"},
        resources={"gpuTypes": ["L4"], "parallelism": {"pipeline": 1}},
    )
    assert isinstance(out, Unplaceable) and out.reason == "InsufficientGPUMemory"
    assert "no GPU type in [L4] can hold" in out.message
    assert "tensor parallelism <= 4 within one interconnect domain is too small" in out.message


def test_running_replicas_stay_and_only_a_lost_node_is_replaced() -> None:
    first = select(selector(), replicas=2, resources={"gpuTypes": ["H100"]})
    assert isinstance(first, Placement)
    status = [
        {"replica": i, "nodes": [n], "gpus": 1, "tensor": 1, "pipeline": 1}
        for i, n in enumerate(first.pinned_nodes)
    ]
    again = select(
        selector(), replicas=2, placement=status, gpu_type=H100, resources={"gpuTypes": ["H100"]}
    )
    assert isinstance(again, Placement) and again.pinned_nodes == first.pinned_nodes
    lost = first.pinned_nodes[1]
    remaining = [n for n in FLEET if n["metadata"]["name"] != lost]
    after = select(
        selector(),
        replicas=2,
        placement=status,
        gpu_type=H100,
        fleet=remaining,
        resources={"gpuTypes": ["H100"]},
    )
    assert isinstance(after, Placement)
    assert after.pinned_nodes[0] == first.pinned_nodes[0]
    assert lost not in after.pinned_nodes and "moved replicas [1]" in after.detail


def test_unknown_model_falls_back_to_first_fit() -> None:
    out = select(selector(), model={"name": "acme/secret-model-7B"})
    assert isinstance(out, Placement) and out.pinned_nodes == ()


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        stored = copy.deepcopy(dict(obj))
        self.objects[(obj["kind"], obj["metadata"]["name"])] = stored
        return stored

    def list_nodes(self) -> list[dict[str, Any]]:
        return FLEET

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return []

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get(("Deployment", name))

    def get_llmdeployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None

    def patch_llmdeployment_status(
        self, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None
    ) -> None:
        return None


def test_reconciler_applies_the_solver_plan_as_pod_affinity() -> None:
    kube = FakeKube()
    memory = EstimatedMemory()
    sel = SolverSelector(FirstFitSelector(memory), pin_nodes=True, memory=memory)  # no watches
    r = Reconciler(kube, sel, memory, OperatorMetrics(), WorkloadSettings())
    out = r.converge(make_body(replicas=2, resources={"gpuTypes": ["H100"]}))
    assert out.placed.status == "True" and "spread over 2 zones" in out.placed.message
    assert out.fields["profile"]["maxConcurrency"] >= 1
    template = kube.objects[("Deployment", "llama")]["spec"]["template"]
    (term,) = template["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    assert term["matchFields"] == [
        {"key": "metadata.name", "operator": "In", "values": ["h100-a1", "h100-b"]}
    ]
    assert term["matchExpressions"][0]["values"] == [H100]
