"""The placement solver behind the operator's GPU selection seam (no cluster: a small fake API)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from llmd_builders import gpu_nodes, make_body

from goodput.api.llmdeployment import LLMDeployment
from goodput.operator.inventory import GpuInventory
from goodput.operator.metrics import OperatorMetrics
from goodput.operator.model_memory import EstimatedMemory
from goodput.operator.placement.first_fit import FirstFitSelector
from goodput.operator.placement.selection import Placement, SelectionContext, Unplaceable
from goodput.operator.placement.selector import SolverSelector
from goodput.operator.reconcile import Reconciler, replica_placement
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


def selector(pods: Sequence[dict[str, Any]] = ()) -> SolverSelector:
    inventory = GpuInventory.from_objects(FLEET, pods)
    return SolverSelector(FirstFitSelector(EstimatedMemory()), inventory)


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
    assert out.replica_nodes == ((0, "h100-a1"), (1, "h100-b"))  # one per zone
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
        for i, n in first.replica_nodes
    ]
    again = select(
        selector(), replicas=2, placement=status, gpu_type=H100, resources={"gpuTypes": ["H100"]}
    )
    assert isinstance(again, Placement) and again.replica_nodes == first.replica_nodes
    lost = first.replica_nodes[1][1]
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
    assert after.replica_nodes[0] == first.replica_nodes[0]
    assert after.replica_nodes[1][0] == 1 and after.replica_nodes[1][1] != lost
    assert "moved replicas [1]" in after.detail


def test_unknown_model_falls_back_to_first_fit() -> None:
    out = select(selector(), model={"name": "acme/secret-model-7B"})
    assert isinstance(out, Placement) and out.replica_nodes == ()


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.nodes = FLEET
        self.deleted: list[str] = []

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        stored = copy.deepcopy(dict(obj))
        self.objects[(obj["kind"], obj["metadata"]["name"])] = stored
        return stored

    def list_nodes(self) -> list[dict[str, Any]]:
        return self.nodes

    def list_pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        return []

    def list_deployments(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        found = sorted(self.objects.items())
        return [copy.deepcopy(obj) for (kind, _), obj in found if kind == "Deployment"]

    def delete_deployment(self, namespace: str, name: str) -> None:
        self.deleted.append(name)
        del self.objects[("Deployment", name)]

    def delete(self, kind: str, namespace: str, name: str) -> None:
        self.deleted.append(f"{kind}/{name}")
        self.objects.pop((kind, name), None)

    def get_llmdeployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None

    def patch_llmdeployment_status(
        self, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None
    ) -> None:
        return None

    def pinned(self) -> dict[str, list[str]]:
        """Each replica Deployment's node affinity: its GPU product and its node."""
        out = {}
        for (kind, name), obj in sorted(self.objects.items()):
            if kind != "Deployment":
                continue
            (term,) = obj["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
                "requiredDuringSchedulingIgnoredDuringExecution"
            ]["nodeSelectorTerms"]
            out[name] = term["matchExpressions"][0]["values"] + term["matchFields"][0]["values"]
        return out


def _reconciler(kube: FakeKube) -> Reconciler:
    memory = EstimatedMemory()
    sel = SolverSelector(FirstFitSelector(memory), memory=memory)  # no watches
    return Reconciler(kube, sel, memory, OperatorMetrics(), WorkloadSettings())


def test_reconciler_pins_each_replica_workload_to_its_planned_node() -> None:
    kube = FakeKube()
    r = _reconciler(kube)
    out = r.converge(make_body(replicas=2, resources={"gpuTypes": ["H100"]}))
    assert out.placed.status == "True" and "spread over 2 zones" in out.placed.message
    assert out.fields["profile"]["maxConcurrency"] >= 1
    assert kube.pinned() == {"llama-r0": [H100, "h100-a1"], "llama-r1": [H100, "h100-b"]}
    deployments = kube.list_deployments("ml", "")
    assert replica_placement(deployments, []) == [
        {"replica": 0, "nodes": ["h100-a1"], "gpus": 1, "tensor": 1, "pipeline": 1},
        {"replica": 1, "nodes": ["h100-b"], "gpus": 1, "tensor": 1, "pipeline": 1},
    ]


def test_a_lost_node_changes_only_its_replicas_workload() -> None:
    kube = FakeKube()
    r = _reconciler(kube)
    body = make_body(replicas=2, resources={"gpuTypes": ["H100"]})
    r.converge(body)
    before = copy.deepcopy(kube.objects)
    body["status"] = {
        "gpuType": H100,
        "placement": replica_placement(kube.list_deployments("ml", ""), []),
    }
    r.converge(body)
    assert kube.objects == before, "a converged plan changes nothing"
    kube.nodes = [n for n in FLEET if n["metadata"]["name"] != "h100-b"]
    out = r.converge(body)
    assert "moved replicas [1]" in out.placed.message
    assert kube.objects[("Deployment", "llama-r0")] == before[("Deployment", "llama-r0")]
    assert kube.pinned()["llama-r1"][1] != "h100-b" and kube.deleted == []


def test_scaled_to_zero_keeps_no_replica_and_reserves_no_gpu() -> None:
    """The solver plans at least one replica; scaled to 0, that replica was kept, its Deployment
    left running and its GPUs reserved (found by the SIGKILL fault test as a replica Deployment
    left for an LLMDeployment scaled to 0)."""
    kube, memory, inventory = FakeKube(), EstimatedMemory(), GpuInventory.from_objects(FLEET)
    sel = SolverSelector(FirstFitSelector(memory), inventory, memory=memory)
    r = Reconciler(kube, sel, memory, OperatorMetrics(), WorkloadSettings(), inventory=inventory)
    body = make_body(replicas=2, resources={"gpuTypes": ["H100"]})
    r.converge(body)
    assert sum(inventory.managed_allocation().values()) == 2
    body["spec"]["replicas"] = 0
    body["status"] = {
        "gpuType": H100,
        "placement": replica_placement(kube.list_deployments("ml", ""), []),
    }
    out = r.converge(body)
    assert kube.list_deployments("ml", "") == [] and kube.deleted == ["llama-r0", "llama-r1"]
    assert inventory.managed_allocation() == {}
    assert out.placed.status == "True" and "scaled to zero" in out.placed.message
    assert out.fields["gpus"] == 0 and out.fields["gpuType"] == H100


WHOLE_L4 = {"gpuTypes": ["L4"], "parallelism": {"tensor": 4, "pipeline": 1}}


def _solve_as(sel: SolverSelector, deployment: str) -> Placement | Unplaceable:
    """One LLMDeployment's solve, as its reconcile runs it (no status yet: a new object)."""
    obj = LLMDeployment.model_validate(make_body(resources=WHOLE_L4))
    return sel.select(obj.spec, gpu_nodes(FLEET), SelectionContext(deployment, FLEET))


def booked(outcomes: Sequence[Placement | Unplaceable]) -> list[str]:
    return [n for o in outcomes if isinstance(o, Placement) for _, n in o.replica_nodes]


def test_solves_before_any_pod_is_bound_do_not_book_the_same_gpus() -> None:
    """Three new LLMDeployments, each needing a whole L4 node, and two L4 nodes: the watches
    have seen no pod yet (kube-scheduler binds them seconds later), so only the reservations
    of the earlier solves keep the later ones off their GPUs."""
    sel = selector()
    outcomes = [_solve_as(sel, f"ml/llm-{i}") for i in range(3)]
    assert sorted(booked(outcomes)) == ["l4-a", "l4-b"]
    assert isinstance(outcomes[2], Unplaceable) and outcomes[2].reason == "InsufficientGPUs"
    again = _solve_as(sel, "ml/llm-0")  # its own reservation is re-derived, not taken
    assert isinstance(again, Placement) and again.replica_nodes == outcomes[0].replica_nodes


def test_concurrent_solves_do_not_book_the_same_gpus() -> None:
    sel = selector()
    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = list(pool.map(lambda i: _solve_as(sel, f"ml/llm-{i}"), range(8)))
    nodes = booked(outcomes)
    assert sorted(nodes) == ["l4-a", "l4-b"], outcomes
    assert sum(isinstance(o, Unplaceable) for o in outcomes) == 6
