"""Install, upgrade and uninstall the chart on the real local control plane (marker e2e).

The chart's operator pods are simulated by kwok (no containers run), so the operator itself runs
as a local process with the chart's own arguments and the chart-created ServiceAccount's token
(see operator_process.py): missing RBAC verbs would break reconciliation here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from .helm_chart import CHART, REPO
from .operator_process import LocalOperator

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

RELEASE = "gp-e2e"
NAMESPACE = "goodput-e2e-chart"
WORKLOAD_NAMESPACE = "llm-e2e-chart"
FULLNAME = f"{RELEASE}-goodput"
OPERATOR = f"{FULLNAME}-operator"
EXAMPLE = REPO / "examples" / "llmdeployment.yaml"


def get(cluster: Any, *args: str) -> Any:
    raw = cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(raw) if raw.strip() else None


def wait_for(what: str, predicate: Any, timeout: float, diagnose: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(1)
    raise AssertionError(f"{what} not reached after {timeout}s\n{diagnose() if diagnose else ''}")


def available(obj: dict[str, Any] | None) -> bool:
    conditions = (obj or {}).get("status", {}).get("conditions", [])
    return any(c["type"] == "Available" and c["status"] == "True" for c in conditions)


@pytest.fixture(scope="module")
def release(cluster: Any) -> Iterator[Any]:
    """The chart installed with defaults (+ --wait: kwok makes the StatefulSet's pods Ready).

    The shared test cluster may already hold the CRDs, applied by other tests with kubectl; Helm v4
    server-side-applies the chart's CRDs and would report a field-manager conflict, so the install
    forces them (the chart's CRD is crds/ itself, through a link).
    """
    cluster.helm(
        "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--create-namespace",
        "--force-conflicts", "--wait", "--timeout", "3m",
    )  # fmt: skip
    try:
        yield cluster
    finally:
        cluster.helm("uninstall", RELEASE, "--namespace", NAMESPACE, check=False)
        cluster.kubectl("delete", "namespace", WORKLOAD_NAMESPACE, "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator(release: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalOperator]:
    cluster = release
    tmp = tmp_path_factory.mktemp("operator")
    local = LocalOperator.as_installed(cluster, OPERATOR, NAMESPACE, tmp, token_duration="2h")
    local.start()
    try:
        yield local
    finally:
        local.stop()


def test_install_creates_the_operator_and_keeps_it_least_privileged(release: Any) -> None:
    cluster = release
    sts = get(cluster, "statefulset", OPERATOR, "-n", NAMESPACE)
    assert sts["status"].get("readyReplicas") == 2
    pods = get(cluster, "pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=operator")
    indexes = sorted(p["metadata"]["labels"]["apps.kubernetes.io/pod-index"] for p in pods["items"])
    assert indexes == ["0", "1"], "each replica needs its own index: it is its peering priority"
    assert get(cluster, "clusterkopfpeering", FULLNAME) is not None
    assert get(cluster, "crd", "llmdeployments.goodput.dev") is not None
    sa = f"system:serviceaccount:{NAMESPACE}:{FULLNAME}"

    def can(*args: str) -> bool:
        out = cluster.kubectl("auth", "can-i", *args, f"--as={sa}", check=False)
        return str(out).strip() == "yes"

    assert can("patch", "llmdeployments.goodput.dev/status", "-n", WORKLOAD_NAMESPACE)
    assert can("create", "deployments.apps", "-n", WORKLOAD_NAMESPACE)
    assert can("watch", "nodes")
    assert not can("delete", "nodes")
    assert not can("get", "secrets", "-n", WORKLOAD_NAMESPACE)
    assert not can("create", "clusterrolebindings")


def test_example_reconciles_to_available_under_the_service_account(
    release: Any, operator: LocalOperator
) -> None:
    cluster = release
    cluster.kubectl("create", "namespace", WORKLOAD_NAMESPACE, check=False)
    cluster.kubectl("apply", "-n", WORKLOAD_NAMESPACE, "-f", str(EXAMPLE))
    name = yaml.safe_load(EXAMPLE.read_text())["metadata"]["name"]
    wait_for(
        f"LLMDeployment {name} Available",
        lambda: available(get(cluster, "llmd", name, "-n", WORKLOAD_NAMESPACE)),
        timeout=180,
        diagnose=lambda: (
            cluster.kubectl(
                "get", "llmd", name, "-n", WORKLOAD_NAMESPACE, "-o", "yaml", check=False
            )
            + "\noperator log:\n"
            + operator.tail()
        ),
    )
    log = operator.log.read_text(errors="replace")
    assert "Forbidden" not in log and " 403" not in log, operator.tail(80)
    metrics = operator.metrics()
    assert "goodput_operator_reconciliations_total{handler=" in metrics
    assert "goodput_operator_gpus_capacity{" in metrics


def test_upgrade_applies_changed_values(release: Any) -> None:
    cluster = release
    cluster.helm(
        "upgrade", RELEASE, str(CHART), "--namespace", NAMESPACE, "--reuse-values",
        "--set", "operator.replicas=1", "--set", "monitoring.dashboards.enabled=false",
        "--set", "operator.podAnnotations.example\\.com/owner=e2e", "--wait", "--timeout", "3m",
    )  # fmt: skip
    sts = get(cluster, "statefulset", OPERATOR, "-n", NAMESPACE)
    assert sts["spec"]["replicas"] == 1
    assert sts["spec"]["template"]["metadata"]["annotations"] == {"example.com/owner": "e2e"}
    assert get(cluster, "pdb", OPERATOR, "-n", NAMESPACE) is None, "HA off: no PDB"
    dashboards = get(cluster, "configmaps", "-n", NAMESPACE, "-l", "grafana_dashboard=1")
    assert dashboards["items"] == []
    history = json.loads(cluster.helm("history", RELEASE, "-n", NAMESPACE, "-o", "json"))
    assert [h["status"] for h in history] == ["superseded", "deployed"]


def test_uninstall_removes_the_release_but_keeps_crds_and_user_objects(
    release: Any, operator: LocalOperator
) -> None:
    cluster = release
    operator.stop()  # as the pods would be, before their permissions go
    cluster.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "2m")
    assert get(cluster, "statefulset", OPERATOR, "-n", NAMESPACE) is None
    assert get(cluster, "clusterrole", OPERATOR) is None
    assert get(cluster, "clusterkopfpeering", FULLNAME) is None
    for crd in (
        "llmdeployments.goodput.dev",
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    ):
        assert get(cluster, "crd", crd) is not None, f"{crd} must survive helm uninstall"
    name = yaml.safe_load(EXAMPLE.read_text())["metadata"]["name"]
    assert get(cluster, "llmd", name, "-n", WORKLOAD_NAMESPACE) is not None


def test_single_namespace_release_reconciles_with_a_role(
    cluster: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """operator.watchNamespace: the namespaced permissions come from a Role there, and suffice."""
    release, namespace, team = "gp-e2e-ns", "goodput-e2e-chart-ns", "team-e2e-chart"
    cluster.kubectl("create", "namespace", team, check=False)
    cluster.helm(
        "install", release, str(CHART), "--namespace", namespace, "--create-namespace",
        "--force-conflicts", "--set", f"operator.watchNamespace={team}",
        "--set", "operator.replicas=1", "--wait", "--timeout", "3m",
    )  # fmt: skip
    tmp = tmp_path_factory.mktemp("operator-ns")
    local: LocalOperator | None = None
    try:
        name = f"{release}-goodput"
        assert get(cluster, "role", f"{name}-operator", "-n", team) is not None
        assert get(cluster, "kopfpeering", name, "-n", team) is not None
        local = LocalOperator.as_installed(
            cluster, f"{name}-operator", namespace, tmp, token_duration="1h"
        )
        local.start()
        cluster.kubectl("apply", "-n", team, "-f", str(EXAMPLE))
        example = yaml.safe_load(EXAMPLE.read_text())["metadata"]["name"]
        operator = local
        wait_for(
            f"LLMDeployment {team}/{example} Available",
            lambda: available(get(cluster, "llmd", example, "-n", team)),
            timeout=180,
            diagnose=lambda: operator.tail(),
        )
        log = local.log.read_text(errors="replace")
        assert "Forbidden" not in log and " 403" not in log, local.tail(80)
    finally:
        if local is not None:
            local.stop()
        cluster.kubectl("delete", "-n", team, "-f", str(EXAMPLE), "--wait=false", check=False)
        cluster.helm("uninstall", release, "--namespace", namespace, check=False)
        cluster.kubectl("delete", "namespace", team, namespace, "--wait=false", check=False)
