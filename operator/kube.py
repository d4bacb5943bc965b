"""The few Kubernetes API calls the reconcile loop makes, on plain dicts.

Owned objects are written with server-side apply (field manager ``goodput-operator``, forced):
applying the full desired object every time is idempotent, so create, update and resume are the
same code path and a restarted operator converges without duplicates. Responses are read as raw
JSON (``_preload_content=False``) so the rest of the operator never sees the client's model types.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from goodput.api.llmdeployment import GROUP, PLURAL, VERSION
from goodput.operator.naming import FIELD_MANAGER

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
Obj = dict[str, Any]


def apply_body(obj: Mapping[str, Any]) -> bytes:
    """The apply body as UTF-8 JSON. The client's own ``json.dumps`` escapes a character outside
    the Basic Multilingual Plane (an emoji in a model's source, say) as a surrogate pair, which the
    API server's YAML decoder refuses with a 400; raw UTF-8 is what it expects. A lone surrogate
    cannot come back from the API server (it stores U+FFFD), and is written as ``?`` here."""
    return json.dumps(obj, ensure_ascii=False).encode("utf-8", "replace")


def rejected(err: ApiException) -> bool:
    """Whether the API server refused a write for its content (400 Bad Request, 422 Invalid):
    retrying the same object fails the same way, so the spec has to change."""
    return err.status in (400, 422)


# The resource (plural) of each kind the operator applies.
_PLURALS = {
    "Deployment": "deployments",
    "Service": "services",
    "ConfigMap": "configmaps",
    "ServiceAccount": "serviceaccounts",
    "Role": "roles",
    "RoleBinding": "rolebindings",
}


class StaleWrite(Exception):
    """A write was based on an older version of the object (HTTP 409): read again and retry."""


def _json(response: Any) -> Obj:
    data: Obj = json.loads(response.data)
    return data


class Kube:
    """Typed-client calls, dict in and dict out."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.rbac = client.RbacAuthorizationV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def apply(self, obj: Mapping[str, Any]) -> Obj:
        """Server-side apply an owned object (Deployment, Service, ConfigMap, or the router's
        ServiceAccount, Role and RoleBinding). The body is sent as UTF-8 bytes (``apply_body``),
        which the typed ``patch_namespaced_*`` methods refuse (they validate for dicts), so
        the request is built from the object's own apiVersion and kind."""
        meta, version = obj["metadata"], obj["apiVersion"]
        root = "/api/v1" if version == "v1" else f"/apis/{version}"
        method, url, headers, body, post = self.api.param_serialize(
            method="PATCH",
            resource_path=f"{root}/namespaces/{{namespace}}/{_PLURALS[obj['kind']]}/{{name}}",
            path_params={"namespace": meta["namespace"], "name": meta["name"]},
            query_params=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            header_params={"Content-Type": APPLY, "Accept": "application/json"},
            body=apply_body(obj),
            auth_settings=["BearerToken"],
        )
        response: Any = self.api.call_api(method, url, headers, body, post)
        response.read()
        if not 200 <= response.status <= 299:
            raise ApiException.from_response(http_resp=response, body=None, data=None)
        return _json(response)

    def list_nodes(self) -> list[Obj]:
        items: list[Obj] = _json(self.core.list_node(_preload_content=False))["items"]
        return items

    def list_pods(self, namespace: str, selector: str) -> list[Obj]:
        response = self.core.list_namespaced_pod(
            namespace, label_selector=selector, _preload_content=False
        )
        items: list[Obj] = _json(response)["items"]
        return items

    def list_all_pods(self) -> list[Obj]:
        """Every pod of the cluster (``goodput operator render``: which GPUs are held)."""
        items: list[Obj] = _json(self.core.list_pod_for_all_namespaces(_preload_content=False))[
            "items"
        ]
        return items

    def list_deployments(self, namespace: str, selector: str) -> list[Obj]:
        response = self.apps.list_namespaced_deployment(
            namespace, label_selector=selector, _preload_content=False
        )
        items: list[Obj] = _json(response)["items"]
        return items

    def get_secret(self, namespace: str, name: str) -> Obj | None:
        """A Secret, or None where there is none (only ``spec.gateway.tls``'s is read: to tell
        the status what is wrong with it)."""
        try:
            return _json(self.core.read_namespaced_secret(name, namespace, _preload_content=False))
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def delete_deployment(self, namespace: str, name: str) -> None:
        """Delete a Deployment; its ReplicaSets and pods are garbage-collected after it. Gone
        already is fine."""
        try:
            self.apps.delete_namespaced_deployment(
                name, namespace, propagation_policy="Background", _preload_content=False
            )
        except ApiException as err:
            if err.status != 404:
                raise

    def delete(self, kind: str, namespace: str, name: str) -> None:
        """Delete an owned object of ``kind`` (what ``apply`` writes); gone already is fine."""
        remove = {
            "Deployment": self.apps.delete_namespaced_deployment,
            "Service": self.core.delete_namespaced_service,
            "ConfigMap": self.core.delete_namespaced_config_map,
            "ServiceAccount": self.core.delete_namespaced_service_account,
            "Role": self.rbac.delete_namespaced_role,
            "RoleBinding": self.rbac.delete_namespaced_role_binding,
        }[kind]
        try:
            remove(name, namespace, propagation_policy="Background", _preload_content=False)
        except ApiException as err:
            if err.status != 404:
                raise

    def get_llmdeployment(self, namespace: str, name: str) -> Obj | None:
        try:
            return _json(
                self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name, _preload_content=False
                )
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def scale_llmdeployment(self, namespace: str, name: str, replicas: int) -> None:
        """Set ``spec.replicas`` through the scale subresource, as an HPA or ``kubectl scale``
        would: the autoscaler is one client of it among others."""
        self.custom.patch_namespaced_custom_object_scale(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"spec": {"replicas": replicas}},
            _content_type=MERGE,
            _preload_content=False,
        )

    def annotate_llmdeployment(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> None:
        """Merge ``annotations`` into the LLMDeployment's (None removes one)."""
        self.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            namespace,
            PLURAL,
            name,
            {"metadata": {"annotations": dict(annotations)}},
            _content_type=MERGE,
            _preload_content=False,
        )

    def post_event(
        self, involved: Mapping[str, Any], warning: bool, reason: str, message: str
    ) -> None:
        """A core/v1 Event about ``involved`` (an object as read), from outside kopf's handlers
        (kopf's own ``kopf.event`` needs a handler's context)."""
        meta = involved["metadata"]
        stamp = datetime.now(UTC)
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "type": "Warning" if warning else "Normal",
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "reportingComponent": FIELD_MANAGER,
            "firstTimestamp": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lastTimestamp": stamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "count": 1,
        }
        # A dict is what the client serialises anyway; its model type adds nothing here.
        body: Any = event
        self.core.create_namespaced_event(meta["namespace"], body, _preload_content=False)

    def patch_llmdeployment_status(
        self, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None
    ) -> None:
        """Merge-patch the status; with ``resource_version``, only if the object is unchanged
        since it was read (else ``StaleWrite``)."""
        body: Obj = {"status": dict(status)}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                body,
                _content_type=MERGE,
                _preload_content=False,
            )
        except ApiException as err:
            if err.status == 409:
                raise StaleWrite(f"{namespace}/{name} changed since it was read") from err
            raise
