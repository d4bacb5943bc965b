"""Placement decisions on the real local control plane's heterogeneous simulated fleet.

The operator runs as a subprocess watching its own namespace; the real kube-scheduler binds the
pods, each replica's to the node the solver planned for it. The default fleet
(goodput/dev/fleets/default.yaml) has H100 and H200 (8 per node), A100 40 GB (8), L4 and A10G (4)
nodes over three zones; the node-loss test adds (and deletes) L40S nodes of its own.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from goodput.dev.stack import apply_crds

from .own_nodes import own_nodes
from .waiting import wait_for

if TYPE_CHECKING:
    from goodput.dev.cluster import LocalCluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

CRD = Path(__file__).resolve().parents[2] / "crds" / "llmdeployment.yaml"
LLAMA_8B = {
    "name": "meta-llama/Meta-Llama-3-8B-Instruct",
    "architecture": "llama-3-8b",
    "maxModelLen": 4096,
}


@pytest.fixture(scope="module")
def ns(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A namespace with its own operator process."""
    apply_crds(cluster, [CRD])
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


def get(cluster: LocalCluster, ns: str, *what: str) -> Any:
    out = cluster.kubectl("get", *what, "-n", ns, "-o", "json", check=False)
    return json.loads(out) if out.strip() else None


def on_plan(cluster: LocalCluster, ns: str, name: str) -> dict[int, tuple[str, str]] | None:
    """Replica -> (pod UID, node) once every replica of ``status.placement`` has exactly one
    live pod, bound by kube-scheduler to the node planned for it; else None."""
    placement = (get(cluster, ns, "llmdeployment", name).get("status") or {}).get("placement")
    planned = {p["replica"]: p["nodes"] for p in placement or ()}
    live = [
        p
        for p in get(cluster, ns, "pods", "-l", f"goodput.dev/deployment={name}")["items"]
        if not p["metadata"].get("deletionTimestamp")
    ]
    bound: dict[int, list[tuple[str, str]]] = {}
    for pod in live:
        replica = int(pod["metadata"]["labels"]["goodput.dev/replica"])
        bound.setdefault(replica, []).append((pod["metadata"]["uid"], pod["spec"].get("nodeName")))
    if not planned or sorted(planned) != sorted(bound):
        return None
    if any(len(bound[r]) != 1 or [bound[r][0][1]] != nodes for r, nodes in planned.items()):
        return None
    return {r: pods[0] for r, pods in bound.items()}


def workloads(cluster: LocalCluster, ns: str, name: str) -> dict[str, tuple[str, int]]:
    """Replica Deployment name -> (uid, generation)."""
    out = get(cluster, ns, "deployments", "-l", f"goodput.dev/deployment={name}")
    return {
        d["metadata"]["name"]: (d["metadata"]["uid"], d["metadata"]["generation"])
        for d in out["items"]
        if not d["metadata"].get("deletionTimestamp")
    }


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
    where = wait_for(lambda: on_plan(cluster, ns, "small"), what="pods on the planned nodes")
    assert sorted(where) == [0, 1] and len({node for _, node in where.values()}) == 2
    assert sorted(workloads(cluster, ns, "small")) == ["small-r0", "small-r1"]


def test_kubectl_scale_adds_and_removes_only_that_replicas_workload(
    cluster: LocalCluster, ns: str
) -> None:
    before = wait_for(lambda: on_plan(cluster, ns, "small"), what="pods on the planned nodes")
    deps = workloads(cluster, ns, "small")
    cluster.kubectl("scale", "llmd", "small", "-n", ns, "--replicas=3")
    up = wait_for(
        lambda: (w := on_plan(cluster, ns, "small")) and len(w) == 3 and w,
        what="a third replica on its planned node",
    )
    assert {r: up[r] for r in before} == before, "the running replicas' pods are untouched"
    now = workloads(cluster, ns, "small")
    assert sorted(now) == ["small-r0", "small-r1", "small-r2"]
    assert {k: now[k] for k in deps} == deps, "their Deployments are unchanged"
    cluster.kubectl("scale", "llmd", "small", "-n", ns, "--replicas=2")
    wait_for(
        lambda: sorted(workloads(cluster, ns, "small")) == ["small-r0", "small-r1"],
        what="the third replica's Deployment deleted",
    )
    assert wait_for(lambda: (w := on_plan(cluster, ns, "small")) and len(w) == 2 and w) == before
    assert workloads(cluster, ns, "small") == deps


@pytest.fixture
def own_gpu_nodes(cluster: LocalCluster) -> Iterator[list[str]]:
    """Three simulated L40S nodes (one per zone, 4 GPUs each), so the test may delete one
    without disturbing the shared fleet."""
    pool = {
        "name": "l40s",
        "gpu": {"product": "NVIDIA-L40S", "memoryMiB": 46068, "family": "ada-lovelace",
                "computeCapability": "8.9"},
        "gpusPerNode": 4, "interconnect": "pcie", "count": 3,
        "zones": ["local-1a", "local-1b", "local-1c"], "nodesPerRack": 1,
        "instanceType": "sim.l40s.4x", "cpu": 48, "memoryGiB": 384,
    }  # fmt: skip
    with own_nodes(cluster, pool, "pin") as names:
        yield names


def test_deleting_a_node_re_places_only_the_replica_on_it(
    cluster: LocalCluster, ns: str, own_gpu_nodes: list[str]
) -> None:
    apply(cluster, ns, "mover", model=LLAMA_8B, replicas=2, resources={"gpuTypes": ["L40S"]})
    before = wait_for(lambda: on_plan(cluster, ns, "mover"), what="pods on the planned nodes")
    assert sorted(before) == [0, 1]
    nodes = [node for _, node in before.values()]
    assert len(set(nodes)) == 2 and set(nodes) <= set(own_gpu_nodes), before
    deps = workloads(cluster, ns, "mover")
    lost_uid, lost = before[1]
    cluster.kubectl("delete", "node", lost)

    def moved() -> dict[int, tuple[str, str]] | None:
        where = on_plan(cluster, ns, "mover")
        return where if where and where[1][1] != lost else None

    after = wait_for(moved, timeout=180, what="replica 1 re-placed on a live node")
    assert after[0] == before[0], "the other replica's pod is untouched (same UID, same node)"
    assert after[1][1] in own_gpu_nodes and after[1][0] != lost_uid
    now = workloads(cluster, ns, "mover")
    assert now["mover-r0"] == deps["mover-r0"], "the other replica's Deployment is unchanged"
    assert now["mover-r1"][0] == deps["mover-r1"][0], "the moved replica's Deployment is updated"
    assert now["mover-r1"][1] > deps["mover-r1"][1]


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


def booked_gpus(cluster: LocalCluster, ns: str, nodes: list[str]) -> dict[str, int]:
    """GPUs the operator has booked per node: replica Deployments pinned there (annotation
    ``goodput.dev/node``), each with its pod template's GPU request."""
    out: dict[str, int] = dict.fromkeys(nodes, 0)
    for dep in get(cluster, ns, "deployments", "-l", "goodput.dev/deployment")["items"]:
        node = (dep["metadata"].get("annotations") or {}).get("goodput.dev/node")
        if node in out:
            containers = dep["spec"]["template"]["spec"]["containers"]
            out[node] += sum(
                int(((c.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu", 0))
                for c in containers
            )
    return out


def test_concurrent_creations_never_book_a_gpu_twice(cluster: LocalCluster, ns: str) -> None:
    """Ten LLMDeployments of two 1-GPU replicas created in one apply, on 12 GPUs of their own:
    the operator converges them in parallel threads, and placement books one at a time (the
    solver selector's lock; a solve's reservation holds its GPUs until the watch shows the
    replica Deployments), so exactly six fit and no node is ever booked beyond its GPUs."""
    pool = {
        "name": "a100-80",
        "gpu": {"product": "NVIDIA-A100-SXM4-80GB", "memoryMiB": 81920, "family": "ampere",
                "computeCapability": "8.0"},
        "gpusPerNode": 4, "interconnect": "nvswitch", "count": 3,
        "zones": ["local-1a", "local-1b", "local-1c"], "nodesPerRack": 1,
        "instanceType": "sim.a100-80.4x", "cpu": 96, "memoryGiB": 1152,
    }  # fmt: skip
    names = [f"race-{i}" for i in range(10)]
    with own_nodes(cluster, pool, "race") as nodes:
        spec = {
            "slo": {"ttftMs": 2000, "tpotMs": 100},
            "model": LLAMA_8B,
            "replicas": 2,
            "resources": {"gpuTypes": ["A100-80GB"]},
        }
        docs = [
            {
                "apiVersion": "goodput.dev/v1alpha1",
                "kind": "LLMDeployment",
                "metadata": {"name": name},
                "spec": spec,
            }
            for name in names
        ]
        cluster.kubectl("apply", "-n", ns, "-f", "-", stdin=yaml.safe_dump_all(docs))
        peak: dict[str, int] = {}

        def snapshot() -> dict[str, int]:
            booked = booked_gpus(cluster, ns, nodes)
            for node, gpus in booked.items():
                peak[node] = max(peak.get(node, 0), gpus)
                assert gpus <= 4, f"{node} booked {gpus} of its 4 GPUs"
            return booked

        def settled() -> dict[str, dict[str, Any]] | None:
            snapshot()
            conds = {name: placed(cluster, ns, name) for name in names}
            if any(c is None for c in conds.values()):
                return None
            ok = [name for name, c in conds.items() if c and c["status"] == "True"]
            # The bookings are read again after the conditions (a replica Deployment can land
            # between the two reads); the same read feeds the peak, so it cannot miss them.
            if sum(snapshot().values()) != 2 * len(ok):
                return None
            return {name: c for name, c in conds.items() if c}

        conds = wait_for(settled, timeout=300, what="every LLMDeployment decided and booked")
        ok = sorted(name for name, c in conds.items() if c["status"] == "True")
        refused = {c["reason"] for c in conds.values() if c["status"] != "True"}
        assert len(ok) == 6 and refused == {"InsufficientGPUs"}, conds
        assert peak == dict.fromkeys(nodes, 4), peak
        for name in ok:
            where = wait_for(lambda n=name: on_plan(cluster, ns, n), what=f"{name} on plan")
            assert {node for _, node in where.values()} <= set(nodes)
        cluster.kubectl("delete", "llmdeployment", *names, "-n", ns, "--wait=false")
