"""A synthetic GPU fleet as Node and Pod objects, labelled like the dev cluster's simulated nodes.

Pools of identical servers are dealt to zones in contiguous blocks and packed into racks, with
the labels GPU feature discovery and Goodput's topology labelling write (the same scheme as
``goodput/dev/fleets/*.yaml``). A share of nodes already runs other teams' pods, so the fleet
starts fragmented the way a shared cluster is.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

ZONES = ("zone-a", "zone-b", "zone-c")


@dataclass(frozen=True)
class Pool:
    name: str
    product: str
    memory_mib: int
    gpus_per_node: int
    interconnect: str
    nodes_per_rack: int
    share: float  # of the fleet's nodes


# Shares loosely follow a large inference fleet: mostly 8-GPU HGX servers, a long tail of
# inference cards in 1-, 4- and 8-GPU servers.
POOLS = (
    Pool("h100", "NVIDIA-H100-80GB-HBM3", 81559, 8, "nvswitch", 4, 0.28),
    Pool("h200", "NVIDIA-H200", 143771, 8, "nvswitch", 4, 0.07),
    Pool("a100-80", "NVIDIA-A100-SXM4-80GB", 81920, 8, "nvswitch", 4, 0.12),
    Pool("a100-40", "NVIDIA-A100-SXM4-40GB", 40960, 8, "nvlink", 4, 0.08),
    Pool("l40s", "NVIDIA-L40S", 46068, 4, "pcie", 16, 0.12),
    Pool("l4x8", "NVIDIA-L4", 23034, 8, "pcie", 8, 0.05),
    Pool("l4", "NVIDIA-L4", 23034, 4, "pcie", 16, 0.14),
    Pool("a10g", "NVIDIA-A10G", 23028, 4, "pcie", 16, 0.09),
    Pool("a10g-x1", "NVIDIA-A10G", 23028, 1, "pcie", 32, 0.05),
)


#: The homogeneous fleet: H100 HGX servers only.
HOMOGENEOUS = (Pool("h100", "NVIDIA-H100-80GB-HBM3", 81559, 8, "nvswitch", 4, 1.0),)
FLEETS = {"mixed": POOLS, "homogeneous": HOMOGENEOUS}


def fleet_nodes(size: int, pools: tuple[Pool, ...] = POOLS) -> list[dict[str, Any]]:
    """About ``size`` Node objects (pool shares rounded), deterministic."""
    nodes = []
    for pool in pools:
        count = max(1, round(size * pool.share))
        per_zone = [count // len(ZONES) + (1 if i < count % len(ZONES) else 0) for i in range(3)]
        index = 0
        for zone, zone_count in zip(ZONES, per_zone, strict=True):
            for slot in range(zone_count):
                name = f"{pool.name}-{index:04d}"
                rack = f"{zone}-{pool.name}-r{slot // pool.nodes_per_rack:03d}"
                nodes.append(_node(pool, name, zone, rack))
                index += 1
    return nodes


def _node(pool: Pool, name: str, zone: str, rack: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "topology.kubernetes.io/zone": zone,
                "nvidia.com/gpu.product": pool.product,
                "nvidia.com/gpu.memory": str(pool.memory_mib),
                "nvidia.com/gpu.count": str(pool.gpus_per_node),
                "goodput.dev/rack": rack,
                "goodput.dev/interconnect": pool.interconnect,
                "goodput.dev/interconnect-domain": name,
            },
        },
        "spec": {},
        "status": {
            "allocatable": {"nvidia.com/gpu": str(pool.gpus_per_node)},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


def foreign_pods(nodes: list[dict[str, Any]], share: float, seed: int) -> list[dict[str, Any]]:
    """Other teams' pods holding some GPUs on ``share`` of the multi-GPU nodes."""
    rng = random.Random(seed)
    pods = []
    for node in nodes:
        gpus = int(node["status"]["allocatable"]["nvidia.com/gpu"])
        if gpus < 2 or rng.random() >= share:
            continue
        held = rng.randint(1, gpus // 2)
        name = node["metadata"]["name"]
        pods.append(
            {
                "metadata": {"name": f"batch-{name}", "namespace": "research", "uid": name},
                "spec": {
                    "nodeName": name,
                    "containers": [
                        {"name": "job", "resources": {"requests": {"nvidia.com/gpu": str(held)}}}
                    ],
                },
                "status": {"phase": "Running"},
            }
        )
    return pods
