"""The chart's operator really running: installed from the locally built image onto the real
node, two replicas of which one is active, reconciling an LLMDeployment (marker e2e).

The operator pods reach the API server at the node's bridge address (no kube-proxy routes the
``kubernetes`` Service's ClusterIP here: docs/dev-cluster.md), set through the chart's
``operator.env`` as a kube-proxy-free cluster does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from goodput.dev import images
from goodput.dev.fleet import REAL_NODE_LABEL as NODE_LABEL
from goodput.dev.fleet import Fleet

from .helm_chart import CHART, REPO
from .test_install_e2e import available, get, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

RELEASE = "gp-real"
NAMESPACE = "goodput-real-chart"
TEAM = "team-real-chart"
OPERATOR = f"{RELEASE}-goodput-operator"
EXAMPLE = REPO / "examples" / "llmdeployment.yaml"


@pytest.fixture(scope="module")
def release(cluster: Any) -> Iterator[Any]:
    spec = Fleet.load("default").real_node
    assert spec is not None
    node = cluster.real_node(spec)
    repository, tag = images.GOODPUT.reference.rsplit(":", 1)
    values = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "IfNotPresent"},
        "operator": {
            "replicas": 2,
            "watchNamespace": TEAM,
            "nodeSelector": {NODE_LABEL: "true"},
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
            "env": [
                {"name": "KUBERNETES_SERVICE_HOST", "value": node.network.address},
                {"name": "KUBERNETES_SERVICE_PORT", "value": str(cluster.ports.apiserver)},
            ],
        },
        "serving": {
            "engineImage": images.ENGINE.reference,
            "engineCPU": node.operator_env()["GOODPUT_ENGINE_CPU"],
            "engineMemoryGiB": int(node.operator_env()["GOODPUT_ENGINE_MEMORY_GIB"]),
        },
    }
    values_file = node.dir / "chart-values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    cluster.kubectl("create", "namespace", TEAM, check=False)
    cluster.helm(
        "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--create-namespace",
        "--force-conflicts", "-f", str(values_file), "--wait", "--timeout", "4m",
    )  # fmt: skip
    try:
        yield cluster
    finally:
        cluster.kubectl("delete", "-n", TEAM, "-f", str(EXAMPLE), "--wait=false", check=False)
        cluster.helm("uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", check=False)
        cluster.kubectl("delete", "namespace", TEAM, NAMESPACE, "--wait=false", check=False)


def _operator_pods(cluster: Any) -> list[dict[str, Any]]:
    pods = get(cluster, "pods", "-n", NAMESPACE, "-l", "app.kubernetes.io/component=operator")
    return list(pods["items"])


def test_both_operator_replicas_run_ready_on_the_real_node(release: Any) -> None:
    cluster = release
    pods = _operator_pods(cluster)
    assert len(pods) == 2
    for pod in pods:
        assert pod["metadata"]["labels"].get(NODE_LABEL) is None  # a node label, not a pod's
        node = get(cluster, "node", pod["spec"]["nodeName"])
        assert node["metadata"]["labels"].get(NODE_LABEL) == "true", pod["spec"]["nodeName"]
        (status,) = pod["status"]["containerStatuses"]
        assert status["ready"], status
        assert status["imageID"], "the container really ran an image"


def test_one_replica_reconciles_the_example(release: Any) -> None:
    cluster = release
    cluster.kubectl("apply", "-n", TEAM, "-f", str(EXAMPLE))
    name = yaml.safe_load(EXAMPLE.read_text())["metadata"]["name"]

    def logs() -> dict[str, str]:
        return {
            p["metadata"]["name"]: cluster.kubectl(
                "logs", "-n", NAMESPACE, p["metadata"]["name"], check=False
            )
            for p in _operator_pods(cluster)
        }

    wait_for(
        f"LLMDeployment {TEAM}/{name} Available",
        lambda: available(get(cluster, "llmd", name, "-n", TEAM)),
        timeout=240,
        diagnose=lambda: json.dumps(logs(), indent=1)[-6000:],
    )
    # kopf peering: the replica with the highest priority (StatefulSet index) acts, the other
    # stands by; only the active one's log mentions the LLMDeployment.
    acted = [pod for pod, text in logs().items() if f"{TEAM}/{name}" in text]
    assert acted == [f"{OPERATOR}-1"], logs()
