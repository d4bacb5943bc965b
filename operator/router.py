"""The cluster router of an LLMDeployment whose ``spec.routing`` asks for one (``prefixAware`` or
``sessionAffinity``), or whose autoscaling may take it to zero replicas (the router holds the
requests while a replica starts: docs/autoscaling.md): one router per LLMDeployment, so it is
owned, scaled and garbage-collected with it and never sees another deployment's traffic.

Objects, all owned by the LLMDeployment:

- ``NAME-router`` ConfigMap: the ``RouterConfig`` (``goodput.api.router_config``);
- ``NAME-router`` ServiceAccount, Role (read EndpointSlices) and RoleBinding: the router's only
  access to the API;
- ``NAME-router`` Deployment: ``goodput route`` pods;
- ``NAME-replicas`` Service: selects the replicas' gateways; the router discovers them through its
  EndpointSlices (ready ones receive, terminating ones drain);
- with ``spec.routing.cascade``, one ``NAME-cascade-I`` Service per other LLMDeployment of the
  cascade, selecting its gateways: this router fronts them all under this deployment's model
  name (docs/cascade.md).

With ``spec.gateway.tls`` the router serves HTTPS from the deployment's TLS Secret and dials the
gateways over HTTPS, verifying them by the Service's name (``operator/tls.py``).

The deployment's own Service (``NAME``, what clients call) then selects the router pods instead
of the gateways (``service.service``).
"""

from __future__ import annotations

import json
from typing import Any

from goodput.api.llmdeployment import LLMDeployment
from goodput.api.router_config import RouterConfig
from goodput.operator import naming, tls
from goodput.operator.gateway_config import config_hash
from goodput.operator.service import GATEWAY_PORT_NAME
from goodput.operator.settings import WorkloadSettings
from goodput.operator.workload import (
    GATEWAY_ADMIN_PORT,
    GATEWAY_ADMIN_PORT_NAME,
    GATEWAY_PORT,
    container_security_context,
    http_probe,
)

ROUTER_PORT = 8090
ROUTER_PORT_NAME = GATEWAY_PORT_NAME  # the probes name the port alike
CONFIG_DIR = "/etc/goodput"
CONFIG_FILE = "router.json"
COMPONENT = "router"
ROUTER_APP_NAME = "goodput-router"
RUN_AS_USER = 65532


def router_name(name: str) -> str:
    return f"{name}-router"


def replicas_service_name(name: str) -> str:
    return f"{name}-replicas"


MAX_CASCADE_MODELS = 8  # CascadeSpec.models' bound: the Services that may need deleting


def cascade_service_name(name: str, index: int) -> str:
    """The Service selecting the gateways of another deployment of ``name``'s cascade."""
    return f"{name}-cascade-{index}"


def _cascade(obj: LLMDeployment) -> dict[str, Any] | None:
    """``spec.routing.cascade`` as the router's: each model's replicas from its own Service
    (this deployment's from ``NAME-replicas``, another's from a ``NAME-cascade-I`` Service that
    selects its gateways), and the name its requests must carry."""
    cascade, name = obj.spec.routing.cascade, obj.metadata.name
    if cascade is None:
        return None
    models = []
    for i, member in enumerate(cascade.models):
        own = member.deployment == name
        service = replicas_service_name(name) if own else cascade_service_name(name, i)
        models.append(
            {
                "name": member.deployment,
                "model": member.model or obj.spec.model.name,
                "qualityKey": member.quality_key,
                "multimodal": member.multimodal,
                "tpotS": None if member.tpot_ms is None else member.tpot_ms / 1000.0,
                "discovery": _discovery(obj, service),
            }
        )
    return {
        "models": models,
        "modelName": obj.spec.model.name,
        "maxLargeShare": cascade.max_large_share,
        "minWinRate": cascade.min_win_rate,
        "windowRequests": cascade.window_requests,
    }


def _discovery(obj: LLMDeployment, service: str) -> dict[str, str]:
    return {
        "namespace": obj.metadata.namespace,
        "service": service,
        "portName": GATEWAY_PORT_NAME,
        "loadPortName": GATEWAY_ADMIN_PORT_NAME,
    }


def pod_labels(name: str) -> dict[str, str]:
    """The router pods' labels: no ``goodput.dev/deployment`` (that selects the gateways, and
    marks the replica Deployments the operator counts), ``goodput.dev/router`` instead."""
    labels = naming.labels(name, component=COMPONENT)
    labels.pop(naming.LABEL_DEPLOYMENT)
    labels[naming.LABEL_NAME] = ROUTER_APP_NAME  # what the chart's NetworkPolicy lets in
    labels[naming.LABEL_ROUTER] = name
    return labels


def _meta(name: str, obj: LLMDeployment) -> dict[str, Any]:
    meta = naming.object_meta(name, obj.metadata.namespace, obj.metadata.name, obj.metadata.uid)
    meta["labels"] = pod_labels(obj.metadata.name)
    return meta


def router_config(obj: LLMDeployment, settings: WorkloadSettings | None = None) -> RouterConfig:
    """``spec.routing`` as the router's config: the stages it asks for, discovery of the
    replicas' Service, and the hold of requests while no replica is ready (scale from zero)."""
    settings = settings or WorkloadSettings()
    routing, name = obj.spec.routing, obj.metadata.name
    scorers: list[dict[str, Any]] = []
    if routing.prefix_aware:
        scorers.append({"type": "prefix-cache", "weight": 3.0})
    if routing.session_affinity:
        scorers.append({"type": "session-affinity", "weight": 3.0})
    if obj.spec.lora_capacity is not None:
        # Above prefix and session affinity: a request elsewhere costs its adapter's load.
        scorers.append({"type": "adapter-affinity", "weight": 4.0})
    scorers += [{"type": "slo-headroom", "weight": 1.0}, {"type": "least-load", "weight": 1.0}]
    upstream_tls = None
    if tls.secret_name(obj) is not None:
        upstream_tls = {"caFile": tls.CA_FILE, "serverName": tls.server_name(obj)}
    cascade = _cascade(obj)
    return RouterConfig.model_validate(
        {
            "name": name,
            "upstreamTls": upstream_tls,
            # With a cascade, this deployment's replicas are one of its models (when listed).
            "discovery": None if cascade else _discovery(obj, replicas_service_name(name)),
            "cascade": cascade,
            "scorers": scorers,
            "boundedLoad": routing.router.bounded_load,
            "prefix": {"blockChars": routing.router.block_chars},
            "flow": {"maxQueue": routing.router.max_queue},
            "hold": {"maxQueue": settings.router_hold_queue, "maxWaitS": settings.router_hold_s},
        }
    )


def config_map(obj: LLMDeployment, settings: WorkloadSettings | None = None) -> dict[str, Any]:
    document = router_config(obj, settings).model_dump(by_alias=True, exclude_defaults=True)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(router_name(obj.metadata.name), obj),
        "data": {CONFIG_FILE: json.dumps(document, indent=2, sort_keys=True)},
    }


def replicas_service(
    obj: LLMDeployment, name: str | None = None, selects: str | None = None
) -> dict[str, Any]:
    """Headless: nobody connects to its address; it exists for its EndpointSlices. The
    gateways' admin port is listed too: the router reads load reports there, keyless and in
    plain HTTP whatever the API port asks. ``selects``: another deployment's gateways (a
    cascade's model), under the Service ``name``; owned by this deployment either way."""
    ports: list[dict[str, Any]] = [
        {
            "name": GATEWAY_PORT_NAME,
            "port": GATEWAY_PORT,
            "targetPort": GATEWAY_PORT_NAME,
            "protocol": "TCP",
            "appProtocol": "https" if tls.secret_name(obj) else "http",
        },
        {
            "name": GATEWAY_ADMIN_PORT_NAME,
            "port": GATEWAY_ADMIN_PORT,
            "targetPort": GATEWAY_ADMIN_PORT_NAME,
            "protocol": "TCP",
            "appProtocol": "http",
        },
    ]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": naming.object_meta(
            name or replicas_service_name(obj.metadata.name),
            obj.metadata.namespace,
            obj.metadata.name,
            obj.metadata.uid,
        ),
        "spec": {
            "clusterIP": "None",
            "selector": naming.selector_labels(selects or obj.metadata.name),
            "publishNotReadyAddresses": False,
            "ports": ports,
        },
    }


def rbac(obj: LLMDeployment) -> list[dict[str, Any]]:
    """ServiceAccount, Role and RoleBinding: read the namespace's EndpointSlices, nothing else."""
    name = router_name(obj.metadata.name)
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(name, obj)}
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _meta(name, obj),
        "rules": [
            {
                "apiGroups": ["discovery.k8s.io"],
                "resources": ["endpointslices"],
                "verbs": ["get", "list", "watch"],
            }
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _meta(name, obj),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": obj.metadata.namespace}],
    }
    return [account, role, binding]


def deployment(obj: LLMDeployment, settings: WorkloadSettings) -> dict[str, Any]:
    """``goodput route`` pods: no GPU, a small footprint, restricted security, spread over
    nodes; the config's hash rolls them when ``spec.routing`` changes."""
    name = obj.metadata.name
    cm = config_map(obj, settings)
    env: list[dict[str, Any]] = [{"name": "HOME", "value": "/tmp"}]
    if settings.pod_api_server:
        host, _, port = settings.pod_api_server.rpartition(":")
        env += [
            {"name": "KUBERNETES_SERVICE_HOST", "value": host},
            {"name": "KUBERNETES_SERVICE_PORT", "value": port},
        ]
    container = {
        "name": "router",
        "image": obj.spec.gateway.image or settings.gateway_image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": [
            "goodput",
            "route",
            "--config",
            f"{CONFIG_DIR}/{CONFIG_FILE}",
            "--host",
            "0.0.0.0",
            "--port",
            str(ROUTER_PORT),
        ],
        "env": env,
        "ports": [{"name": ROUTER_PORT_NAME, "containerPort": ROUTER_PORT, "protocol": "TCP"}],
        # Until the server listens (importing the client libraries takes a while on a busy
        # node): liveness must not kill a router that is still starting.
        "startupProbe": http_probe("/healthz", period=2, failures=90),
        "readinessProbe": http_probe("/readyz", period=2, failures=2),
        "livenessProbe": http_probe("/healthz", period=10, failures=6),
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "512Mi"},
        },
        "securityContext": container_security_context(read_only_root=True),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": router_name(name)}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}},
    ]
    if (secret := tls.secret_name(obj)) is not None:
        tls.serve(container, volumes, secret)
    labels = pod_labels(name)
    template_spec: dict[str, Any] = {
        "serviceAccountName": router_name(name),
        "automountServiceAccountToken": True,  # it reads EndpointSlices
        "enableServiceLinks": False,
        "containers": [container],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": RUN_AS_USER,
            "runAsGroup": RUN_AS_USER,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        # In-flight streams finish: the router never cuts a relayed stream, and its server
        # waits for them on SIGTERM.
        "terminationGracePeriodSeconds": 60,
        "topologySpreadConstraints": [
            {
                "maxSkew": 1,
                "topologyKey": "kubernetes.io/hostname",
                "whenUnsatisfiable": "ScheduleAnyway",
                "labelSelector": {"matchLabels": {naming.LABEL_ROUTER: name}},
            }
        ],
        "volumes": volumes,
    }
    if settings.router_node_selector:
        template_spec["nodeSelector"] = dict(settings.router_node_selector)
    if settings.router_tolerations:
        template_spec["tolerations"] = [dict(t) for t in settings.router_tolerations]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(router_name(name), obj),
        "spec": {
            "replicas": obj.spec.routing.router.replicas,
            "selector": {"matchLabels": {naming.LABEL_ROUTER: name}},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "revisionHistoryLimit": 3,
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        naming.ANNOTATION_CONFIG_HASH: config_hash(*cm["data"].values())
                    },
                },
                "spec": template_spec,
            },
        },
    }


def objects(obj: LLMDeployment, settings: WorkloadSettings) -> list[dict[str, Any]]:
    """Everything the router needs, in apply order (access before the pods that use it)."""
    name = obj.metadata.name
    cascade = obj.spec.routing.cascade
    others = [
        replicas_service(obj, cascade_service_name(name, i), m.deployment)
        for i, m in enumerate(cascade.models if cascade is not None else ())
        if m.deployment != name
    ]
    return [
        config_map(obj, settings),
        *rbac(obj),
        replicas_service(obj),
        *others,
        deployment(obj, settings),
    ]


#: (kind, name of) each router object, for deleting them when routing no longer asks for one.
def object_keys(name: str) -> list[tuple[str, str]]:
    return [
        ("Deployment", router_name(name)),
        ("Service", replicas_service_name(name)),
        *(("Service", cascade_service_name(name, i)) for i in range(MAX_CASCADE_MODELS)),
        ("RoleBinding", router_name(name)),
        ("Role", router_name(name)),
        ("ServiceAccount", router_name(name)),
        ("ConfigMap", router_name(name)),
    ]
