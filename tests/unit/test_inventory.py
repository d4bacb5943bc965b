"""GPU inventory from Node/Pod objects as the API returns them, applied event by event."""

from __future__ import annotations

from typing import Any

from goodput.operator.gpu_catalog import (
    Interconnect,
    default_interconnect,
    gpu_for_label,
    matches_gpu_type,
)
from goodput.operator.inventory import (
    RESERVATION_TTL_S,
    GpuInventory,
    ReplicaBooking,
    parse_node,
    pod_gpu_request,
)


def node(
    name: str,
    product: str = "NVIDIA-H100-80GB-HBM3",
    gpus: int = 8,
    *,
    labels: dict[str, str] | None = None,
    ready: bool = True,
    cordoned: bool = False,
) -> dict[str, Any]:
    all_labels = {"nvidia.com/gpu.product": product, "nvidia.com/gpu.count": str(gpus)}
    all_labels.update(labels or {})
    return {
        "metadata": {"name": name, "labels": all_labels},
        "spec": {"unschedulable": True} if cordoned else {},
        "status": {
            "allocatable": {"cpu": "64", "nvidia.com/gpu": str(gpus)},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def pod(
    name: str, node_name: str | None, gpus: int, *, phase: str = "Running", managed: bool = False
) -> dict[str, Any]:
    labels = {"goodput.dev/deployment": "llama"} if managed else {}
    spec: dict[str, Any] = {
        "containers": [{"name": "c", "resources": {"requests": {"nvidia.com/gpu": str(gpus)}}}]
    }
    if node_name:
        spec["nodeName"] = node_name
    return {
        "metadata": {"name": name, "namespace": "default", "uid": f"uid-{name}", "labels": labels},
        "spec": spec,
        "status": {"phase": phase},
    }


def test_labels_and_defaults() -> None:
    h100 = parse_node(
        node(
            "n1",
            labels={
                "nvidia.com/gpu.memory": "81559",
                "goodput.dev/rack": "r7",
                "topology.kubernetes.io/zone": "z1",
            },
        )
    )
    assert h100 is not None
    assert (h100.gpus, h100.rack, h100.zone) == (8, "r7", "z1")
    assert h100.interconnect is Interconnect.NVSWITCH  # default for SXM H100
    assert h100.domain == "n1"  # default: the node is its own domain
    assert h100.gpu.memory_bytes == 81559 * 1024**2  # the label wins over the catalog

    l4 = parse_node(node("n2", "NVIDIA-L4", 4))
    assert l4 is not None and l4.interconnect is Interconnect.PCIE
    assert l4.gpu.memory_bytes == 23034 * 1024**2  # catalog when the memory label is absent

    linked = parse_node(
        node(
            "n3",
            "NVIDIA-L4",
            labels={"goodput.dev/interconnect": "nvlink", "goodput.dev/interconnect-domain": "d1"},
        )
    )
    assert linked is not None
    assert (linked.interconnect, linked.domain) == (Interconnect.NVLINK, "d1")
    assert parse_node(node("cpu", gpus=0)) is None


def test_gpu_type_names_match_by_words() -> None:
    assert matches_gpu_type("H100", "NVIDIA-H100-80GB-HBM3")
    assert matches_gpu_type("a100-80gb", "NVIDIA-A100-SXM4-80GB")
    assert not matches_gpu_type("L4", "NVIDIA-L40S")
    assert not matches_gpu_type("A100-80GB", "NVIDIA-A100-SXM4-40GB")
    assert gpu_for_label("NVIDIA-L40S").name == "L40S"
    assert gpu_for_label("NVIDIA-L4").name == "L4"
    weird = gpu_for_label("Weird-GPU", 48 * 1024)
    assert default_interconnect(weird) is Interconnect.PCIE
    assert weird.memory_bytes == 48 * 1024**3


def test_unschedulable_nodes_are_left_out_with_reason() -> None:
    inv = GpuInventory.from_objects(
        [node("a"), node("b", cordoned=True), node("c", ready=False), node("cpu", gpus=0)]
    )
    assert [n.name for n in inv.nodes()] == ["a"]
    assert inv.excluded() == {"b": "cordoned", "c": "NotReady"}
    inv.apply_node("MODIFIED", node("b"))
    assert [n.name for n in inv.nodes()] == ["a", "b"]
    inv.apply_node("DELETED", node("a"))
    assert [n.name for n in inv.nodes()] == ["b"]


def test_pods_hold_gpus_until_finished_or_deleted() -> None:
    inv = GpuInventory.from_objects(
        [node("a"), node("b", "NVIDIA-L4", 4)],
        [
            pod("p1", "a", 2),
            pod("p2", "a", 1, managed=True),
            pod("done", "a", 4, phase="Succeeded"),
            pod("pending", None, 8),
        ],
    )
    a = inv.nodes()[0]
    assert (a.allocated, a.free) == (2, 6)  # Goodput's own pod is not "allocated by others"
    assert inv.managed_allocation() == {"a": 1}
    assert inv.nodes(owner="default/other")[0].allocated == 3  # a solve of another deployment
    assert inv.nodes(owner="default/llama")[0].allocated == 2  # its own pod is re-derived
    assert inv.capacity_by_product() == {"NVIDIA-H100-80GB-HBM3": (3, 8), "NVIDIA-L4": (0, 4)}
    inv.apply_pod("MODIFIED", pod("p1", "a", 2, phase="Failed"))
    assert inv.nodes()[0].free == 8
    inv.apply_pod("ADDED", pod("p3", "b", 3))
    inv.apply_pod("DELETED", pod("p3", "b", 3))
    assert inv.nodes()[1].free == 4


def test_pod_gpu_request_counts_limits_and_init_containers() -> None:
    spec = {
        "containers": [
            {"resources": {"limits": {"nvidia.com/gpu": 2}}},
            {"resources": {"requests": {"nvidia.com/gpu": "1"}}},
            {"resources": {}},
        ],
        "initContainers": [{"resources": {"limits": {"nvidia.com/gpu": "4"}}}],
    }
    assert pod_gpu_request({"spec": spec}) == 4
    spec["initContainers"] = []
    assert pod_gpu_request({"spec": spec}) == 3


def replica_deployment(
    replica: int, node_name: str | None, gpus: int = 4, parent: str = "llama"
) -> dict[str, Any]:
    """A replica Deployment as the operator applies it: pinned by annotation, GPUs in its pod
    template."""
    return {
        "metadata": {
            "name": f"{parent}-r{replica}",
            "namespace": "default",
            "labels": {"goodput.dev/deployment": parent, "goodput.dev/replica": str(replica)},
            "annotations": {"goodput.dev/node": node_name} if node_name else {},
        },
        "spec": {
            "template": {
                "spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]}
            }
        },
    }


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_reservation_holds_until_its_deployment_is_seen_then_the_deployment_holds() -> None:
    clock = Clock()
    inv = GpuInventory(clock)
    inv.apply_node("ADDED", node("a"))
    inv.reserve("default/llama", [ReplicaBooking(0, "a", 4)])
    assert inv.nodes(owner="default/other")[0].allocated == 4
    assert inv.nodes(owner="default/llama")[0].allocated == 0  # its own, re-derived
    inv.apply_deployment("ADDED", replica_deployment(0, "a"))
    clock.now += RESERVATION_TTL_S + 1  # confirmed: the Deployment's booking holds now
    assert inv.nodes(owner="default/other")[0].allocated == 4
    running = pod("llama-r0-x", "a", 4, managed=True)
    running["metadata"]["labels"]["goodput.dev/replica"] = "0"
    inv.apply_pod("ADDED", running)
    assert inv.nodes(owner="default/other")[0].allocated == 4, "pod and booking count once"
    inv.apply_deployment("DELETED", replica_deployment(0, "a"))
    assert inv.nodes(owner="default/other")[0].allocated == 4, "its pod still holds them"
    inv.apply_pod("DELETED", running)
    assert inv.nodes(owner="default/other")[0].allocated == 0


def test_a_moving_replica_holds_both_nodes_until_its_old_pod_is_gone() -> None:
    inv = GpuInventory.from_objects([node("a"), node("b")])
    old = pod("llama-r0-x", "a", 4, managed=True)
    old["metadata"]["labels"]["goodput.dev/replica"] = "0"
    inv.apply_pod("ADDED", old)
    inv.reserve("default/llama", [ReplicaBooking(0, "b", 4)])
    assert [n.allocated for n in inv.nodes(owner="default/other")] == [4, 4]


def test_an_unconfirmed_reservation_lapses_and_a_new_solve_replaces_it() -> None:
    clock = Clock()
    inv = GpuInventory(clock)
    inv.apply_node("ADDED", node("a"))
    inv.reserve("default/llama", [ReplicaBooking(0, "a", 4), ReplicaBooking(1, "a", 2)])
    assert inv.managed_allocation() == {"a": 6}
    inv.reserve("default/llama", [ReplicaBooking(0, "a", 4)])  # scaled down
    assert inv.managed_allocation() == {"a": 4}
    clock.now += RESERVATION_TTL_S
    assert inv.managed_allocation() == {}
    inv.reserve("default/llama", [ReplicaBooking(0, "a", 4)])
    inv.release("default/llama")  # deleted
    assert inv.managed_allocation() == {}
