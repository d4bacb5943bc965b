"""Placement decisions on the real local control plane's heterogeneous simulated fleet.

The operator runs as a subprocess watching its own namespace; the real kube-scheduler binds the
pods. The default fleet (goodput/dev/fleets/default.yaml) has H100 and H200 (8 per node), A100
40 GB (8), L4 and A10G (4) nodes over three zones.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import yaml

if TYPE_CHECKING:
    from goodput.dev.cluster import LocalCluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
pytest.importorskip("goodput.dev.cluster", reason="goodput.dev.cluster is not available yet")

CRD = Path(__file__).resolve().parents[2] / "crds" / "llmdeployment.yaml"
T = TypeVar("T")


def wait_for(probe: Callable[[], T | None], timeout: float = 120, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def ns(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A namespace with its own operator process."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/llmdeployments.goodput.dev", "--timeout=60s"
    )
    name = f"place-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    log = tmp_path_factory.mktemp("placement") / "operator.log"
    argv = [sys.executable, "-m", "goodput", "operator", "run", "--kubeconfig",
            str(cluster.kubeconfig), "--namespace", name, "--standalone"]  # fmt: skip
    # kopf's own login reads $KUBECONFIG, not --kubeconfig.
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
    yield name
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    sys.stderr.write(f"operator log: {log}\n")
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def apply(cluster: LocalCluster, ns: str, name: str, **spec: Any) -> None:
    doc = {
        "apiVersion": "goodput.dev/v1alpha1",
        "kind": "LLMDeployment",
        "metadata": {"name": name},
        "spec": {"slo": {"ttftMs": 2000, "tpotMs": 100}, **spec},
    }
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(doc))


def placed(cluster: LocalCluster, ns: str, name: str) -> dict[str, Any] | None:
    """The Placed condition once the operator has written one."""
    out = cluster.kubectl("get", "llmdeployment", name, "-n", ns, "-o", "json", check=False)
    if not out.strip():
        return None
    conditions = (json.loads(out).get("status") or {}).get("conditions") or []
    return next((c for c in conditions if c["type"] == "Placed"), None)


def test_the_solver_chooses_gpus_and_the_scheduler_binds_pods_there(
    cluster: LocalCluster, ns: str
) -> None:
    apply(
        cluster, ns, "small",
        model={"name": "meta-llama/Meta-Llama-3-8B-Instruct", "architecture": "llama-3-8b",
               "maxModelLen": 4096},
        replicas=2, resources={"gpuTypes": ["L4"]},
    )  # fmt: skip
    cond = wait_for(lambda: placed(cluster, ns, "small"), what="Placed")
    assert cond["status"] == "True", cond
    assert "NVIDIA-L4 first in gpuTypes" in cond["message"] and "spread over" in cond["message"]
    selector = "goodput.dev/deployment=small"

    def bound() -> list[str] | None:
        out = json.loads(cluster.kubectl("get", "pods", "-n", ns, "-l", selector, "-o", "json"))
        nodes = [p["spec"].get("nodeName") for p in out["items"]]
        return nodes if len(nodes) == 2 and all(nodes) else None

    for node in wait_for(bound, what="two bound pods"):
        labels = json.loads(cluster.kubectl("get", "node", node, "-o", "json"))["metadata"]
        assert labels["labels"]["nvidia.com/gpu.product"] == "NVIDIA-L4"


def test_a_model_no_node_holds_gets_a_multi_node_plan(cluster: LocalCluster, ns: str) -> None:
    apply(
        cluster, ns, "huge",
        model={"name": "meta-llama/Llama-3.1-405B-Instruct", "architecture": "llama-3.1-405b",
               "maxModelLen": 4096},
        slo={"ttftMs": 20000, "tpotMs": 400}, resources={"gpuTypes": ["H100"]},
    )  # fmt: skip
    cond = wait_for(lambda: placed(cluster, ns, "huge"), what="Placed")
    assert (cond["status"], cond["reason"]) == ("False", "MultiNodeReplica"), cond
    assert "pipeline 2 across nodes" in cond["message"]


def test_a_fleet_too_small_says_so(cluster: LocalCluster, ns: str) -> None:
    apply(
        cluster, ns, "crowd",
        model={"name": "meta-llama/Meta-Llama-3-8B-Instruct", "architecture": "llama-3-8b",
               "maxModelLen": 4096},
        replicas=20, resources={"gpuTypes": ["H200"]},
    )  # fmt: skip
    cond = wait_for(lambda: placed(cluster, ns, "crowd"), what="Placed")
    assert (cond["status"], cond["reason"]) == ("False", "InsufficientGPUs"), cond
    assert "of at least 20 replicas: no room for another replica" in cond["message"]


def test_memory_refusal_names_the_constraint(cluster: LocalCluster, ns: str) -> None:
    apply(
        cluster, ns, "tight",
        model={"name": "meta-llama/Meta-Llama-3-70B-Instruct", "architecture": "llama-3-70b",
               "maxModelLen": 4096},
        resources={"gpuTypes": ["A10G"], "parallelism": {"pipeline": 1}},
    )  # fmt: skip
    cond = wait_for(lambda: placed(cluster, ns, "tight"), what="Placed")
    assert (cond["status"], cond["reason"]) == ("False", "InsufficientGPUMemory"), cond
    assert "no GPU type in [A10G] can hold" in cond["message"]
