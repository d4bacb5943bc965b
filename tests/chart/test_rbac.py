"""The chart grants exactly what the operator declares in goodput/operator/permissions.py."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from goodput.operator.permissions import RULES, TLS_SECRETS

from .helm_chart import ChartRenderer

Grant = tuple[str, str, str]  # (apiGroup, resource, verb)
CLUSTER_SCOPED = {"nodes", "namespaces", "customresourcedefinitions", "clusterkopfpeerings"}


def grants(rules: Iterable[dict[str, Any]]) -> set[Grant]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def declared() -> set[Grant]:
    return grants(rule.policy_rule() for rule in RULES)


def test_cluster_wide_cluster_role_is_exactly_the_declared_permissions(
    chart: ChartRenderer,
) -> None:
    r = chart.render()
    assert not r.all("Role")
    assert grants(r.one("ClusterRole")["rules"]) == declared()
    binding = r.one("ClusterRoleBinding")
    assert binding["roleRef"]["name"] == r.one("ClusterRole")["metadata"]["name"]
    sa = r.one("ServiceAccount")["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}
    ]


def test_single_namespace_moves_namespaced_permissions_into_a_role(chart: ChartRenderer) -> None:
    r = chart.render({"operator": {"watchNamespace": "team-a"}})
    role = r.one("Role")
    assert role["metadata"]["namespace"] == "team-a"
    assert r.one("RoleBinding")["metadata"]["namespace"] == "team-a"
    cluster = grants(r.one("ClusterRole")["rules"])
    namespaced = grants(role["rules"])
    assert {resource for _, resource, _ in cluster} <= CLUSTER_SCOPED
    assert not {resource for _, resource, _ in namespaced} & CLUSTER_SCOPED
    # Namespaced operators peer through KopfPeering only; nothing beyond the declared list.
    expected = {g for g in declared() if g[1] != "clusterkopfpeerings"}
    assert cluster | namespaced == expected


def test_no_rbac_when_disabled(chart: ChartRenderer) -> None:
    r = chart.render({"rbac": {"create": False}})
    assert not {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"} & set(r.kinds())


def test_reading_tls_secrets_is_opt_in_in_either_scope(chart: ChartRenderer) -> None:
    secret = grants([TLS_SECRETS.policy_rule()])
    wide = chart.render({"rbac": {"readTLSSecrets": True}})
    assert grants(wide.one("ClusterRole")["rules"]) == declared() | secret
    one = chart.render({"rbac": {"readTLSSecrets": True}, "operator": {"watchNamespace": "a"}})
    assert secret <= grants(one.one("Role")["rules"])
    assert not secret & grants(one.one("ClusterRole")["rules"])
