"""The GPU inventory: which GPUs exist, how they are linked, and which are already taken.

Built from Node and Pod objects exactly as the Kubernetes API returns them (plain dicts), one watch
event at a time, so the operator keeps it current from its watches and tests need no cluster.

Labels and fields read (all documented in docs/placement.md):

- ``status.allocatable["nvidia.com/gpu"]``: how many GPUs pods may request on the node.
- ``nvidia.com/gpu.product``, ``nvidia.com/gpu.memory`` (MiB), ``nvidia.com/gpu.count``: written
  by GPU feature discovery. ``gpu.count`` is used only when allocatable is missing.
- ``goodput.dev/interconnect`` (``nvswitch|nvlink|pcie``): how the node's GPUs are linked.
  Default: ``nvswitch`` for GPUs the profiler's catalog lists with NVLink (H100, H200, A100 SXM
  come on NVSwitch baseboards), ``pcie`` for the rest and for unknown products.
- ``goodput.dev/interconnect-domain``: the NVLink domain the node's GPUs belong to. Default: the
  node itself. Nodes that share a domain (a rack-scale NVLink system) are one domain.
- ``goodput.dev/rack`` and ``topology.kubernetes.io/zone``: failure domains for spreading.
  Default: empty (all nodes in one rack/zone).

Cordoned (``spec.unschedulable``) and NotReady nodes are left out. Pods bound to a node
(``spec.nodeName``) that have not finished hold their ``nvidia.com/gpu`` requests; pods labelled
``goodput.dev/deployment`` (the operator's serving pods) are counted per LLMDeployment, because a
solve re-derives the replicas it is placing from its own previous plan.

Bookings: a pod shows its GPUs only once kube-scheduler has bound it, seconds after the operator
chose its node. So that a second solve in that window does not choose the same GPUs, a replica's
GPUs are also held by the operator's own records of it, each keyed by (LLMDeployment, replica)
and counted once per node with the replica's pod:

- a *reservation*, made by the solve that chose the node (``reserve``), held until the watch
  shows that replica's Deployment pinned there, that Deployment deleted, the next solve of the
  same LLMDeployment, or ``RESERVATION_TTL_S`` (a decision whose apply failed);
- a *booking*, the replica Deployment's ``goodput.dev/node`` annotation and GPU request, held
  while that Deployment exists (it outlives the pod: a restarting or pending pod holds nothing).

The inventory is shared by kopf's handler threads, so every read and write takes one lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from goodput.operator.gpu_catalog import Interconnect, default_interconnect, gpu_for_label
from goodput.operator.naming import ANNOTATION_NODE, LABEL_DEPLOYMENT, LABEL_REPLICA
from goodput.profiler.hardware import GPUType

GPU_RESOURCE = "nvidia.com/gpu"
LABEL_PRODUCT = "nvidia.com/gpu.product"
LABEL_MEMORY = "nvidia.com/gpu.memory"
LABEL_COUNT = "nvidia.com/gpu.count"
LABEL_INTERCONNECT = "goodput.dev/interconnect"
LABEL_DOMAIN = "goodput.dev/interconnect-domain"
LABEL_RACK = "goodput.dev/rack"
LABEL_ZONE = "topology.kubernetes.io/zone"
#: Pods with this label serve the LLMDeployment named in its value (in the pod's namespace).
LABEL_MANAGED = LABEL_DEPLOYMENT
#: A reservation the watch never confirms (its apply failed, its owner was deleted) lapses then.
RESERVATION_TTL_S = 120.0

Obj = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class GpuNode:
    """One schedulable GPU node, as placement sees it."""

    name: str
    product: str  # the nvidia.com/gpu.product label
    gpu: GPUType
    gpus: int  # allocatable nvidia.com/gpu
    interconnect: Interconnect
    domain: str  # interconnect domain: a TP group never leaves it
    rack: str = ""
    zone: str = ""
    allocated: int = 0  # GPUs held by pods Goodput does not manage

    @property
    def free(self) -> int:
        return max(0, self.gpus - self.allocated)


@dataclass(frozen=True, slots=True)
class _PodHold:
    node: str
    gpus: int
    owner: str | None  # "namespace/name" of the LLMDeployment; None for other pods
    replica: str  # the replica id; for other pods, and managed ones without it, the pod's key


@dataclass(frozen=True, slots=True)
class ReplicaBooking:
    """The GPUs one replica of an LLMDeployment holds on one node."""

    replica: int
    node: str
    gpus: int


@dataclass(frozen=True, slots=True)
class _Reservation:
    booking: ReplicaBooking
    expires: float  # on the inventory's clock


def _quantity(value: Any) -> int:
    """An integer extended-resource quantity (``"8"``, ``8``); GPUs are never fractional."""
    if value is None:
        return 0
    try:
        return int(str(value))
    except ValueError:
        return 0


def pod_gpu_request(pod: Obj) -> int:
    """GPUs a pod holds: the sum over containers, or the largest init container if larger."""
    spec = pod.get("spec") or {}

    def of(container: Obj) -> int:
        res = container.get("resources") or {}
        requests = res.get("requests") or {}
        limits = res.get("limits") or {}
        return _quantity(requests.get(GPU_RESOURCE, limits.get(GPU_RESOURCE)))

    main = sum(of(c) for c in spec.get("containers") or ())
    init = max((of(c) for c in spec.get("initContainers") or ()), default=0)
    return max(main, init)


def _replica_label(labels: Mapping[str, Any]) -> str | None:
    value = labels.get(LABEL_REPLICA)
    return str(value) if value is not None and str(value).isdigit() else None


def node_exclusion(node: Obj) -> str | None:
    """Why a node cannot take new GPU pods, or None when it can."""
    if (node.get("spec") or {}).get("unschedulable"):
        return "cordoned"
    for cond in (node.get("status") or {}).get("conditions") or ():
        if cond.get("type") == "Ready" and cond.get("status") != "True":
            return "NotReady"
    return None


def parse_node(node: Obj) -> GpuNode | None:
    """The GPU facts of a Node object, or None when it has no GPUs."""
    meta = node.get("metadata") or {}
    labels: Mapping[str, str] = meta.get("labels") or {}
    name = str(meta.get("name", ""))
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    gpus = _quantity(allocatable.get(GPU_RESOURCE, labels.get(LABEL_COUNT)))
    if gpus <= 0:
        return None
    product_label = labels.get(LABEL_PRODUCT, "unknown")
    memory_mib = _quantity(labels.get(LABEL_MEMORY)) or None
    gpu = gpu_for_label(product_label, memory_mib)
    try:
        interconnect = Interconnect(labels.get(LABEL_INTERCONNECT, default_interconnect(gpu)))
    except ValueError:
        interconnect = default_interconnect(gpu)
    return GpuNode(
        name=name,
        product=product_label,
        gpu=gpu,
        gpus=gpus,
        interconnect=interconnect,
        domain=labels.get(LABEL_DOMAIN) or name,
        rack=labels.get(LABEL_RACK, ""),
        zone=labels.get(LABEL_ZONE, ""),
    )


class GpuInventory:
    """GPU nodes and GPU holds, updated one watch event at a time.

    ``apply_node``/``apply_pod``/``apply_deployment`` take the event type (``ADDED``,
    ``MODIFIED``, ``DELETED``; kopf's initial listing passes None, treated as an upsert) and the
    object. Reads are O(nodes + holds).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.RLock()
        self._nodes: dict[str, GpuNode] = {}
        self._excluded: dict[str, str] = {}
        self._holds: dict[str, _PodHold] = {}
        #: "namespace/name" of a replica Deployment -> (owner, its booking).
        self._booked: dict[str, tuple[str, ReplicaBooking]] = {}
        #: owner -> replica -> reservation, from the owner's latest solve.
        self._reserved: dict[str, dict[int, _Reservation]] = {}

    @classmethod
    def from_objects(cls, nodes: Iterable[Obj], pods: Iterable[Obj] = ()) -> GpuInventory:
        inventory = cls()
        for node in nodes:
            inventory.apply_node("ADDED", node)
        for pod in pods:
            inventory.apply_pod("ADDED", pod)
        return inventory

    def apply_node(self, event_type: str | None, node: Obj) -> None:
        name = str((node.get("metadata") or {}).get("name", ""))
        parsed = None if event_type == "DELETED" else parse_node(node)
        reason = None if parsed is None else node_exclusion(node)
        with self._lock:
            self._nodes.pop(name, None)
            self._excluded.pop(name, None)
            if parsed is None:
                return
            if reason is not None:
                self._excluded[name] = reason
            else:
                self._nodes[name] = parsed

    def apply_pod(self, event_type: str | None, pod: Obj) -> None:
        meta = pod.get("metadata") or {}
        key = str(meta.get("uid") or f"{meta.get('namespace')}/{meta.get('name')}")
        node = (pod.get("spec") or {}).get("nodeName")
        phase = (pod.get("status") or {}).get("phase")
        gpus = pod_gpu_request(pod)
        labels = meta.get("labels") or {}
        deployment = labels.get(LABEL_MANAGED)
        owner = f"{meta.get('namespace', '')}/{deployment}" if deployment else None
        replica = (_replica_label(labels) if owner else None) or key
        with self._lock:
            self._holds.pop(key, None)
            if event_type == "DELETED" or not node or gpus <= 0:
                return
            if phase in ("Succeeded", "Failed"):
                return
            self._holds[key] = _PodHold(str(node), gpus, owner, replica)

    def apply_deployment(self, event_type: str | None, deployment: Obj) -> None:
        """A replica Deployment books its pinned node's GPUs while it exists, and confirms
        (ends) the reservation its solve made."""
        meta = deployment.get("metadata") or {}
        key = f"{meta.get('namespace', '')}/{meta.get('name', '')}"
        labels = meta.get("labels") or {}
        parent, replica = labels.get(LABEL_DEPLOYMENT), _replica_label(labels)
        node = (meta.get("annotations") or {}).get(ANNOTATION_NODE)
        gpus = pod_gpu_request((deployment.get("spec") or {}).get("template") or {})
        with self._lock:
            self._booked.pop(key, None)
            if not parent or replica is None:
                return
            owner = f"{meta.get('namespace', '')}/{parent}"
            reserved = self._reserved.get(owner, {})
            if event_type == "DELETED":
                reserved.pop(int(replica), None)
                return
            if not node or gpus <= 0:
                return
            booking = ReplicaBooking(int(replica), str(node), gpus)
            self._booked[key] = (owner, booking)
            held = reserved.get(booking.replica)
            if held is not None and held.booking == booking:
                del reserved[booking.replica]

    def reserve(self, owner: str, bookings: Sequence[ReplicaBooking]) -> None:
        """Hold what ``owner``'s solve just chose, in place of its previous reservations."""
        expires = self._clock() + RESERVATION_TTL_S
        with self._lock:
            self._reserved[owner] = {b.replica: _Reservation(b, expires) for b in bookings}

    def release(self, owner: str) -> None:
        """Forget ``owner``'s reservations (it was deleted)."""
        with self._lock:
            self._reserved.pop(owner, None)

    def _managed(self) -> dict[tuple[str, str, str], int]:
        """(owner, replica, node) -> GPUs: each replica counted once per node, whether its pod,
        its Deployment or its reservation says so; a replica moving between nodes holds both."""
        now = self._clock()
        out: dict[tuple[str, str, str], int] = {}

        def hold(owner: str, replica: str, node: str, gpus: int) -> None:
            key = (owner, replica, node)
            out[key] = max(out.get(key, 0), gpus)

        for pod in self._holds.values():
            if pod.owner is not None:
                hold(pod.owner, pod.replica, pod.node, pod.gpus)
        for owner, booking in self._booked.values():
            hold(owner, str(booking.replica), booking.node, booking.gpus)
        for owner, reserved in self._reserved.items():
            for replica, reservation in list(reserved.items()):
                if reservation.expires <= now:
                    del reserved[replica]
                    continue
                b = reservation.booking
                hold(owner, str(b.replica), b.node, b.gpus)
        return out

    def _held(self, managed: bool, excluding: str | None = None) -> dict[str, int]:
        held: dict[str, int] = {}
        if not managed:
            for pod in self._holds.values():
                if pod.owner is None:
                    held[pod.node] = held.get(pod.node, 0) + pod.gpus
            return held
        for (owner, _replica, node), gpus in self._managed().items():
            if excluding is None or owner != excluding:
                held[node] = held.get(node, 0) + gpus
        return held

    def nodes(self, owner: str | None = None) -> tuple[GpuNode, ...]:
        """Schedulable GPU nodes by name, with ``allocated`` the GPUs the solve must leave alone.

        Without ``owner`` (a solve of every deployment): GPUs held by pods Goodput does not
        manage. With ``owner`` (``namespace/name``, a solve of that deployment alone): GPUs held
        by every pod, booking and reservation except that deployment's own.
        """
        with self._lock:
            foreign = self._held(managed=False)
            if owner is not None:
                for name, gpus in self._held(managed=True, excluding=owner).items():
                    foreign[name] = foreign.get(name, 0) + gpus
            out = []
            for name in sorted(self._nodes):
                node = self._nodes[name]
                held = foreign.get(name, 0)
                out.append(node if held == node.allocated else replace(node, allocated=held))
            return tuple(out)

    def __len__(self) -> int:
        return len(self._nodes)

    def adopt_holds(self, other: GpuInventory) -> None:
        """Take ``other``'s GPU holds, bookings and reservations (a watched inventory) for this
        one's nodes (a fresh listing): the listing is complete at once, the watches know the
        pods and Deployments, the solves their reservations."""
        with other._lock:
            holds, booked = dict(other._holds), dict(other._booked)
            reserved = {owner: dict(r) for owner, r in other._reserved.items()}
        with self._lock:
            self._holds, self._booked, self._reserved = holds, booked, reserved

    def managed_allocation(self) -> dict[str, int]:
        """GPUs held by Goodput's own replicas (pods, bookings, reservations), per node."""
        with self._lock:
            return self._held(managed=True)

    def excluded(self) -> dict[str, str]:
        """GPU nodes left out, with why (``cordoned`` or ``NotReady``)."""
        with self._lock:
            return dict(sorted(self._excluded.items()))

    def capacity_by_product(self) -> dict[str, tuple[int, int]]:
        """(allocated, capacity) GPUs per product label over schedulable nodes, for metrics."""
        with self._lock:
            held = self._held(managed=False)
            for name, gpus in self._held(managed=True).items():
                held[name] = held.get(name, 0) + gpus
            out: dict[str, tuple[int, int]] = {}
            for gpu_node in self._nodes.values():
                used, cap = out.get(gpu_node.product, (0, 0))
                used += min(gpu_node.gpus, held.get(gpu_node.name, 0))
                out[gpu_node.product] = (used, cap + gpu_node.gpus)
            return dict(sorted(out.items()))
