"""Converging one LLMDeployment to its owned objects and status: kopf-free, so it is unit-tested
with a fake API and called from every handler (create, update, resume, the placement-retry timer,
and the owned-Deployment watch)."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from kubernetes.client.exceptions import ApiException

from goodput.api.llmdeployment import LLMDeployment
from goodput.operator import (
    engine_args,
    gateway_config,
    naming,
    router,
    service,
    status,
    tls,
    workload,
)
from goodput.operator.inventory import GpuInventory
from goodput.operator.kube import StaleWrite, rejected
from goodput.operator.metrics import DeploymentFacts, OperatorMetrics
from goodput.operator.model_memory import EstimatedMemory, ModelMemory, ModelProfile
from goodput.operator.placement.first_fit import FirstFitSelector
from goodput.operator.placement.selection import (
    GPUSelector,
    Placement,
    SelectionContext,
    Unplaceable,
)
from goodput.operator.placement.selector import SolverSelector
from goodput.operator.rollout import (
    ANNOTATION_POD_SPEC,
    OneServingReplicaAtATime,
    ReplicaUpdate,
    RolloutGate,
    pod_spec_hash,
)
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
    def list_deployments(self, namespace: str, selector: str) -> list[Obj]: ...
    def get_secret(self, namespace: str, name: str) -> Obj | None: ...
    def delete_deployment(self, namespace: str, name: str) -> None: ...
    def delete(self, kind: str, namespace: str, name: str) -> None: ...
    def get_llmdeployment(self, namespace: str, name: str) -> Obj | None: ...
    def patch_llmdeployment_status(
        self, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None
    ) -> None: ...


@dataclass(frozen=True)
class Notice:
    """A Kubernetes Event to post about the LLMDeployment."""

    warning: bool
    reason: str
    message: str


@dataclass(frozen=True)
class Outcome:
    """What one convergence decided: the Placed verdict, the status fields that follow from
    placement (observedGeneration, gpus, gpuType, endpoint, selector, profile), and the events
    worth posting."""

    placed: status.Verdict
    fields: dict[str, Any]
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


def _engine_status(obj: LLMDeployment, placement: Placement) -> dict[str, Any]:
    """``status.engine``: what the pods run with, from the same builders as the objects the
    operator applies (the engine's arguments, the gateway's config), so it cannot drift."""
    args = workload.engine_args(obj, placement, workload.Volumes())
    config = gateway_config.gateway_config(obj, placement)
    out: dict[str, Any] = {"args": args, "predictor": config.predictor.kind}
    facts = engine_args.engine_facts(obj.spec, placement.engine)
    for key, value in (
        ("maxModelLen", facts.max_model_len),
        ("maxNumSeqs", facts.max_num_seqs),
        ("maxNumBatchedTokens", facts.max_num_batched_tokens),
        ("kvCacheTokens", config.kv_cache_tokens),
        ("gatewayMaxConcurrency", config.max_concurrency),
    ):
        if value is not None:
            out[key] = value
    return out


def _reason(err: ApiException) -> str:
    """The API server's own message from a refused write (its Status body), else the reason."""
    try:
        message = json.loads(err.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return str(message or err.reason or err.status)


def replica_of(obj: Mapping[str, Any]) -> int | None:
    """The replica id a Deployment or pod carries (``goodput.dev/replica``), if any."""
    value = ((obj.get("metadata") or {}).get("labels") or {}).get(naming.LABEL_REPLICA)
    return int(value) if value is not None and str(value).isdigit() else None


def replica_placement(
    deployments: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]]
) -> list[Obj]:
    """``status.placement``: one entry per replica Deployment, on the node it is pinned to (or,
    unpinned, the node its pod is bound to; a replica on no node yet is left out)."""
    bound: dict[int, str] = {}
    for pod in pods:
        replica, node = replica_of(pod), (pod.get("spec") or {}).get("nodeName")
        if replica is not None and node and not pod["metadata"].get("deletionTimestamp"):
            bound.setdefault(replica, str(node))
    out = []
    for dep in sorted(deployments, key=lambda d: replica_of(d) or 0):
        replica = replica_of(dep)
        annotations = dep["metadata"].get("annotations") or {}
        node = annotations.get(naming.ANNOTATION_NODE) or bound.get(replica or 0)
        if replica is None or not node:
            continue
        tensor = int(annotations.get(ANNOTATION_TENSOR, 1))
        pipeline = int(annotations.get(ANNOTATION_PIPELINE, 1))
        out.append(
            {
                "replica": replica,
                "nodes": [node],
                "gpus": tensor * pipeline,
                "tensor": tensor,
                "pipeline": pipeline,
            }
        )
    return out


def drain_first(body: Mapping[str, Any]) -> list[int]:
    """The replica ids the autoscaler wants removed first (``goodput.dev/drain-first``)."""
    annotations = (body.get("metadata") or {}).get("annotations") or {}
    text = str(annotations.get(naming.ANNOTATION_DRAIN_FIRST) or "")
    return [int(part) for part in text.split(",") if part.strip().isdigit()]


def _going(existing: Sequence[int], wanted: int, first: Sequence[int]) -> set[int]:
    """Of ``existing`` replica ids, those named in ``first`` that a scale-down to ``wanted``
    removes (none when no fewer are wanted)."""
    surplus = len(existing) - wanted
    return set([r for r in first if r in existing][: max(surplus, 0)])


def replica_ids(existing: Sequence[int], wanted: int, first: Sequence[int] = ()) -> list[int]:
    """Replica ids for ``wanted`` replicas when the placement names no nodes: the existing
    ones stay (but those ``first`` names, when there are too many; else the highest go), new
    ones take the lowest free ids."""
    going = _going(existing, wanted, first)
    keep = sorted(r for r in set(existing) if r not in going)[:wanted]
    free = (i for i in range(wanted + len(going) + len(keep)) if i not in keep and i not in going)
    return sorted(keep + [next(free) for _ in range(wanted - len(keep))])


def without_drained(
    placement: Sequence[Mapping[str, Any]], wanted: int, first: Sequence[int]
) -> list[Mapping[str, Any]]:
    """``status.placement`` less the replicas a scale-down to ``wanted`` removes first: the
    solver then keeps the others (it keeps valid previous replicas, lowest ids first)."""
    existing = [int(e.get("replica", 0)) for e in placement]
    going = _going(existing, wanted, first)
    return [e for e in placement if int(e.get("replica", 0)) not in going]


def _owned_by(obj: Mapping[str, Any], uid: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or ()
    return any(ref.get("uid") == uid and ref.get("controller") for ref in refs)


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
        rollout: RolloutGate | None = None,
    ) -> None:
        self.kube, self.selector, self.memory = kube, selector, memory
        self.metrics, self.settings = metrics, settings
        #: GPU nodes and pods, kept current by the handlers' watches (None: not watched).
        self.inventory = inventory
        self.log = logger or logging.getLogger("goodput.operator")
        self.rollout: RolloutGate = rollout or OneServingReplicaAtATime()
        #: "namespace/name" -> replica Deployments held back on an older pod template.
        self.held: dict[str, int] = {}
        #: "namespace/name" -> the lock its converges take (``reconcile``, ``refresh``).
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        #: Deployments whose TLS Secret the operator was refused (warned about once each).
        self._secrets_denied: set[str] = set()

    def rolling(self, namespace: str, name: str) -> bool:
        """Whether replicas wait for a rollout step (converge again when a replica changes)."""
        return self.held.get(f"{namespace}/{name}", 0) > 0

    def _lock(self, namespace: str, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(f"{namespace}/{name}", threading.Lock())

    def reconcile(self, namespace: str, name: str) -> tuple[Obj, Outcome] | None:
        """Converge the LLMDeployment as it is now and store its status: (the object read, what
        was decided), or None when it is gone or being deleted. Every handler converges here.

        From a fresh read, not the event's body: a newer spec (scaled to 0, say) may exist by
        then. One converge per LLMDeployment at a time: kopf runs its handler and the Deployment,
        Pod and Node watches in parallel threads, and two converges would each apply and delete
        from their own read, so one on an older spec could re-create the replica Deployments the
        other had just deleted, with nothing left to delete them again."""
        with self._lock(namespace, name):
            parent = self.kube.get_llmdeployment(namespace, name)
            if parent is None or parent["metadata"].get("deletionTimestamp"):
                return None
            outcome = self.converge(parent)
            self.store_status(namespace, name, outcome)
            return parent, outcome

    def refresh(self, namespace: str, name: str) -> tuple[Obj, Outcome] | None:
        """After one of its replica Deployments changed: converge again while the rollout gate
        holds replicas back or more replica Deployments exist than the spec asks for (one the
        spec no longer wants, which only a converge deletes); else mirror their readiness into
        the status alone. What was decided, as ``reconcile`` says; None when only the status."""
        with self._lock(namespace, name):
            if not self.rolling(namespace, name):
                parent = self.kube.get_llmdeployment(namespace, name)
                if parent is None or parent["metadata"].get("deletionTimestamp"):
                    return None
                wanted = int((parent.get("spec") or {}).get("replicas", 1))
                if len(self._replica_workloads(parent)) <= wanted:
                    self.store_status(namespace, name)
                    return None
        return self.reconcile(namespace, name)

    def converge(self, body: Mapping[str, Any]) -> Outcome:
        """Place an LLMDeployment and apply the owned objects that follow; what the status should
        say about it is in the outcome (``store_status`` writes it)."""
        obj = LLMDeployment.model_validate(dict(body))
        meta, spec = obj.metadata, obj.spec
        previous: Mapping[str, Any] = body.get("status") or {}
        old_placed = status.find(previous.get("conditions") or [], status.PLACED)
        node_objects = self.kube.list_nodes()
        nodes = GpuInventory.from_objects(node_objects).nodes()
        self.metrics.observe_capacity(nodes)
        context = SelectionContext(
            deployment=f"{meta.namespace}/{meta.name}",
            node_objects=node_objects,
            placement=without_drained(
                previous.get("placement") or (), spec.replicas, drain_first(body)
            ),
            gpu_type=previous.get("gpuType"),
        )
        refused = engine_args.refusal(spec)
        outcome = (
            Unplaceable(refused.reason, refused.message, retryable=False)
            if refused is not None
            else self.selector.select(spec, nodes, context)
        )
        notices: list[Notice] = []
        fields: dict[str, Any] = {
            "observedGeneration": meta.generation,
            "selector": naming.selector_string(meta.name),
            "profile": _profile_status(self.memory.profile(spec)),
        }
        if isinstance(outcome, Unplaceable):
            placed = status.Verdict(status.PLACED, "False", outcome.reason, outcome.message)
            if old_placed != placed:
                notices.append(Notice(True, outcome.reason, outcome.message))
            return Outcome(placed, fields, tuple(notices))
        try:
            self._apply(
                obj, outcome, had_router=bool(previous.get("router")), first=drain_first(body)
            )
        except ApiException as err:
            if not rejected(err):
                raise
            # Not placed after all: the GPUs go back to the fleet until the spec changes.
            if self.inventory is not None:
                self.inventory.release(f"{meta.namespace}/{meta.name}")
            why = f"the API server refused an object built from this spec: {_reason(err)}"
            placed = status.Verdict(status.PLACED, "False", "WorkloadRejected", why)
            if old_placed != placed:
                notices.append(Notice(True, "WorkloadRejected", why))
            return Outcome(placed, fields, tuple(notices))
        fields["router"] = router.router_name(meta.name) if spec.needs_router else None
        message = (
            f"{spec.replicas} x {outcome.gpus_per_replica} {outcome.gpu_product} "
            f"(tensor={outcome.tensor}, pipeline={outcome.pipeline})"
        )
        if outcome.detail:
            message += f"; {outcome.detail}"
        if outcome.max_concurrency is not None:
            fields["profile"]["maxConcurrency"] = outcome.max_concurrency
        fields["engine"] = _engine_status(obj, outcome)
        fields.update(
            {
                "gpus": spec.replicas * outcome.gpus_per_replica,
                "gpuType": outcome.gpu_product,
                "endpoint": service.endpoint(obj),
            }
        )
        placed = status.Verdict(status.PLACED, "True", "GPUsChosen", message)
        if old_placed != placed:
            notices.append(Notice(False, "Placed", message))
        problem = self.tls_problem(obj)
        if problem and status.find(previous.get("conditions") or [], status.DEGRADED) != problem:
            notices.append(Notice(True, problem.reason, problem.message))
        if int(previous.get("observedGeneration") or -1) != meta.generation:
            notices.append(
                Notice(False, "Applied", f"workload applied for generation {meta.generation}")
            )
        return Outcome(placed, fields, tuple(notices))

    def _apply(
        self,
        obj: LLMDeployment,
        placement: Placement,
        had_router: bool = False,
        first: Sequence[int] = (),
    ) -> None:
        """Apply the config, the Service and one Deployment per replica, then delete the
        Deployments of replicas the placement no longer has (scaled down — those named in
        ``first`` before others —, or from an older layout). Each replica's Deployment depends
        only on its own node, so an unchanged replica is an idempotent no-op apply and its pod
        keeps running; a new pod template reaches serving replicas as the rollout gate admits
        them."""
        meta = obj.metadata
        cm = gateway_config.config_map(obj, placement)
        digest = gateway_config.rolling_hash(cm)
        spec_hash = pod_spec_hash(workload.pod_template(obj, placement, self.settings, digest))
        self.kube.apply(cm)
        self._apply_router(obj, had_router)
        self.kube.apply(service.service(obj))
        owned = [
            d
            for d in self.kube.list_deployments(meta.namespace, naming.selector_string(meta.name))
            if _owned_by(d, meta.uid)
        ]
        current = {d["metadata"]["name"]: d for d in owned}
        existing = [r for d in owned if (r := replica_of(d)) is not None]
        slots: Sequence[tuple[int, str | None]] = placement.replica_nodes or [
            (i, None) for i in replica_ids(existing, obj.spec.replicas, first)
        ]
        updates = []
        for replica, node in slots:
            dep = workload.deployment(obj, placement, self.settings, digest, replica, node)
            dep["metadata"]["annotations"] = {
                ANNOTATION_TENSOR: str(placement.tensor),
                ANNOTATION_PIPELINE: str(placement.pipeline),
                ANNOTATION_POD_SPEC: spec_hash,
                **({naming.ANNOTATION_NODE: node} if node else {}),
            }
            updates.append(ReplicaUpdate(replica, dep, current.get(dep["metadata"]["name"])))
        now, held = self.rollout.admit(updates)
        for update in sorted(now, key=lambda u: u.replica):
            self.kube.apply(update.desired)
        key = f"{meta.namespace}/{meta.name}"
        if held:
            self.held[key] = len(held)
            self.log.info(
                f"{key}: rolling one replica at a time; waiting: "
                + ", ".join(str(u.desired["metadata"]["name"]) for u in held)
            )
        else:
            self.held.pop(key, None)
        wanted = {u.desired["metadata"]["name"] for u in updates}
        for name in sorted(set(current) - wanted):
            self.log.info(f"{key}: deleting replica workload {name}")
            self.kube.delete_deployment(meta.namespace, name)

    def _apply_router(self, obj: LLMDeployment, had_router: bool) -> None:
        """The router's objects when the spec needs one (``needs_router``), before the Service
        turns to it; deleted (the Service back on the gateways first) when it no longer does."""
        meta = obj.metadata
        if obj.spec.needs_router:
            for item in router.objects(obj, self.settings):
                self.kube.apply(item)
            return
        if had_router:
            self.kube.apply(service.service(obj))
            for kind, name in router.object_keys(meta.name):
                self.kube.delete(kind, meta.namespace, name)

    def tls_problem(self, obj: LLMDeployment) -> status.Verdict | None:
        """What is wrong with the deployment's TLS Secret, read afresh (``operator/tls.py``). An
        operator not allowed to read Secrets (the default: ``permissions.TLS_SECRETS`` is
        opt-in) reports nothing rather than stalling, and says so once."""
        name = tls.secret_name(obj)
        if name is None:
            return None
        try:
            secret = self.kube.get_secret(obj.metadata.namespace, name)
        except ApiException as err:
            if err.status != 403:
                raise
            key = f"{obj.metadata.namespace}/{obj.metadata.name}"
            if key not in self._secrets_denied:
                self._secrets_denied.add(key)
                self.log.warning(
                    f"{key}: may not read Secret {name} (the operator's role lacks get on "
                    "secrets: the chart's rbac.readTLSSecrets); its problems go unreported"
                )
            return None
        return tls.problem(obj, secret)

    def status_of(
        self,
        parent: Mapping[str, Any],
        deployments: Sequence[Mapping[str, Any]],
        outcome: Outcome | None = None,
    ) -> dict[str, Any] | None:
        """The status fields for ``parent`` given its replica Deployments now and, after a
        convergence, its outcome. None before the first convergence (nothing is known about
        placement)."""
        obj = LLMDeployment.model_validate(dict(parent))
        meta = obj.metadata
        current: Mapping[str, Any] = parent.get("status") or {}
        placed = (
            outcome.placed
            if outcome
            else status.find(current.get("conditions") or [], status.PLACED)
        )
        if placed is None:
            return None
        generation = int(
            (outcome.fields if outcome else current).get("observedGeneration") or meta.generation
        )
        new = status.readiness_patch(
            current,
            generation,
            obj.spec.replicas,
            status.WorkloadState.of_replicas(
                deployments, obj.spec.replicas, self.held.get(f"{meta.namespace}/{meta.name}", 0)
            ),
            now(),
            placed,
            self.tls_problem(obj) if placed.status == "True" else None,
        )
        if outcome is not None:
            new.update(outcome.fields)
        pods = self.kube.list_pods(meta.namespace, naming.selector_string(meta.name))
        new["placement"] = replica_placement(deployments, pods)
        merged = {**current, **new}
        placed_ok = placed.status == "True"
        self._observe(
            obj,
            str(new["phase"]),
            merged.get("gpuType") if placed_ok else None,
            int(merged.get("gpus") or 0) if placed_ok else 0,
        )
        return new

    def store_status(
        self, namespace: str, name: str, outcome: Outcome | None = None, attempts: int = 5
    ) -> dict[str, Any] | None:
        """Read-modify-write the status, guarded by the object's resourceVersion: the
        LLMDeployment handlers and the Deployment watch both write it, and neither may clobber
        a newer view with an older one. Each try reads the replica Deployments afresh."""
        for attempt in range(attempts):
            parent = self.kube.get_llmdeployment(namespace, name)
            if parent is None or parent["metadata"].get("deletionTimestamp"):
                return None
            new = self.status_of(parent, self._replica_workloads(parent), outcome)
            current = parent.get("status") or {}
            if new is None or all(current.get(k) == v for k, v in new.items()):
                return new
            try:
                self.kube.patch_llmdeployment_status(
                    namespace, name, new, parent["metadata"].get("resourceVersion")
                )
                return new
            except StaleWrite:
                if attempt == attempts - 1:
                    raise
        return None

    def _replica_workloads(self, parent: Mapping[str, Any]) -> list[Obj]:
        """The parent's live replica Deployments (owned by it, not being deleted)."""
        meta = parent["metadata"]
        return [
            d
            for d in self.kube.list_deployments(
                meta["namespace"], naming.replica_workloads_selector(meta["name"])
            )
            if _owned_by(d, meta.get("uid")) and not d["metadata"].get("deletionTimestamp")
        ]

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted LLMDeployment's metrics and GPU reservations."""
        self.metrics.forget_deployment(f"{namespace}/{name}")
        if self.inventory is not None:
            self.inventory.release(f"{namespace}/{name}")

    def _observe(self, obj: LLMDeployment, phase: str, product: str | None, gpus: int) -> None:
        key = f"{obj.metadata.namespace}/{obj.metadata.name}"
        self.metrics.observe_deployment(key, DeploymentFacts(phase, product, gpus))


def default_reconciler(
    kube: KubeAPI, settings: WorkloadSettings, metrics: OperatorMetrics
) -> Reconciler:
    """The reconciler as the operator runs it: the placement solver on a GPU inventory (which the
    Pod watch, or a dry run, fills), first fit for models outside the profiler's catalog. The
    running operator and ``goodput operator render`` both build it here, so they place alike."""
    memory = EstimatedMemory()
    inventory = GpuInventory()
    return Reconciler(
        kube=kube,
        selector=SolverSelector(
            fallback=FirstFitSelector(memory), inventory=inventory, memory=memory
        ),
        memory=memory,
        metrics=metrics,
        settings=settings,
        inventory=inventory,
    )
