"""A dry run of the operator, as ``helm template`` is of a chart: the objects it would apply for
LLMDeployment manifests and the status it would write, from Node objects alone.

The operator's own reconciler does the work (``default_reconciler``: the same placement, the same
builders), against ``DryRunAPI``, an in-memory stand-in for the API server that records what is
applied. So the dry run cannot drift from the operator: there is no second builder to keep equal.
Manifests are converged in order, each seeing the GPUs the earlier ones' pods would hold.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from goodput.api.llmdeployment import LLMDeployment
from goodput.operator.metrics import OperatorMetrics
from goodput.operator.naming import ANNOTATION_NODE
from goodput.operator.reconcile import Notice, default_reconciler
from goodput.operator.settings import WorkloadSettings

Obj = dict[str, Any]
#: The uid a manifest without one is rendered with (owner references need one).
DRY_RUN_UID = "00000000-0000-0000-0000-000000000000"


class DryRunAPI:
    """The reconciler's ``KubeAPI`` with nothing behind it: the given nodes, none of the
    deployment's own objects yet, and every apply recorded instead of sent."""

    def __init__(self, nodes: Sequence[Obj], parent: Obj) -> None:
        self.nodes = list(nodes)
        self.parent = parent
        self.applied: list[Obj] = []

    def apply(self, obj: Mapping[str, Any]) -> Obj:
        self.applied.append(copy.deepcopy(dict(obj)))
        return dict(obj)

    def list_nodes(self) -> list[Obj]:
        return self.nodes

    def list_pods(self, namespace: str, selector: str) -> list[Obj]:
        return []

    def list_deployments(self, namespace: str, selector: str) -> list[Obj]:
        return [
            d
            for d in self.applied
            if d["kind"] == "Deployment" and d["metadata"]["namespace"] == namespace
        ]

    def get_secret(self, namespace: str, name: str) -> Obj | None:
        """Taken to be there: the dry run reads no Secret (they hold keys), so this stand-in has
        the right type and no data, and the certificate goes unchecked."""
        return {"metadata": {"name": name, "namespace": namespace}, "type": "kubernetes.io/tls"}

    def delete_deployment(self, namespace: str, name: str) -> None:
        """Nothing exists to delete."""

    def delete(self, kind: str, namespace: str, name: str) -> None:
        """Nothing exists to delete."""

    def get_llmdeployment(self, namespace: str, name: str) -> Obj | None:
        return self.parent

    def patch_llmdeployment_status(
        self, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None
    ) -> None:
        self.parent["status"] = dict(status)


@dataclass(frozen=True)
class Rendered:
    """One manifest's dry run: the objects applied, in order, the LLMDeployment with the status
    the operator would write, the Events it would post, and the pods the scheduler would bind
    (which hold GPUs for the manifests after it)."""

    objects: tuple[Obj, ...]
    llmdeployment: Obj
    notices: tuple[Notice, ...]
    pods: tuple[Obj, ...]

    @property
    def placed(self) -> bool:
        conditions = self.llmdeployment["status"].get("conditions") or ()
        return any(c["type"] == "Placed" and c["status"] == "True" for c in conditions)


def as_object(manifest: Mapping[str, Any], namespace: str | None = None) -> Obj:
    """A manifest as the API server would hand it to the operator: validated (the same model
    the CRD is generated from, so the same rules), in ``namespace`` unless it names one, with
    a uid and generation 1."""
    obj = copy.deepcopy(dict(manifest))
    meta = obj.setdefault("metadata", {})
    meta.setdefault("namespace", namespace or "default")
    meta.setdefault("uid", DRY_RUN_UID)
    meta.setdefault("generation", 1)
    LLMDeployment.model_validate(obj)  # raises pydantic.ValidationError with every problem
    return obj


def _scheduled_pod(deployment: Mapping[str, Any]) -> Obj | None:
    """The pod the scheduler would bind for a pinned replica Deployment (GPU holds for the
    manifests rendered after it)."""
    meta, template = deployment["metadata"], deployment["spec"]["template"]
    node = (meta.get("annotations") or {}).get(ANNOTATION_NODE)
    if not node:
        return None
    return {
        "metadata": {
            "name": f"{meta['name']}-dry-run",
            "namespace": meta["namespace"],
            "uid": f"dry-run/{meta['namespace']}/{meta['name']}",
            "labels": template["metadata"]["labels"],
        },
        "spec": {**template["spec"], "nodeName": node},
        "status": {"phase": "Pending"},
    }


def render(
    manifests: Iterable[Mapping[str, Any]],
    nodes: Sequence[Obj],
    settings: WorkloadSettings,
    pods: Iterable[Obj] = (),
    namespace: str | None = None,
) -> list[Rendered]:
    """Converge each LLMDeployment manifest once, as the operator's create handler would, on
    ``nodes`` with ``pods`` holding GPUs. Invalid manifests raise ``pydantic.ValidationError``."""
    held = list(pods)
    out = []
    for manifest in manifests:
        parent = as_object(manifest, namespace)
        api = DryRunAPI(nodes, parent)
        reconciler = default_reconciler(api, settings, OperatorMetrics())
        assert reconciler.inventory is not None
        for holder in held:
            reconciler.inventory.apply_pod("ADDED", holder)
        outcome = reconciler.converge(parent)
        meta = parent["metadata"]
        reconciler.store_status(meta["namespace"], meta["name"], outcome)
        scheduled = tuple(
            pod
            for obj in api.applied
            if obj["kind"] == "Deployment" and (pod := _scheduled_pod(obj)) is not None
        )
        held += scheduled
        out.append(Rendered(tuple(api.applied), parent, outcome.notices, scheduled))
    return out
