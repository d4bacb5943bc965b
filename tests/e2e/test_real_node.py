"""The operator's pods on the real node: placed, Ready through real probes, serving, scraped,
drained on delete (marker e2e; the node's kubelet and containerd really run the containers).

A scenario in file order, sharing one namespace and one operator process: the tiny random
Llama is offered as a PersistentVolumeClaim on the node, the operator places the example's
model there through its normal placement path (the node carries the CPU engine's GPU labels),
the official ``openai`` client streams through the Service's ready endpoints (no kube-proxy
runs: docs/dev-cluster.md), Debian's Prometheus scrapes its gateway, and deleting the
LLMDeployment mid-stream lets the stream finish.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import yaml

from goodput.dev import images
from goodput.dev.fleet import GPU_RESOURCE
from goodput.dev.fleet import REAL_NODE_LABEL as NODE_LABEL
from goodput.dev.node import LocalNode
from goodput.dev.stack import ready_endpoint

from .conftest import real_node_operator
from .test_operator import OperatorProcess
from .waiting import wait_for

if TYPE_CHECKING:
    from goodput.dev.cluster import LocalCluster

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1200)]

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "llmdeployment-tiny-cpu.yaml"
NAMESPACE = "real-node-e2e"
MODELS_CLAIM = "goodput-models"


def _example() -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(EXAMPLE.read_text()) if d]
    return next(d for d in docs if d["kind"] == "LLMDeployment")


def _get(cluster: LocalCluster, *args: str) -> Any:
    raw = cluster.kubectl("get", *args, "-o", "json", check=False)
    return json.loads(raw) if raw.strip() else None


@pytest.fixture(scope="module")
def operator(
    cluster: LocalCluster, node: LocalNode, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("real-node-operator") / "operator.log"
    with real_node_operator(cluster, node, NAMESPACE, log) as process:
        yield process


def _explain(cluster: LocalCluster, operator: OperatorProcess) -> str:
    pods = cluster.kubectl("get", "pods", "-n", NAMESPACE, "-o", "wide", check=False)
    events = cluster.kubectl(
        "get", "events", "-n", NAMESPACE, "--sort-by=.lastTimestamp", check=False
    )
    return f"pods:\n{pods}\nevents:\n{events[-4000:]}\noperator:\n{operator.tail()}"


def test_the_real_node_is_a_ready_gpu_node(cluster: LocalCluster, node: LocalNode) -> None:
    obj = _get(cluster, "node", node.name)
    assert obj["metadata"]["labels"][NODE_LABEL] == "true"
    assert obj["metadata"]["labels"]["nvidia.com/gpu.product"] == node.spec.gpu.product
    assert obj["status"]["allocatable"][GPU_RESOURCE] == str(node.spec.gpus)
    addresses = {a["type"]: a["address"] for a in obj["status"]["addresses"]}
    assert addresses["InternalIP"] == node.network.address
    ready = [c for c in obj["status"]["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "True", ready
    # The images came from local archives, never a registry.
    present = node.images()
    for reference in (recipe.reference for recipe in images.NODE_RECIPES):
        assert reference in present, f"{reference} not imported: {present}"


def test_the_example_is_placed_on_the_real_node_and_turns_ready(
    cluster: LocalCluster, node: LocalNode, operator: OperatorProcess
) -> None:
    example = _example()
    name = example["metadata"]["name"]
    cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(EXAMPLE))

    def available() -> dict[str, Any] | None:
        obj = _get(cluster, "llmd", name, "-n", NAMESPACE)
        conditions = (obj or {}).get("status", {}).get("conditions", [])
        ok = any(c["type"] == "Available" and c["status"] == "True" for c in conditions)
        return obj if ok else None

    obj = wait_for(
        available, timeout=600, what=f"{name} Available",
        explain=lambda: _explain(cluster, operator),
    )  # fmt: skip
    placement = obj["status"]["placement"]
    assert [n for replica in placement for n in replica["nodes"]] == [node.name]
    pods = _get(cluster, "pods", "-n", NAMESPACE, "-l", f"goodput.dev/deployment={name}")
    assert len(pods["items"]) == 1
    pod = pods["items"][0]
    assert pod["spec"]["nodeName"] == node.name
    statuses = {s["name"]: s for s in pod["status"]["containerStatuses"]}
    assert set(statuses) == {"engine", "gateway"}
    assert all(s["ready"] and s["restartCount"] == 0 for s in statuses.values()), statuses
    assert pod["status"]["podIP"] in _subnet_hosts(node)


def _subnet_hosts(node: LocalNode) -> set[str]:
    return {str(ip) for ip in node.network.subnet.hosts()}


def test_openai_client_streams_through_the_service_endpoints(
    cluster: LocalCluster, operator: OperatorProcess
) -> None:
    from openai import OpenAI

    example = _example()
    base = ready_endpoint(cluster, NAMESPACE, example["metadata"]["name"])
    client = OpenAI(base_url=f"{base}/v1", api_key="unused", timeout=60, max_retries=0)
    stream = client.chat.completions.create(
        model=example["spec"]["model"]["name"],
        messages=[{"role": "user", "content": "Say something about rain."}],
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = next(c.usage for c in chunks if c.usage is not None)
    assert usage.completion_tokens == 24
    assert text


def test_debian_prometheus_scrapes_the_pods_gateway(
    cluster: LocalCluster, operator: OperatorProcess, tmp_path: Path
) -> None:
    """Debian's Prometheus is built without Kubernetes service discovery (its package leaves the
    client-go based discoverers out), so its target is the Service's ready endpoint, read from
    the EndpointSlices as the router does; the chart's PodMonitor does this on a cluster with
    the Prometheus Operator."""
    from chart.prometheus_server import PrometheusServer

    name = _example()["metadata"]["name"]
    target = ready_endpoint(cluster, NAMESPACE, name).removeprefix("http://")
    server = PrometheusServer(tmp_path, jobs={"goodput-gateways": [target]}, rules={"groups": []})
    server.start()
    try:

        def scraped() -> list[Any] | None:
            result = server.api("query", query='goodput_requests_total{job="goodput-gateways"}')
            values = [float(r["value"][1]) for r in result["result"]]
            return result["result"] if values and sum(values) > 0 else None

        series = wait_for(scraped, timeout=90, what="the gateway's requests scraped")
        assert {s["metric"]["deployment"] for s in series} == {name}
        assert server.targets_up() == {"goodput-gateways": True}
    finally:
        server.stop()


def _counter(url: str, prefix: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def _ready_gateways(cluster: LocalCluster, service: str) -> list[str]:
    slices = _get(
        cluster, "endpointslices", "-n", NAMESPACE, "-l", f"kubernetes.io/service-name={service}"
    )
    return [
        f"http://{e['addresses'][0]}:8080"
        for s in slices["items"]
        for e in s.get("endpoints") or []
        if e["conditions"].get("ready")
    ]


def test_routing_puts_a_router_before_two_replicas_and_a_conversation_stays_on_one(
    cluster: LocalCluster, operator: OperatorProcess
) -> None:
    """spec.routing on a second replica: the operator deploys the router (its own
    ServiceAccount, reading only EndpointSlices), the Service leads to it, and a conversation
    through it stays on the replica holding its prefix; turned off again, the Service leads back
    to the gateways and the router's objects are gone. (Scaling the running example keeps its
    first replica: one engine start, not two.)"""
    example = _example()
    name = example["metadata"]["name"]
    routing = {"prefixAware": True, "sessionAffinity": True}
    patch = {"spec": {"replicas": 2, "routing": routing}}
    cluster.kubectl("patch", "llmd", name, "-n", NAMESPACE, "--type=merge", "-p", json.dumps(patch))

    def routed() -> dict[str, Any] | None:
        obj = _get(cluster, "llmd", name, "-n", NAMESPACE) or {}
        status = obj.get("status", {})
        router = _get(cluster, "deployment", f"{name}-router", "-n", NAMESPACE) or {}
        ready = (router.get("status") or {}).get("readyReplicas") == 1
        return obj if status.get("readyReplicas") == 2 and ready else None

    obj = wait_for(
        routed, timeout=900, what=f"{name}: two replicas and the router ready",
        explain=lambda: _explain(cluster, operator),
    )  # fmt: skip
    assert obj["status"]["router"] == f"{name}-router"
    service = _get(cluster, "service", name, "-n", NAMESPACE)
    assert service["spec"]["selector"] == {"goodput.dev/router": name}
    router = ready_endpoint(cluster, NAMESPACE, name)
    gateways = _ready_gateways(cluster, f"{name}-replicas")
    assert len(gateways) == 2, gateways

    def both_seen() -> list[dict[str, Any]] | None:
        view = httpx.get(f"{router}/v1/goodput/endpoints", timeout=10).json()["endpoints"]
        ready = [e for e in view if e["ready"] and e["report"] and e["report"]["ready"]]
        return ready if len(ready) == 2 else None

    wait_for(both_seen, timeout=60, what="the router sees both replicas ready")
    before = [_counter(g, "goodput_requests_total") for g in gateways]
    system = (
        "You are the on-call assistant of a platform team. Answer briefly, name the runbook "
        "step you follow, and never invent numbers. "
    ) * 3
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}]
    for turn in range(5):
        messages.append({"role": "user", "content": f"What is step {turn} of the failover?"})
        reply = httpx.post(
            f"{router}/v1/chat/completions",
            json={"model": example["spec"]["model"]["name"], "messages": messages, "max_tokens": 8},
            timeout=120,
        )
        assert reply.status_code == 200, reply.text
        answer = reply.json()["choices"][0]["message"]["content"]
        messages.append({"role": "assistant", "content": answer})
    after = [_counter(g, "goodput_requests_total") for g in gateways]
    served = sorted(a - b for a, b in zip(after, before, strict=True))
    assert served == [0, 5], served
    wait_for(
        lambda: _counter(router, "goodput_router_engine_prefix_cache_hits_tokens_total") > 0,
        timeout=60,
        what="the engines' prefix-cache hits, reported through the router",
    )

    # Routing off, one replica: the Service leads to the gateway again; the router is removed.
    patch = {"spec": {"replicas": 1, "routing": {"prefixAware": False, "sessionAffinity": False}}}
    cluster.kubectl("patch", "llmd", name, "-n", NAMESPACE, "--type=merge", "-p", json.dumps(patch))

    def unrouted() -> bool:
        svc = _get(cluster, "service", name, "-n", NAMESPACE)
        gone = _get(cluster, "deployment", f"{name}-router", "-n", NAMESPACE) is None
        left = [
            kind
            for kind in ("serviceaccount", "role", "rolebinding", "configmap")
            if _get(cluster, kind, f"{name}-router", "-n", NAMESPACE) is not None
        ]
        return svc["spec"]["selector"] == {"goodput.dev/deployment": name} and gone and not left

    wait_for(
        unrouted,
        timeout=120,
        what="the router removed",
        explain=lambda: _explain(cluster, operator),
    )
    wait_for(
        lambda: len(_ready_gateways(cluster, name)) == 1,
        timeout=180,
        what="one replica serving through the Service",
        explain=lambda: _explain(cluster, operator),
    )


def test_delete_mid_stream_completes_the_request_and_removes_the_pod(
    cluster: LocalCluster, operator: OperatorProcess
) -> None:
    from openai import OpenAI

    example = _example()
    name = example["metadata"]["name"]
    base = ready_endpoint(cluster, NAMESPACE, name)
    client = OpenAI(base_url=f"{base}/v1", api_key="unused", timeout=300, max_retries=0)
    max_tokens = 1500
    first_chunk = threading.Event()
    result: dict[str, Any] = {}

    def stream() -> None:
        try:
            chunks = 0
            finish = None
            usage = None
            for chunk in client.chat.completions.create(
                model=example["spec"]["model"]["name"],
                messages=[{"role": "user", "content": "Tell a long story."}],
                max_tokens=max_tokens,
                stream=True,
                stream_options={"include_usage": True},
                extra_body={"ignore_eos": True},
            ):
                chunks += 1
                first_chunk.set()
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish = chunk.choices[0].finish_reason
                if chunk.usage is not None:
                    usage = chunk.usage
            result.update(finish=finish, usage=usage, chunks=chunks)
        except Exception as exc:  # reported by the assertion below
            result["error"] = repr(exc)
            first_chunk.set()

    thread = threading.Thread(target=stream, daemon=True)
    thread.start()
    assert first_chunk.wait(120), "the stream never started"
    started = time.monotonic()
    cluster.kubectl("delete", "llmd", name, "-n", NAMESPACE, "--wait=false")
    thread.join(timeout=300)
    assert "error" not in result, result
    assert result["finish"] == "length", result
    assert result["usage"].completion_tokens == max_tokens, result
    wait_for(
        lambda: (
            not _get(cluster, "pods", "-n", NAMESPACE, "-l", f"goodput.dev/deployment={name}")[
                "items"
            ]
        ),
        timeout=180,
        what="the pod gone",
        explain=lambda: _explain(cluster, operator),
    )
    assert time.monotonic() - started < 240
