"""kopf handlers: thin adapters from kopf's callbacks to ``Reconciler``.

No finalizer: every owned object carries a controller owner reference, so the garbage collector
deletes them with the LLMDeployment; the delete handler is ``optional`` (kopf adds no finalizer
for it) because forgetting the deployment's metrics is not worth blocking a deletion for.

kopf's own bookkeeping (handler progress, the last-handled spec) lives in ``goodput.dev/``
annotations, not in ``status`` (the structural schema would prune it).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from typing import Any, cast

import kopf
from kubernetes.client.exceptions import ApiException

from goodput.api.llmdeployment import GROUP, PLURAL, VERSION
from goodput.operator import naming
from goodput.operator.autoscaler import AutoscalingLoop
from goodput.operator.inventory import pod_gpu_request
from goodput.operator.kube import StaleWrite
from goodput.operator.reconcile import Outcome, Reconciler
from goodput.operator.status import PLACED, RETRYABLE_PLACEMENT_REASONS, find

RESOURCE = (GROUP, VERSION, PLURAL)
RETRY_DELAY_SECONDS = 15


_log = logging.getLogger("goodput.operator")


def _post(done: tuple[Mapping[str, Any], Outcome] | None) -> None:
    """Post a converge's notices as Kubernetes Events (and log them); None: nothing decided."""
    if done is None:
        return
    body, outcome = done
    meta = body.get("metadata") or {}
    for notice in outcome.notices:
        level = logging.WARNING if notice.warning else logging.INFO
        _log.log(
            level, f"{meta.get('namespace')}/{meta.get('name')}: {notice.reason}: {notice.message}"
        )
        kopf.event(
            cast(kopf.Body, body),
            type="Warning" if notice.warning else "Normal",
            reason=notice.reason,
            message=notice.message,
        )


def _reconcile(reconciler: Reconciler, namespace: str, name: str) -> None:
    """Converge from a fresh read and write the status through the API (not kopf's patch, which
    cannot be guarded by resourceVersion against the Deployment watch's concurrent writes)."""
    try:
        done = reconciler.reconcile(namespace, name)
    except (ApiException, StaleWrite) as err:
        # Conflicts, throttling, a restarting API server: retry soon, without a traceback.
        raise kopf.TemporaryError(f"Kubernetes API: {err}", delay=RETRY_DELAY_SECONDS) from err
    _post(done)


def _waiting_for_gpus(status: Mapping[str, Any], **_: Any) -> bool:
    """Whether placement failed for a reason that new nodes could cure."""
    placed = find(status.get("conditions") or [], PLACED)
    return (
        placed is not None
        and placed.status == "False"
        and placed.reason in (RETRYABLE_PLACEMENT_REASONS)
    )


def _node_fingerprint(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What placement reads from a Node; heartbeats and other status churn leave it unchanged."""
    labels = (body.get("metadata") or {}).get("labels") or {}
    allocatable = (body.get("status") or {}).get("allocatable") or {}
    return (
        labels.get("nvidia.com/gpu.product"),
        labels.get("nvidia.com/gpu.memory"),
        allocatable.get("nvidia.com/gpu"),
        bool((body.get("spec") or {}).get("unschedulable")),
    )


def register(
    registry: kopf.OperatorRegistry,
    reconciler_factory: Callable[[], Reconciler],
    autoscaler_factory: Callable[[Callable[[], str]], AutoscalingLoop] | None = None,
) -> None:
    """Register every handler on ``registry``; the reconciler (and the autoscaling loop, given
    the fleet's version) are built at operator start-up (after login), so building the registry
    needs no cluster."""
    holder: dict[str, Reconciler] = {}
    loops: list[AutoscalingLoop] = []
    nodes_seen: dict[str, tuple[Any, ...]] = {}
    # Moves on whenever GPUs may have appeared (a node changed, a GPU pod went): the autoscaler
    # asks again for a scale-up the placement refused only once it has.
    fleet_changes = [0]

    def rec() -> Reconciler:
        if "r" not in holder:
            holder["r"] = reconciler_factory()
        return holder["r"]

    def converge_and_patch(namespace: str, name: str) -> None:
        """Converge outside an LLMDeployment handler, e.g. when nodes change."""
        _post(rec().reconcile(namespace, name))

    def logged(what: str, logger: kopf.Logger, fn: Callable[[], object]) -> None:
        """Watch-event handlers are not retried by kopf: log API errors in one line; the next
        event (or the LLMDeployment's own handlers) converges again."""
        try:
            fn()
        except (ApiException, StaleWrite) as err:
            logger.warning(f"{what}: Kubernetes API: {err}")

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix="goodput.dev"
        )
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="goodput.dev", key="last-handled-configuration"
        )
        # Only warnings from kopf's own logs become Events: at INFO, every pod and node event
        # the watches handle would post a "Handler succeeded" Event on that pod or node.
        settings.posting.level = logging.WARNING
        rec()
        if autoscaler_factory is not None and not loops:
            loops.append(autoscaler_factory(lambda: str(fleet_changes[0])))
            loops[0].start()

    @kopf.on.cleanup(registry=registry)
    def cleanup(**_: Any) -> None:
        for loop in loops:
            loop.stop()

    def autoscaled(namespace: str, name: str, spec: Mapping[str, Any]) -> None:
        """Hand the deployment to the autoscaling loop, or take it back. The loop also keeps
        ``status.adapters`` of deployments serving LoRA: it reads their gateways' reports."""
        lora = bool(spec.get("adapters") or (spec.get("lora") or {}).get("enabled"))
        for loop in loops:
            if (spec.get("autoscaling") or {}).get("enabled") or lora:
                loop.track(namespace, name)
            else:
                loop.forget(namespace, name)

    @kopf.on.create(*RESOURCE, id="reconcile-create", registry=registry)
    @kopf.on.update(*RESOURCE, id="reconcile-update", registry=registry)
    @kopf.on.resume(*RESOURCE, id="reconcile-resume", registry=registry)
    def reconcile(
        name: str, namespace: str | None, reason: str, spec: Mapping[str, Any], **_: Any
    ) -> None:
        """Create, spec change (including ``kubectl scale``), and operator restart alike; the
        event only says which object, the reconciler reads it afresh."""
        with rec().metrics.reconciling(f"llmdeployment_{reason or 'resume'}"):
            _reconcile(rec(), namespace or "", name)
        autoscaled(namespace or "", name, spec)

    # Indexes reach handlers as keyword arguments named by their ids.
    @kopf.index(*RESOURCE, id="waiting_for_gpus", when=_waiting_for_gpus, registry=registry)
    def waiting_for_gpus(namespace: str | None, name: str, **_: Any) -> dict[str, str]:
        """LLMDeployments that new GPU nodes could place (kept current by kopf)."""
        return {f"{namespace}/{name}": name}

    @kopf.index(*RESOURCE, id="placed_on", registry=registry)
    def placed_on(
        status: Mapping[str, Any], namespace: str | None, name: str, **_: Any
    ) -> dict[str, str]:
        """The nodes each LLMDeployment's replicas run on (from ``status.placement``)."""
        nodes = {n for entry in status.get("placement") or () for n in entry.get("nodes") or ()}
        return {node: f"{namespace}/{name}" for node in sorted(nodes)}

    def retry_waiting(waiting: kopf.Index[str, str], logger: kopf.Logger) -> None:
        fleet_changes[0] += 1
        for key in list(waiting):
            namespace, _sep, deployment = key.partition("/")
            with rec().metrics.reconciling("retry_placement"):
                logged(
                    f"retrying placement of {key}",
                    logger,
                    functools.partial(converge_and_patch, namespace, deployment),
                )

    @kopf.on.event("", "v1", "pods", registry=registry)
    def pod_event(type: str, body: kopf.Body, logger: kopf.Logger, **kwargs: Any) -> None:
        """Keep the GPU inventory's holds current (which GPUs other pods already use), and
        retry the deployments waiting for GPUs when a pod releases some."""
        inventory = rec().inventory
        if inventory is None:
            return
        inventory.apply_pod(type, body)
        phase = (body.get("status") or {}).get("phase")
        bound = bool((body.get("spec") or {}).get("nodeName"))
        released = type == "DELETED" or phase in ("Succeeded", "Failed")
        if released and bound and pod_gpu_request(body) > 0:
            retry_waiting(kwargs["waiting_for_gpus"], logger)

    @kopf.on.event("", "v1", "nodes", registry=registry)
    def node_event(
        type: str, name: str, body: kopf.Body, logger: kopf.Logger, **kwargs: Any
    ) -> None:
        """Keep the GPU inventory current; re-place the deployments with a replica on a node
        that left (deleted or cordoned) and retry the waiting ones. A watch rather than a
        timer: kopf timers need a finalizer on every LLMDeployment, which would make deletion
        depend on a running operator."""
        inventory = rec().inventory
        if inventory is not None:
            inventory.apply_node(type, body)
        fingerprint = None if type == "DELETED" else _node_fingerprint(body)
        if nodes_seen.get(name) == fingerprint:
            return
        if fingerprint is None or fingerprint[-1]:  # gone or cordoned
            placed: kopf.Index[str, str] = kwargs["placed_on"]
            for key in sorted(set(placed.get(name, []))):
                namespace, _sep, deployment = key.partition("/")
                with rec().metrics.reconciling("replace_lost_node"):
                    logged(
                        f"re-placing {key}",
                        logger,
                        functools.partial(converge_and_patch, namespace, deployment),
                    )
        if fingerprint is None:
            nodes_seen.pop(name, None)
        else:
            nodes_seen[name] = fingerprint
        retry_waiting(kwargs["waiting_for_gpus"], logger)

    @kopf.on.delete(*RESOURCE, optional=True, registry=registry)
    def deleted(name: str, namespace: str | None, **_: Any) -> None:
        rec().forget(namespace or "", name)
        for loop in loops:
            loop.forget(namespace or "", name)

    @kopf.on.event(
        "apps",
        "v1",
        "deployments",
        labels={naming.LABEL_MANAGED_BY: naming.MANAGED_BY},
        registry=registry,
    )
    def workload_event(
        type: str, body: kopf.Body, namespace: str | None, logger: kopf.Logger, **_: Any
    ) -> None:
        """Keep the inventory's replica bookings current; mirror the replica Deployments'
        readiness into the parent's status; converge again when one is deleted (re-created if
        the parent still wants that replica), while a rollout holds replicas back (the next
        one rolls once this one serves), or while there are more than the spec asks for."""
        r = rec()
        if r.inventory is not None:
            r.inventory.apply_deployment(type, body)
        owner = (body.get("metadata", {}).get("labels") or {}).get(naming.LABEL_DEPLOYMENT)
        if not owner or not type or not namespace:
            return
        with r.metrics.reconciling("workload_event"):
            if type == "DELETED":
                logged(
                    f"re-creating {namespace}/{owner}",
                    logger,
                    lambda: converge_and_patch(namespace, owner),
                )
            else:
                logged(
                    f"refreshing {namespace}/{owner}",
                    logger,
                    lambda: _post(r.refresh(namespace, owner)),
                )
