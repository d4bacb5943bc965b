"""`goodput dev up`'s stack on a real control plane: CRDs, the operator process, the example.

Runs on its own cluster: the operator started here must not meet another test's operator.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from goodput.dev.cluster import LocalCluster, checkout_cluster_name
from goodput.dev.fleet import Fleet
from goodput.dev.local_pod import stream_chat
from goodput.dev.processes import process_alive
from goodput.dev.stack import OPERATOR, DevStack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(3600)]


@pytest.fixture(scope="module")
def stack_cluster() -> Iterator[LocalCluster]:
    cluster = LocalCluster(checkout_cluster_name("goodput-stack"))
    try:
        cluster.up(fleet=Fleet.load("default"))
        yield cluster
    finally:
        cluster.down(purge=True)


def test_dev_up_ends_with_the_real_nodes_pod_answering(stack_cluster: LocalCluster) -> None:
    """`goodput dev up`'s serving step: the operator places the tiny model on the real node and
    its pod answers through the Service's endpoint."""
    spec = Fleet.load("default").real_node
    assert spec is not None
    node = stack_cluster.real_node(spec)
    stack = DevStack(stack_cluster)
    messages: list[str] = []
    stack.apply_crds(messages.append)
    stack.start_operator(messages.append, env=node.operator_env())
    url = stack.serve_on_real_node(node, messages.append, timeout=600)
    answer = stream_chat(url, "tiny-llama", "Hello!", max_tokens=8)
    assert answer.completion_tokens == 8 and answer.finish_reason == "length"
    assert answer.first_token_seconds > 0
    pods = json.loads(
        stack_cluster.kubectl(
            "get", "pods", "-l", "goodput.dev/deployment=tiny-llama", "-o", "json"
        )
    )["items"]
    assert [p["spec"]["nodeName"] for p in pods] == [node.name]
    assert url.startswith(f"http://{pods[0]['status']['podIP']}:")


def test_dev_up_stack_makes_the_example_available_and_down_stops_the_operator(
    stack_cluster: LocalCluster,
) -> None:
    stack = DevStack(stack_cluster)
    messages: list[str] = []
    assert stack.apply_crds(messages.append) == ["llmdeployments.goodput.dev"]
    stack.start_operator(messages.append)
    name = stack.apply_example(messages.append, timeout=300)
    assert name is not None

    llmd = json.loads(stack_cluster.kubectl("get", "llmd", name, "-o", "json"))
    conditions = {c["type"]: c["status"] for c in llmd["status"]["conditions"]}
    assert conditions["Available"] == "True"
    pods = json.loads(stack_cluster.kubectl("get", "pods", "-o", "json"))["items"]
    running = [p for p in pods if p["status"].get("phase") == "Running"]
    assert running, "the example's pods should be bound by kube-scheduler and run under kwok"

    operator = stack_cluster.supervisor.record(OPERATOR)
    assert operator is not None and process_alive(operator.pid, operator.start_ticks)
    stack.start_operator(messages.append)  # a restart replaces, never duplicates, the operator
    restarted = stack_cluster.supervisor.record(OPERATOR)
    assert restarted is not None and restarted.pid != operator.pid
    assert not process_alive(operator.pid, operator.start_ticks)

    stack_cluster.down()
    assert not process_alive(restarted.pid, restarted.start_ticks)
    assert stack_cluster.supervisor.strays() == []
