"""The Service in front of an LLMDeployment's gateways: the OpenAI endpoint clients call."""

from __future__ import annotations

from typing import Any

from goodput.api.llmdeployment import LLMDeployment
from goodput.operator import naming

SERVICE_PORT = 80
#: With ``spec.gateway.tls``: HTTPS's own port, so that ``https://NAME.NAMESPACE.svc`` works.
SERVICE_TLS_PORT = 443
GATEWAY_PORT_NAME = "http"


def _tls(obj: LLMDeployment) -> bool:
    return obj.spec.gateway.tls is not None


def service(obj: LLMDeployment) -> dict[str, Any]:
    """A ClusterIP Service on port 80 (443 with TLS): to the router's pods when the spec needs
    one (``needs_router``: affinity, or holding requests at zero replicas), else straight to
    the gateways."""
    meta = obj.metadata
    routed = obj.spec.needs_router
    tls = _tls(obj)
    spec: dict[str, Any] = {
        "type": "ClusterIP",
        "selector": (
            {naming.LABEL_ROUTER: meta.name} if routed else naming.selector_labels(meta.name)
        ),
        "ports": [
            {
                "name": "https" if tls else "http",
                "port": SERVICE_TLS_PORT if tls else SERVICE_PORT,
                "targetPort": GATEWAY_PORT_NAME,
                "protocol": "TCP",
                "appProtocol": "https" if tls else "http",
            }
        ],
        "sessionAffinity": "None",
    }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": naming.object_meta(
            naming.service_name(meta.name), meta.namespace, meta.name, meta.uid
        ),
        "spec": spec,
    }


def endpoint(obj: LLMDeployment) -> str:
    """The OpenAI base URL inside the cluster."""
    name, ns = naming.service_name(obj.metadata.name), obj.metadata.namespace
    if _tls(obj):
        return f"https://{name}.{ns}.svc:{SERVICE_TLS_PORT}/v1"
    return f"http://{name}.{ns}.svc:{SERVICE_PORT}/v1"
