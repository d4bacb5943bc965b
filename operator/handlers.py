"""kopf handlers: thin adapters from kopf's callbacks to ``Reconciler``.

No finalizer: every owned object carries a controller owner reference, so the garbage collector
deletes them with the LLMDeployment; the delete handler is ``optional`` (kopf adds no finalizer
for it) because forgetting the deployment's metrics is not worth blocking a deletion for.

kopf's own bookkeeping (handler progress, the last-handled spec) lives in ``goodput.dev/``
annotations, not in ``status`` (the structural schema would prune it).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, cast

import kopf
from kubernetes.client.exceptions import ApiException

from goodput.api.llmdeployment import GROUP, PLURAL, VERSION
from goodput.operator import naming
from goodput.operator.reconcile import Outcome, Reconciler
from goodput.operator.status import PLACED, RETRYABLE_PLACEMENT_REASONS, find

RESOURCE = (GROUP, VERSION, PLURAL)
RETRY_DELAY_SECONDS = 15


def _post(body: Mapping[str, Any], outcome: Outcome) -> None:
    for notice in outcome.notices:
        post = kopf.warn if notice.warning else kopf.info
        post(cast(kopf.Body, body), reason=notice.reason, message=notice.message)


def _converge(reconciler: Reconciler, body: Mapping[str, Any], patch: kopf.Patch) -> None:
    try:
        outcome = reconciler.converge(body)
    except ApiException as err:
        # Conflicts, throttling, a restarting API server: retry soon, without a traceback.
        raise kopf.TemporaryError(
            f"Kubernetes API error {err.status} {err.reason}", delay=RETRY_DELAY_SECONDS
        ) from err
    patch.status.update(outcome.status)
    _post(body, outcome)


def _waiting_for_gpus(status: Mapping[str, Any], **_: Any) -> bool:
    """Whether placement failed for a reason that new nodes could cure."""
    placed = find(status.get("conditions") or [], PLACED)
    return (
        placed is not None
        and placed.status == "False"
        and placed.reason in (RETRYABLE_PLACEMENT_REASONS)
    )


def register(
    registry: kopf.OperatorRegistry,
    reconciler_factory: Callable[[], Reconciler],
    retry_placement_seconds: float,
) -> None:
    """Register every handler on ``registry``; the reconciler is built at operator start-up
    (after login), so building the registry needs no cluster."""
    holder: dict[str, Reconciler] = {}

    def rec() -> Reconciler:
        if "r" not in holder:
            holder["r"] = reconciler_factory()
        return holder["r"]

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
        settings.posting.level = logging.INFO
        rec()

    @kopf.on.create(*RESOURCE, registry=registry)
    @kopf.on.update(*RESOURCE, registry=registry)
    @kopf.on.resume(*RESOURCE, registry=registry)
    def reconcile(body: kopf.Body, patch: kopf.Patch, reason: str, **_: Any) -> None:
        """Create, spec change (including ``kubectl scale``), and operator restart alike."""
        with rec().metrics.reconciling(f"llmdeployment_{reason}"):
            _converge(rec(), body, patch)

    @kopf.timer(
        *RESOURCE,
        interval=retry_placement_seconds,
        initial_delay=retry_placement_seconds,
        when=_waiting_for_gpus,
        registry=registry,
    )
    def retry_placement(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        """Nodes with the wanted GPUs may have joined since the last try."""
        with rec().metrics.reconciling("retry_placement"):
            _converge(rec(), body, patch)

    @kopf.on.delete(*RESOURCE, optional=True, registry=registry)
    def deleted(name: str, namespace: str | None, **_: Any) -> None:
        rec().forget(namespace or "", name)

    @kopf.on.event(
        "apps",
        "v1",
        "deployments",
        labels={naming.LABEL_MANAGED_BY: naming.MANAGED_BY},
        registry=registry,
    )
    def workload_event(type: str, body: kopf.Body, namespace: str | None, **_: Any) -> None:
        """Mirror the owned Deployment's readiness into the parent's status; re-create it if
        someone deleted it while the parent lives."""
        owner = (body.get("metadata", {}).get("labels") or {}).get(naming.LABEL_DEPLOYMENT)
        if not owner or not type or not namespace:
            return
        r = rec()
        with r.metrics.reconciling("workload_event"):
            parent = r.kube.get_llmdeployment(namespace, owner)
            if parent is None or parent["metadata"].get("deletionTimestamp"):
                return
            if type == "DELETED":
                outcome = r.converge(parent)
                r.kube.patch_llmdeployment_status(namespace, owner, outcome.status)
                _post(parent, outcome)
                return
            new = r.workload_changed(parent, dict(body))
            if new is not None:
                r.kube.patch_llmdeployment_status(namespace, owner, new)
