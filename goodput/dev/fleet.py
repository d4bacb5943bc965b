"""Simulated GPU fleets: node pools described as data, expanded into Node objects.

A fleet file (``goodput/dev/fleets/*.yaml``) lists pools of identical GPU servers. Each pool is
spread evenly over its zones and packed into racks; nodes carry the labels NVIDIA's GPU feature
discovery would put there plus Goodput's topology labels (rack, interconnect, NVLink domain), so
placement code sees what it would see on a real cluster. Every label is documented in
docs/dev-cluster.md.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

FLEETS_DIR = Path(__file__).parent / "fleets"

# Label and annotation keys (documented in docs/dev-cluster.md).
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_ANNOTATION_VALUE = "fake"
FLEET_LABEL = "goodput.dev/fleet"
POOL_LABEL = "goodput.dev/node-pool"
RACK_LABEL = "goodput.dev/rack"
INTERCONNECT_LABEL = "goodput.dev/interconnect"
INTERCONNECT_DOMAIN_LABEL = "goodput.dev/interconnect-domain"
SPEC_HASH_ANNOTATION = "goodput.dev/node-spec-hash"
GPU_RESOURCE = "nvidia.com/gpu"
ZONE_LABEL = "topology.kubernetes.io/zone"
REGION_LABEL = "topology.kubernetes.io/region"
REAL_NODE_LABEL = "goodput.dev/real-node"
# The taint GPU node pools conventionally carry: only pods that ask for GPUs (and so tolerate it,
# as every serving pod does) land on the real node, never the simulated pods of other workloads.
REAL_NODE_TAINT = "nvidia.com/gpu=present:NoSchedule"

Interconnect = Literal["nvswitch", "nvlink", "pcie"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class GPUModel(_Model):
    """A GPU as NVIDIA GPU feature discovery labels it."""

    product: str = Field(description="nvidia.com/gpu.product, e.g. NVIDIA-H100-80GB-HBM3")
    memory_mib: int = Field(alias="memoryMiB", gt=0, description="nvidia.com/gpu.memory")
    family: str = Field(description="nvidia.com/gpu.family, e.g. hopper")
    compute_capability: str = Field(alias="computeCapability", pattern=r"^\d+\.\d+$")


class NodePool(_Model):
    """``count`` identical servers; ``nvlink_domain_nodes`` of them share one NVLink fabric."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    gpu: GPUModel
    gpus_per_node: int = Field(alias="gpusPerNode", gt=0)
    interconnect: Interconnect
    count: int = Field(ge=0)
    zones: tuple[str, ...] = Field(min_length=1)
    nodes_per_rack: int = Field(alias="nodesPerRack", gt=0)
    nvlink_domain_nodes: int = Field(default=1, alias="nvlinkDomainNodes", gt=0)
    instance_type: str = Field(alias="instanceType")
    cpu: int = Field(gt=0, description="cores")
    memory_gib: int = Field(alias="memoryGiB", gt=0)
    ephemeral_storage_gib: int = Field(default=1024, alias="ephemeralStorageGiB", gt=0)
    pods: int = Field(default=110, gt=0)
    reserved_cpu: int = Field(default=2, alias="reservedCPU", ge=0)
    reserved_memory_gib: int = Field(default=16, alias="reservedMemoryGiB", ge=0)
    labels: dict[str, str] = Field(default_factory=dict)
    taints: tuple[dict[str, str], ...] = ()

    @model_validator(mode="after")
    def _domains_fit_racks(self) -> NodePool:
        if self.interconnect == "pcie" and self.nvlink_domain_nodes != 1:
            raise ValueError(f"pool {self.name}: PCIe GPUs share no NVLink beyond one node")
        if self.nodes_per_rack % self.nvlink_domain_nodes:
            raise ValueError(
                f"pool {self.name}: an NVLink domain must not straddle racks "
                f"(nodesPerRack {self.nodes_per_rack} % nvlinkDomainNodes "
                f"{self.nvlink_domain_nodes} != 0)"
            )
        if self.reserved_cpu >= self.cpu or self.reserved_memory_gib >= self.memory_gib:
            raise ValueError(f"pool {self.name}: reservations exceed capacity")
        return self


def this_machine() -> tuple[int, float]:
    """``(cores, GiB of memory)`` of this machine: the real node's capacity."""
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return os.cpu_count() or 1, memory / 2**30


class RealNode(_Model):
    """The node that really runs containers (this machine, goodput.dev.node), labelled as a GPU
    server of ``gpu.product`` so the operator places small models on it like on any other."""

    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    gpu: GPUModel
    gpus: int = Field(gt=0, description="fictional nvidia.com/gpu: engine slots on this machine")
    labels: dict[str, str] = Field(default_factory=dict)

    def node_labels(self) -> dict[str, str]:
        """What the kubelet registers the node with: GPU feature discovery's labels of the
        product, the real-node marker and the fleet file's own."""
        major, minor = self.gpu.compute_capability.split(".")
        return {
            REAL_NODE_LABEL: "true",
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": self.gpu.product,
            "nvidia.com/gpu.memory": str(self.gpu.memory_mib),
            "nvidia.com/gpu.count": str(self.gpus),
            "nvidia.com/gpu.family": self.gpu.family,
            "nvidia.com/gpu.compute.major": major,
            "nvidia.com/gpu.compute.minor": minor,
            **self.labels,
        }

    def manifest(self, cpu: int, memory_gib: int) -> dict[str, Any]:
        """The Node as it stands once registered and advertised (for dry runs without it)."""
        capacity = {
            "cpu": str(cpu),
            "memory": f"{memory_gib}Gi",
            "pods": "32",
            GPU_RESOURCE: str(self.gpus),
        }
        key, _, rest = REAL_NODE_TAINT.partition("=")
        value, _, effect = rest.partition(":")
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": {"kubernetes.io/hostname": self.name, **self.node_labels()},
            },
            "spec": {"taints": [{"key": key, "value": value, "effect": effect}]},
            "status": {
                "capacity": capacity,
                "allocatable": capacity,
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }


class Fleet(_Model):
    name: str = Field(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    region: str
    pools: tuple[NodePool, ...] = Field(min_length=1)
    real_node: RealNode | None = Field(default=None, alias="realNode")

    @model_validator(mode="after")
    def _unique_pools(self) -> Fleet:
        names = [p.name for p in self.pools]
        if len(names) != len(set(names)):
            raise ValueError(f"fleet {self.name}: pool names must be unique")
        return self

    @classmethod
    def load(cls, name_or_path: str | Path) -> Fleet:
        """A fleet by name (``goodput/dev/fleets/<name>.yaml``) or by file path."""
        path = Path(name_or_path)
        if not path.suffix:
            path = FLEETS_DIR / f"{name_or_path}.yaml"
        return cls.model_validate(yaml.safe_load(path.read_text()))

    @property
    def node_count(self) -> int:
        return sum(p.count for p in self.pools)

    @property
    def gpu_count(self) -> int:
        return sum(p.count * p.gpus_per_node for p in self.pools)

    def nodes(self) -> list[dict[str, Any]]:
        """Node manifests of the simulated pools, deterministic for a given file."""
        return [node for pool in self.pools for node in _pool_nodes(self, pool)]

    def all_nodes(self) -> list[dict[str, Any]]:
        """Every node the cluster would have: the pools, and the real node as this machine
        would register it (for dry runs without a cluster)."""
        nodes = self.nodes()
        if self.real_node is not None:
            cores, memory_gib = this_machine()
            nodes.append(self.real_node.manifest(cores, int(memory_gib)))
        return nodes


def _pool_nodes(fleet: Fleet, pool: NodePool) -> Iterator[dict[str, Any]]:
    # Nodes are dealt to zones in contiguous blocks (as even as possible), then racks fill up
    # within a zone, so a rack and an NVLink domain never span zones.
    per_zone = [pool.count // len(pool.zones)] * len(pool.zones)
    for extra in range(pool.count % len(pool.zones)):
        per_zone[extra] += 1
    index = 0
    for zone, zone_count in zip(pool.zones, per_zone, strict=True):
        for slot in range(zone_count):
            rack = f"{zone}-{pool.name}-r{slot // pool.nodes_per_rack:03d}"
            name = f"{pool.name}-{index:04d}"
            if pool.nvlink_domain_nodes == 1:
                domain = name
            else:
                within_rack = (slot % pool.nodes_per_rack) // pool.nvlink_domain_nodes
                domain = f"{rack}-nvl{within_rack}"
            yield node_manifest(fleet, pool, name=name, zone=zone, rack=rack, domain=domain)
            index += 1


def node_manifest(
    fleet: Fleet, pool: NodePool, *, name: str, zone: str, rack: str, domain: str
) -> dict[str, Any]:
    gpu = pool.gpu
    major, minor = gpu.compute_capability.split(".")
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "node.kubernetes.io/instance-type": pool.instance_type,
        REGION_LABEL: fleet.region,
        ZONE_LABEL: zone,
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": gpu.product,
        "nvidia.com/gpu.memory": str(gpu.memory_mib),
        "nvidia.com/gpu.count": str(pool.gpus_per_node),
        "nvidia.com/gpu.family": gpu.family,
        "nvidia.com/gpu.compute.major": major,
        "nvidia.com/gpu.compute.minor": minor,
        FLEET_LABEL: fleet.name,
        POOL_LABEL: pool.name,
        RACK_LABEL: rack,
        INTERCONNECT_LABEL: pool.interconnect,
        INTERCONNECT_DOMAIN_LABEL: domain,
        "type": "kwok",
        **pool.labels,
    }
    capacity = {
        "cpu": str(pool.cpu),
        "memory": f"{pool.memory_gib}Gi",
        "ephemeral-storage": f"{pool.ephemeral_storage_gib}Gi",
        "pods": str(pool.pods),
        GPU_RESOURCE: str(pool.gpus_per_node),
    }
    allocatable = {
        **capacity,
        "cpu": str(pool.cpu - pool.reserved_cpu),
        "memory": f"{pool.memory_gib - pool.reserved_memory_gib}Gi",
    }
    spec: dict[str, Any] = {}
    if pool.taints:
        spec["taints"] = [dict(t) for t in pool.taints]
    manifest: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": labels,
            "annotations": {
                KWOK_ANNOTATION: KWOK_ANNOTATION_VALUE,
                "node.alpha.kubernetes.io/ttl": "0",
            },
        },
        "spec": spec,
        "status": {
            "capacity": capacity,
            "allocatable": allocatable,
            # Loopback on purpose: anything that dials a node (kubectl logs/exec) stays on this
            # machine. Conditions are kwok's job (stage goodput-node-ready).
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": name},
            ],
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "osImage": "simulated GPU node (kwok)",
                "kernelVersion": "simulated",
                "containerRuntimeVersion": "kwok://simulated",
                "kubeletVersion": "simulated",
                "kubeProxyVersion": "",
                "bootID": "",
                "machineID": "",
                "systemUUID": "",
            },
        },
    }
    digest = hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:16]
    manifest["metadata"]["annotations"][SPEC_HASH_ANNOTATION] = digest
    return manifest


def list_fleet_nodes(core_v1: Any) -> list[dict[str, Any]]:
    """Nodes managed by ``goodput dev`` as plain dicts.

    Raw JSON on purpose: the client's model deserialisation takes seconds for thousands of nodes.
    """
    response = core_v1.list_node(label_selector=FLEET_LABEL, _preload_content=False)
    items: list[dict[str, Any]] = json.loads(response.data)["items"]
    return items


def node_ready(node: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in node.get("status", {}).get("conditions", [])
    )


class FleetApplier:
    """Makes the cluster's simulated nodes match a fleet: create, replace, delete; in parallel.

    Only nodes carrying ``goodput.dev/fleet`` are touched. A node whose spec hash differs is
    deleted and recreated (node labels and capacity are immutable in spirit).
    """

    def __init__(self, core_v1: Any, workers: int = 16) -> None:
        self.core_v1 = core_v1
        self.workers = workers

    def apply(self, fleet: Fleet) -> dict[str, int]:
        desired = {n["metadata"]["name"]: n for n in fleet.nodes()}
        existing = {
            n["metadata"]["name"]: n["metadata"].get("annotations", {}).get(SPEC_HASH_ANNOTATION)
            for n in list_fleet_nodes(self.core_v1)
        }
        stale = [
            name
            for name, digest in existing.items()
            if name not in desired
            or digest != desired[name]["metadata"]["annotations"][SPEC_HASH_ANNOTATION]
        ]
        self._parallel(self._delete, stale)
        missing = [node for name, node in desired.items() if name not in existing or name in stale]
        self._parallel(self._create, missing)
        removed = len([name for name in stale if name not in desired])
        return {
            "created": len(missing),
            "deleted": removed,
            "unchanged": len(desired) - len(missing),
        }

    def _parallel(self, action: Any, items: list[Any]) -> None:
        if not items:
            return
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            for _ in pool.map(action, items):
                pass

    def _create(self, manifest: dict[str, Any]) -> None:
        self.core_v1.create_node(manifest, _preload_content=False)

    def _delete(self, name: str) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            self.core_v1.delete_node(name)
        except ApiException as exc:
            if exc.status != 404:
                raise
