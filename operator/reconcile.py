"""Converging one LLMDeployment to its owned objects and status: kopf-free, so it is unit-tested
with a fake API and called from every handler (create, update, resume, the placement-retry timer,
and the owned-Deployment watch)."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from goodput.api.llmdeployment import LLMDeployment
from goodput.operator import gateway_config, naming, service, status, workload
from goodput.operator.gpu_selection import (
    GPUSelector,
    Placement,
    SelectionContext,
    Unplaceable,
    gpu_nodes,
)
from goodput.operator.inventory import GpuInventory
from goodput.operator.metrics import DeploymentFacts, OperatorMetrics
from goodput.operator.model_memory import ModelMemory, ModelProfile
from goodput.operator.settings import WorkloadSettings

ANNOTATION_TENSOR = "goodput.dev/tensor-parallel-size"
ANNOTATION_PIPELINE = "goodput.dev/pipeline-parallel-size"
GIB = 1024**3
Obj = dict[str, Any]


class KubeAPI(Protocol):
    """The API calls the reconciler makes (``goodput.operator.kube.Kube`` in production)."""

    def apply(self, obj: Mapping[str, Any]) -> Obj: ...
    def list_nodes(self) -> list[Obj]: ...
    def list_pods(self, namespace: str, selector: str) -> list[Obj]: ...
    def get_deployment(self, namespace: str, name: str) -> Obj | None: ...
    def get_llmdeployment(self, namespace: str, name: str) -> Obj | None: ...
    def patch_llmdeployment_status(
        self, namespace: str, name: str, status: Mapping[str, Any]
    ) -> None: ...


@dataclass(frozen=True)
class Notice:
    """A Kubernetes Event to post about the LLMDeployment."""

    warning: bool
    reason: str
    message: str


@dataclass(frozen=True)
class Outcome:
    """What one convergence produced: the status to write and the events worth posting."""

    status: dict[str, Any]
    notices: tuple[Notice, ...]


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _profile_status(profile: ModelProfile) -> dict[str, Any]:
    out: dict[str, Any] = {"source": profile.source}
    if profile.parameters is not None:
        out["parameters"] = profile.parameters
    if profile.weights_bytes is not None:
        out["weightsGiB"] = round(profile.weights_bytes / GIB, 2)
    if profile.kv_bytes_per_token is not None:
        out["kvBytesPerToken"] = profile.kv_bytes_per_token
    return out


def replica_placement(pods: Sequence[Mapping[str, Any]], tensor: int, pipeline: int) -> list[Obj]:
    """``status.placement``: one entry per bound pod (a replica is one pod for now)."""
    bound = sorted(
        (p for p in pods if (p.get("spec") or {}).get("nodeName")),
        key=lambda p: str(p["metadata"]["name"]),
    )
    return [
        {
            "replica": i,
            "nodes": [p["spec"]["nodeName"]],
            "gpus": tensor * pipeline,
            "tensor": tensor,
            "pipeline": pipeline,
        }
        for i, p in enumerate(bound)
    ]


def parallelism_of(deployment: Mapping[str, Any] | None) -> tuple[int, int]:
    annotations = ((deployment or {}).get("metadata") or {}).get("annotations") or {}
    return int(annotations.get(ANNOTATION_TENSOR, 1)), int(annotations.get(ANNOTATION_PIPELINE, 1))


class Reconciler:
    """Owns the convergence logic; the kopf handlers are thin wrappers around it."""

    def __init__(
        self,
        kube: KubeAPI,
        selector: GPUSelector,
        memory: ModelMemory,
        metrics: OperatorMetrics,
        settings: WorkloadSettings,
        logger: logging.Logger | None = None,
        inventory: GpuInventory | None = None,
    ) -> None:
        self.kube, self.selector, self.memory = kube, selector, memory
        self.metrics, self.settings = metrics, settings
        #: GPU nodes and pods, kept current by the handlers' watches (None: not watched).
        self.inventory = inventory
        self.log = logger or logging.getLogger("goodput.operator")

    def converge(self, body: Mapping[str, Any]) -> Outcome:
        """Apply the owned objects an LLMDeployment implies and compute its status."""
        obj = LLMDeployment.model_validate(dict(body))
        meta, spec = obj.metadata, obj.spec
        previous: Mapping[str, Any] = body.get("status") or {}
        old_placed = status.find(previous.get("conditions") or [], status.PLACED)
        node_objects = self.kube.list_nodes()
        nodes = gpu_nodes(node_objects)
        self.metrics.observe_capacity(nodes)
        context = SelectionContext(
            deployment=f"{meta.namespace}/{meta.name}",
            node_objects=node_objects,
            placement=previous.get("placement") or (),
            gpu_type=previous.get("gpuType"),
        )
        outcome = self.selector.select(spec, nodes, context)
        profile = self.memory.profile(spec)
        notices: list[Notice] = []
        if spec.routing.prefix_aware:
            notices.append(
                Notice(
                    True,
                    "PrefixRoutingUnavailable",
                    "routing.prefixAware is not implemented "
                    "yet; requests are balanced by the Service",
                )
            )
        common = {
            "observedGeneration": meta.generation,
            "selector": naming.selector_string(meta.name),
            "profile": _profile_status(profile),
        }
        if isinstance(outcome, Unplaceable):
            placed = status.Verdict(status.PLACED, "False", outcome.reason, outcome.message)
            existing = self.kube.get_deployment(meta.namespace, naming.workload_name(meta.name))
            new = status.readiness_patch(
                previous,
                meta.generation,
                spec.replicas,
                status.WorkloadState.of(existing),
                now(),
                placed,
            )
            new.update(common)
            if old_placed != placed:
                notices.append(Notice(True, outcome.reason, outcome.message))
            self._observe(obj, new["phase"], None, 0)
            return Outcome(new, tuple(notices))
        return self._apply(obj, outcome, previous, old_placed, common, notices)

    def _apply(
        self,
        obj: LLMDeployment,
        placement: Placement,
        previous: Mapping[str, Any],
        old_placed: status.Verdict | None,
        common: dict[str, Any],
        notices: list[Notice],
    ) -> Outcome:
        meta, spec = obj.metadata, obj.spec
        cm = gateway_config.config_map(obj)
        digest = gateway_config.config_hash(*cm["data"].values())
        dep = workload.deployment(obj, placement, self.settings, digest)
        dep["metadata"]["annotations"] = {
            ANNOTATION_TENSOR: str(placement.tensor),
            ANNOTATION_PIPELINE: str(placement.pipeline),
        }
        self.kube.apply(cm)
        self.kube.apply(service.service(obj))
        applied = self.kube.apply(dep)
        gpus = spec.replicas * placement.gpus_per_replica
        message = (
            f"{spec.replicas} x {placement.gpus_per_replica} {placement.gpu_product} "
            f"(tensor={placement.tensor}, pipeline={placement.pipeline})"
        )
        if placement.detail:
            message += f"; {placement.detail}"
        placed = status.Verdict(status.PLACED, "True", "GPUsChosen", message)
        new = status.readiness_patch(
            previous,
            meta.generation,
            spec.replicas,
            status.WorkloadState.of(applied),
            now(),
            placed,
        )
        pods = self.kube.list_pods(meta.namespace, naming.selector_string(meta.name))
        if placement.max_concurrency is not None:
            common["profile"]["maxConcurrency"] = placement.max_concurrency
        new.update(common)
        new.update(
            {
                "gpus": gpus,
                "gpuType": placement.gpu_product,
                "endpoint": service.endpoint(obj),
                "placement": replica_placement(pods, placement.tensor, placement.pipeline),
            }
        )
        if old_placed is None or old_placed.status != "True" or old_placed.message != message:
            notices.append(Notice(False, "Placed", message))
        if int(previous.get("observedGeneration") or -1) != meta.generation:
            notices.append(
                Notice(False, "Applied", f"workload applied for generation {meta.generation}")
            )
        self._observe(obj, new["phase"], placement.gpu_product, gpus)
        return Outcome(new, tuple(notices))

    def workload_changed(
        self, parent: Mapping[str, Any], deployment: Mapping[str, Any] | None
    ) -> dict[str, Any] | None:
        """The parent's new status after its Deployment changed, or None when nothing changed."""
        obj = LLMDeployment.model_validate(dict(parent))
        meta = obj.metadata
        current: Mapping[str, Any] = parent.get("status") or {}
        generation = int(current.get("observedGeneration") or meta.generation)
        new = status.readiness_patch(
            current, generation, obj.spec.replicas, status.WorkloadState.of(deployment), now()
        )
        if deployment is not None:
            tensor, pipeline = parallelism_of(deployment)
            pods = self.kube.list_pods(meta.namespace, naming.selector_string(meta.name))
            new["placement"] = replica_placement(pods, tensor, pipeline)
        self._observe(obj, new["phase"], current.get("gpuType"), int(current.get("gpus") or 0))
        if all(current.get(k) == v for k, v in new.items()):
            return None
        return new

    def forget(self, namespace: str, name: str) -> None:
        self.metrics.forget_deployment(f"{namespace}/{name}")

    def _observe(self, obj: LLMDeployment, phase: str, product: str | None, gpus: int) -> None:
        key = f"{obj.metadata.namespace}/{obj.metadata.name}"
        self.metrics.observe_deployment(key, DeploymentFacts(phase, product, gpus))
