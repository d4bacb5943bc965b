"""Names, labels and owner references of the objects an LLMDeployment owns.

Every owned object carries the recommended ``app.kubernetes.io/*`` labels plus
``goodput.dev/deployment`` (the LLMDeployment's name), which is also the Service's selector: one
key, unique per namespace because LLMDeployment names are. Each replica runs as its own Deployment
``NAME-r<id>`` whose pods also carry ``goodput.dev/replica: <id>``; the id is the placement's
replica index, stable while the replica lives (scaling down removes the highest ids, or those
the autoscaler names in ``goodput.dev/drain-first``).
"""

from __future__ import annotations

from typing import Any

from goodput.api.llmdeployment import API_VERSION, KIND

LABEL_DEPLOYMENT = "goodput.dev/deployment"
LABEL_REPLICA = "goodput.dev/replica"
#: On the router's objects and pods, instead of LABEL_DEPLOYMENT (which selects the gateways).
LABEL_ROUTER = "goodput.dev/router"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_COMPONENT = "app.kubernetes.io/component"
MANAGED_BY = "goodput"
APP_NAME = "goodput-llm"
ANNOTATION_CONFIG_HASH = "goodput.dev/config-hash"
#: On each replica Deployment: the node its pod is pinned to, when the solver chose one.
ANNOTATION_NODE = "goodput.dev/node"
#: On the LLMDeployment, written by the autoscaler before it scales down: the replica ids to
#: remove first (least work in flight first), comma-separated; honoured only while more replicas
#: exist than the spec asks for.
ANNOTATION_DRAIN_FIRST = "goodput.dev/drain-first"
FIELD_MANAGER = "goodput-operator"


def labels(name: str, component: str = "server") -> dict[str, str]:
    """Labels of every object owned by the LLMDeployment ``name``."""
    return {
        LABEL_NAME: APP_NAME,
        LABEL_INSTANCE: name,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_COMPONENT: component,
        LABEL_DEPLOYMENT: name,
    }


def selector_labels(name: str) -> dict[str, str]:
    """All serving pods of the LLMDeployment (the Service's selector)."""
    return {LABEL_DEPLOYMENT: name}


def replica_labels(name: str, replica: int) -> dict[str, str]:
    """The pods of one replica (its Deployment's selector)."""
    return {LABEL_DEPLOYMENT: name, LABEL_REPLICA: str(replica)}


def selector_string(name: str) -> str:
    """The selector as ``status.selector`` publishes it for the scale subresource."""
    return ",".join(f"{k}={v}" for k, v in selector_labels(name).items())


def replica_workload_name(name: str, replica: int) -> str:
    return f"{name}-r{replica}"


def replica_workloads_selector(name: str) -> str:
    """The label selector of the LLMDeployment's replica Deployments."""
    return f"{LABEL_DEPLOYMENT}={name},{LABEL_REPLICA}"


def service_name(name: str) -> str:
    return name


def config_map_name(name: str) -> str:
    return f"{name}-gateway"


def owner_reference(name: str, uid: str) -> dict[str, Any]:
    """A controller owner reference: garbage collection deletes owned objects with the parent."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def object_meta(name: str, namespace: str, owner: str, owner_uid: str) -> dict[str, Any]:
    """Metadata of an owned object named ``name``."""
    return {
        "name": name,
        "namespace": namespace,
        "labels": labels(owner),
        "ownerReferences": [owner_reference(owner, owner_uid)],
    }
