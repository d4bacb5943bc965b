"""Builders of LLMDeployment bodies and Node objects, shaped as the API server returns them."""

from __future__ import annotations

import copy
from typing import Any

from goodput.operator.inventory import GpuInventory, GpuNode

BASE: dict[str, Any] = {
    "apiVersion": "goodput.dev/v1alpha1",
    "kind": "LLMDeployment",
    "metadata": {"name": "llama", "namespace": "ml", "uid": "uid-1", "generation": 1},
    "spec": {
        "model": {"name": "meta-llama/Meta-Llama-3-8B-Instruct", "architecture": "llama-3-8b"},
        "slo": {"ttftMs": 500, "tpotMs": 50},
        "resources": {"gpuTypes": ["H100", "A100-80GB"]},
    },
}


def make_body(**spec: Any) -> dict[str, Any]:
    body = copy.deepcopy(BASE)
    body["spec"].update(spec)
    return body


def gpu_nodes(nodes: list[dict[str, Any]]) -> tuple[GpuNode, ...]:
    """Node objects as the operator reads them (the GPU inventory's parser)."""
    return GpuInventory.from_objects(nodes).nodes()


def make_node(
    name: str, product: str, gpus: int = 8, memory_mib: int | None = 81559, cordoned: bool = False
) -> dict[str, Any]:
    labels = {"nvidia.com/gpu.product": product}
    if memory_mib is not None:
        labels["nvidia.com/gpu.memory"] = str(memory_mib)
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"unschedulable": True} if cordoned else {},
        "status": {"allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "64"}},
    }
