"""The operator against the real local control plane: CRD validation by the API server, pods
bound by the real kube-scheduler to simulated GPU nodes, garbage collection by the real
controller manager. The operator runs as a subprocess, as in production.

The tests share one namespace and one operator process and run in file order (a scenario).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from goodput.dev.stack import apply_crds

from .operator_process import OperatorProcess
from .waiting import wait_for

if TYPE_CHECKING:
    from goodput.dev.cluster import LocalCluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CRD = ROOT / "crds" / "llmdeployment.yaml"
H100 = "NVIDIA-H100-80GB-HBM3"


@pytest.fixture(scope="module")
def ns(cluster: LocalCluster) -> Iterator[str]:
    apply_crds(cluster, [CRD])
    name = f"op-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", name)
    wait_for(
        lambda: "default" in cluster.kubectl("get", "serviceaccounts", "-n", name, check=False),
        what="the namespace's default service account",
    )
    cluster.kubectl("create", "secret", "generic", "hf-token", "-n", name, "--from-literal=token=x")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def operator(
    cluster: LocalCluster, ns: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with OperatorProcess(cluster.kubeconfig, ns, log) as proc:
        yield proc


def get(cluster: LocalCluster, ns: str, *what: str) -> Any:
    out = cluster.kubectl("get", *what, "-n", ns, "-o", "json", check=False)
    return json.loads(out) if out.strip() else None


def llmd(cluster: LocalCluster, ns: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = get(cluster, ns, "llmdeployment", name)
    return obj


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next(
        (c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), None
    )


def phase_is(cluster: LocalCluster, ns: str, name: str, phase: str) -> Callable[[], bool]:
    return lambda: (llmd(cluster, ns, name).get("status") or {}).get("phase") == phase


def pods(cluster: LocalCluster, ns: str, name: str) -> list[dict[str, Any]]:
    out = get(cluster, ns, "pods", "-l", f"goodput.dev/deployment={name}")
    return [p for p in out["items"] if not p["metadata"].get("deletionTimestamp")]


def replica_workloads(cluster: LocalCluster, ns: str, name: str) -> dict[str, dict[str, Any]]:
    """The LLMDeployment's replica Deployments by name."""
    out = get(cluster, ns, "deployments", "-l", f"goodput.dev/deployment={name}")
    return {
        d["metadata"]["name"]: d for d in out["items"] if not d["metadata"].get("deletionTimestamp")
    }


def pods_on_planned_nodes(cluster: LocalCluster, ns: str, name: str) -> dict[int, str] | None:
    """Replica -> node once every replica in ``status.placement`` has exactly one live pod,
    bound to the node planned for it; else None."""
    placement = (llmd(cluster, ns, name).get("status") or {}).get("placement") or []
    planned = {p["replica"]: p["nodes"][0] for p in placement}
    bound: dict[int, list[str]] = {}
    for pod in pods(cluster, ns, name):
        replica = int(pod["metadata"]["labels"]["goodput.dev/replica"])
        bound.setdefault(replica, []).append(pod["spec"].get("nodeName") or "")
    if not planned or {r: [n] for r, n in planned.items()} != bound:
        return None
    return planned


def test_example_becomes_available_on_matching_gpu_nodes(
    cluster: LocalCluster, ns: str, operator: OperatorProcess
) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "llmdeployment.yaml"))
    wait_for(phase_is(cluster, ns, "llama3-8b", "Available"), what="llama3-8b Available")
    obj = llmd(cluster, ns, "llama3-8b")
    st = obj["status"]
    assert st["gpuType"] == H100 and st["gpus"] == 1 and st["ready"] == "1/1"
    assert st["observedGeneration"] == obj["metadata"]["generation"]
    assert st["endpoint"] == f"http://llama3-8b.{ns}.svc:80/v1"
    assert condition(obj, "Placed")["status"] == "True"
    assert condition(obj, "Available")["status"] == "True"
    # The real scheduler bound the pod to an H100 node.
    (pod,) = pods(cluster, ns, "llama3-8b")
    node = get(cluster, ns, "node", pod["spec"]["nodeName"])
    assert node["metadata"]["labels"]["nvidia.com/gpu.product"] == H100
    assert st["placement"][0]["nodes"] == [pod["spec"]["nodeName"]]
    assert pod["metadata"]["labels"]["goodput.dev/replica"] == "0"
    # Owned objects, owner references, labels.
    assert list(replica_workloads(cluster, ns, "llama3-8b")) == ["llama3-8b-r0"]
    for kind, name in (
        ("deployment", "llama3-8b-r0"),
        ("service", "llama3-8b"),
        ("configmap", "llama3-8b-gateway"),
    ):
        owned = get(cluster, ns, kind, name)
        (ref,) = owned["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"]) == (
            "LLMDeployment",
            "llama3-8b",
            obj["metadata"]["uid"],
        )
        assert owned["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "goodput"
    table = cluster.kubectl("get", "llmd", "-n", ns)
    assert "llama3-8b" in table and "1/1" in table and "Available" in table
    events = cluster.kubectl(
        "get", "events", "-n", ns, "--field-selector", "involvedObject.kind=LLMDeployment"
    )
    assert "Placed" in events
    metrics = operator.metrics()
    assert f'goodput_operator_gpus_allocated{{gpu_product="{H100}"}} 1.0' in metrics
    assert f'goodput_operator_gpus_capacity{{gpu_product="{H100}"}}' in metrics
    assert 'goodput_operator_deployments{phase="Available"} 1.0' in metrics
    assert "goodput_operator_reconciliations_total{" in metrics
    assert "goodput_operator_reconcile_duration_seconds_bucket{" in metrics


def test_kubectl_scale_and_spec_changes_roll_the_workload(
    cluster: LocalCluster, ns: str, operator: OperatorProcess
) -> None:
    (first,) = pods(cluster, ns, "llama3-8b")
    cluster.kubectl("scale", "llmd", "llama3-8b", "-n", ns, "--replicas=2")
    wait_for(
        lambda: (
            sorted(replica_workloads(cluster, ns, "llama3-8b")) == ["llama3-8b-r0", "llama3-8b-r1"]
        ),
        what="a second replica Deployment to follow kubectl scale",
    )
    wait_for(
        lambda: llmd(cluster, ns, "llama3-8b")["status"].get("ready") == "2/2",
        what="2/2 ready",
    )
    wait_for(lambda: pods_on_planned_nodes(cluster, ns, "llama3-8b"), what="pods on plan")
    uids = {p["metadata"]["uid"] for p in pods(cluster, ns, "llama3-8b")}
    assert first["metadata"]["uid"] in uids, "scaling up left the first replica's pod alone"
    scale = json.loads(
        cluster.kubectl(
            "get",
            "--raw",
            f"/apis/goodput.dev/v1alpha1/namespaces/{ns}/llmdeployments/llama3-8b/scale",
        )
    )
    assert scale["spec"]["replicas"] == 2 and scale["status"]["replicas"] == 2
    assert scale["status"]["selector"] == "goodput.dev/deployment=llama3-8b"

    patch = {"spec": {"engine": {"args": ["--max-num-seqs", "32"]}, "model": {"maxModelLen": 4096}}}
    cluster.kubectl("patch", "llmd", "llama3-8b", "-n", ns, "--type=merge", "-p", json.dumps(patch))

    def rolled() -> bool:
        for dep in replica_workloads(cluster, ns, "llama3-8b").values():
            args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
            if "32" not in args or args[args.index("--max-model-len") + 1] != "4096":
                return False
        return True

    wait_for(rolled, what="the engine args to follow the spec")
    # Serving replicas took the new template one after another.
    assert "rolling one replica at a time; waiting: llama3-8b-r1" in operator.log.read_text()
    wait_for(phase_is(cluster, ns, "llama3-8b", "Available"), what="Available after the rollout")
    obj = llmd(cluster, ns, "llama3-8b")
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    wait_for(lambda: pods_on_planned_nodes(cluster, ns, "llama3-8b"), what="pods on plan")
    for pod in pods(cluster, ns, "llama3-8b"):
        assert "--max-num-seqs" in pod["spec"]["containers"][0]["args"]


@pytest.mark.parametrize(
    ("spec_patch", "message"),
    [
        (
            {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
            "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
        ),
        (
            {"adapters": [{"name": "a", "source": "org/a"}, {"name": "a", "source": "org/b"}]},
            "adapters names must be unique",
        ),
        (
            {"resources": {"gpusPerReplica": 4, "parallelism": {"tensor": 2, "pipeline": 1}}},
            "resources.gpusPerReplica must equal parallelism.tensor * parallelism.pipeline",
        ),
        ({"slo": {"ttftMs": 500, "tpotMs": 50, "percentile": 100}}, "slo.percentile must lie"),
        ({"scheduling": {"defaultPriority": "gold"}}, "scheduling.defaultPriority must name one"),
    ],
)
def test_invalid_specs_are_rejected_by_the_api_server(
    cluster: LocalCluster, ns: str, spec_patch: dict[str, Any], message: str
) -> None:
    from goodput.dev.cluster import ClusterError

    doc = yaml.safe_load((EXAMPLES / "llmdeployment.yaml").read_text())
    doc["metadata"]["name"] = "invalid"
    doc["spec"].update(spec_patch)
    with pytest.raises(ClusterError) as err:
        cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(doc))
    assert message in str(err.value)


def test_unknown_gpu_type_is_reported_not_retried_noisily(
    cluster: LocalCluster, ns: str, operator: OperatorProcess
) -> None:
    doc = yaml.safe_load((EXAMPLES / "llmdeployment.yaml").read_text())
    doc["metadata"]["name"] = "wants-b200"
    doc["spec"]["resources"]["gpuTypes"] = ["B200"]
    cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump(doc))

    def refused() -> dict[str, Any] | None:
        placed = condition(llmd(cluster, ns, "wants-b200"), "Placed")
        return placed if placed and placed["status"] == "False" else None

    placed = wait_for(refused, what="Placed=False")
    assert placed["reason"] == "NoMatchingGPUType"
    assert "B200" in placed["message"] and H100 in placed["message"]
    assert llmd(cluster, ns, "wants-b200")["status"]["phase"] == "Pending"
    assert replica_workloads(cluster, ns, "wants-b200") == {}
    time.sleep(5)  # node heartbeats go on; the refusal is not re-announced
    events = get(cluster, ns, "events", "--field-selector", "involvedObject.name=wants-b200")
    warnings = [e for e in events["items"] if e["reason"] == "NoMatchingGPUType"]
    assert len(warnings) == 1 and warnings[0].get("count", 1) == 1
    cluster.kubectl("delete", "llmd", "wants-b200", "-n", ns)


def test_restart_converges_without_duplicates(
    cluster: LocalCluster, ns: str, operator: OperatorProcess
) -> None:
    operator.stop()
    cluster.kubectl("scale", "llmd", "llama3-8b", "-n", ns, "--replicas=1")
    time.sleep(2)
    assert len(replica_workloads(cluster, ns, "llama3-8b")) == 2, "nobody acted"
    kept = get(cluster, ns, "deployment", "llama3-8b-r0")
    operator.start()
    wait_for(
        lambda: list(replica_workloads(cluster, ns, "llama3-8b")) == ["llama3-8b-r0"],
        what="the restarted operator to delete the scaled-down replica",
    )
    wait_for(lambda: len(pods(cluster, ns, "llama3-8b")) == 1, what="one pod")
    wait_for(phase_is(cluster, ns, "llama3-8b", "Available"), what="Available after restart")
    managed = "goodput.dev/deployment=llama3-8b"
    assert len(get(cluster, ns, "deployments", "-l", managed)["items"]) == 1
    after = get(cluster, ns, "deployment", "llama3-8b-r0")
    assert after["metadata"]["uid"] == kept["metadata"]["uid"]
    assert after["metadata"]["generation"] == kept["metadata"]["generation"], "not rolled"
    assert pods_on_planned_nodes(cluster, ns, "llama3-8b")
    assert len(get(cluster, ns, "services", "-l", managed)["items"]) == 1
    assert len(get(cluster, ns, "configmaps", "-l", managed)["items"]) == 1


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_is_accepted_and_placed(
    cluster: LocalCluster, ns: str, operator: OperatorProcess, path: Path
) -> None:
    cluster.kubectl("apply", "-n", ns, "-f", str(path))
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc or doc.get("kind") != "LLMDeployment":
            continue
        name = doc["metadata"]["name"]

        def placed(name: str = name) -> dict[str, Any] | None:
            obj = llmd(cluster, ns, name)
            c = condition(obj, "Placed")
            return obj if c and c["status"] == "True" else None

        obj = wait_for(placed, what=f"{name} placed")
        replicas = doc["spec"].get("replicas", 1)
        deps = wait_for(
            lambda name=name, replicas=replicas: (
                len(workloads := replica_workloads(cluster, ns, name)) == replicas and workloads
            ),
            what="one workload per replica",
        )
        gpus = sum(
            int(
                d["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"][
                    "nvidia.com/gpu"
                ]
            )
            for d in deps.values()
        )
        assert gpus == obj["status"]["gpus"]


def test_delete_garbage_collects_owned_objects(
    cluster: LocalCluster, ns: str, operator: OperatorProcess
) -> None:
    cluster.kubectl("delete", "llmd", "llama3-8b", "-n", ns, "--wait=true", "--timeout=60s")
    managed = "goodput.dev/deployment=llama3-8b"
    for kind in ("deployments", "services", "configmaps"):
        wait_for(
            lambda kind=kind: get(cluster, ns, kind, "-l", managed)["items"] == [],
            what=f"{kind} garbage-collected",
        )
