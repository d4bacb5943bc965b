"""Every Kubernetes API permission the operator needs, in one list.

The Helm chart's ClusterRole is checked against ``RULES`` (``goodput operator rbac`` prints it),
so a new API call without a new rule here fails a test rather than a production cluster.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from goodput.api.llmdeployment import GROUP, PLURAL

READ = ("get", "list", "watch")
OWN = (*READ, "create", "update", "patch", "delete")


@dataclass(frozen=True)
class Rule:
    """One PolicyRule, with the reason it is needed."""

    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    why: str

    def policy_rule(self) -> dict[str, Any]:
        return {
            "apiGroups": list(self.api_groups),
            "resources": list(self.resources),
            "verbs": list(self.verbs),
        }


RULES: tuple[Rule, ...] = (
    Rule(
        (GROUP,),
        (PLURAL,),
        (*READ, "patch", "update"),
        "watch LLMDeployments; kopf keeps its handler progress in their annotations",
    ),
    Rule((GROUP,), (f"{PLURAL}/status",), ("get", "patch", "update"), "write status"),
    Rule(
        (GROUP,),
        (f"{PLURAL}/scale",),
        ("get", "patch", "update"),
        "the autoscaler moves spec.replicas through the scale subresource, as an HPA would",
    ),
    Rule(("apps",), ("deployments",), OWN, "the serving workload (server-side apply)"),
    Rule(("",), ("services", "configmaps"), OWN, "the endpoint and the gateway config"),
    Rule(
        ("",),
        ("serviceaccounts",),
        OWN,
        "the router's own identity (spec.routing)",
    ),
    Rule(
        ("rbac.authorization.k8s.io",),
        ("roles", "rolebindings"),
        OWN,
        "the router's read access to EndpointSlices, granted in its namespace",
    ),
    Rule(
        ("discovery.k8s.io",),
        ("endpointslices",),
        READ,
        "held so that it may grant it to the router (RBAC forbids granting more than one holds)",
    ),
    Rule(("",), ("nodes",), READ, "GPU inventory: products, memory, allocatable GPUs"),
    Rule(("",), ("pods",), READ, "which nodes each replica landed on; GPUs other pods hold"),
    Rule(("", "events.k8s.io"), ("events",), ("create", "patch"), "Kubernetes Events"),
    Rule(
        ("apiextensions.k8s.io",),
        ("customresourcedefinitions",),
        READ,
        "kopf discovers and re-scans watched resources",
    ),
    Rule(("",), ("namespaces",), READ, "kopf's namespace patterns (--namespace)"),
    Rule(
        ("kopf.dev",),
        ("clusterkopfpeerings", "kopfpeerings"),
        (*READ, "patch"),
        "peering between operator replicas (--peering)",
    ),
)


# Opt-in (the chart's ``rbac.readTLSSecrets``): reading Secrets by name in every watched
# namespace is a privilege a security review asks about, and all it buys is a status message;
# without it TLS works the same and a missing Secret shows as pods waiting in ContainerCreating.
TLS_SECRETS = Rule(
    ("",),
    ("secrets",),
    ("get",),
    "spec.gateway.tls: whether the named Secret exists and holds a usable certificate, for "
    "the status (never listed or watched; the pods it could mount one in are its already)",
)


def cluster_role(name: str = "goodput-operator", read_tls_secrets: bool = False) -> dict[str, Any]:
    """The ClusterRole granting ``RULES`` (and ``TLS_SECRETS`` when asked)."""
    rules = (*RULES, TLS_SECRETS) if read_tls_secrets else RULES
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "goodput"}},
        "rules": [rule.policy_rule() for rule in rules],
    }
