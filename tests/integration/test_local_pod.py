"""The local serving pod: the real gateway in front of the real vLLM CPU engine, as background
processes that `up` starts or reuses and `down` removes without a trace.

The tests share one pod (the engine takes ~20-60 s to start) and run in file order: the last one
stops it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from goodput.dev.cli import dev
from goodput.dev.cluster import LocalCluster
from goodput.dev.local_pod import ENGINE, GATEWAY, LocalPod, PodSpec, UpResult, group_members
from goodput.dev.processes import free_port

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def started(engine_python: Path, tiny_model: Path) -> Iterator[tuple[LocalPod, UpResult]]:
    # Under the real state root (as the CLI finds it) with a unique name and free ports, so it
    # never meets a developer's own `goodput-dev` pod.
    spec = PodSpec(gateway_port=free_port(), engine_port=free_port())
    pod = LocalPod(f"pytest-{os.getpid()}", spec)
    try:
        yield pod, pod.up()
    finally:
        pod.down()
        shutil.rmtree(pod.state_dir, ignore_errors=True)
        shutil.rmtree(LocalCluster(pod.name).state_dir, ignore_errors=True)  # `dev down`'s lock


def _samples(pod: LocalPod, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """``{sorted labels: value}`` of one sample name in the gateway's /metrics."""
    text = httpx.get(f"{pod.gateway_url}/metrics", timeout=10).text
    return {
        tuple(sorted(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name
    }


def test_first_up_starts_engine_and_gateway(started: tuple[LocalPod, UpResult]) -> None:
    pod, result = started
    assert result.reused == frozenset()
    state = pod.status()
    assert state.ready
    for name in (ENGINE, GATEWAY):
        record = state.processes[name]
        assert record is not None and record.alive()
        assert record.pid != os.getpid() and os.getpgid(record.pid) == record.pid


def test_chat_completion_through_the_gateway_is_counted(
    started: tuple[LocalPod, UpResult],
) -> None:
    pod, _ = started
    before = _samples(pod, "goodput_requests_total")
    ttft_before = sum(_samples(pod, "goodput_request_ttft_seconds_count").values())
    client = openai.OpenAI(base_url=f"{pod.gateway_url}/v1", api_key="unused", max_retries=0)
    prompt = "Which colour is the sky?"
    stream = client.chat.completions.create(
        model=pod.spec.served_model_name,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    usage = chunks[-1].usage
    assert usage is not None and 1 <= usage.completion_tokens <= 8
    assert text

    after = _samples(pod, "goodput_requests_total")
    grown = {labels: value - before.get(labels, 0.0) for labels, value in after.items()}
    counted = {labels: delta for labels, delta in grown.items() if delta}
    assert len(counted) == 1, counted
    ((labels, delta),) = counted.items()
    assert delta == 1.0
    assert dict(labels)["outcome"] in {"met_slo", "missed_slo"}
    assert dict(labels)["deployment"] == pod.spec.deployment
    assert sum(_samples(pod, "goodput_request_ttft_seconds_count").values()) == ttft_before + 1

    records = [json.loads(line) for line in pod.request_log.read_text().splitlines()]
    assert any(r["prompt"].endswith(prompt) and r["output_tokens"] == usage.completion_tokens
               for r in records)  # fmt: skip


def test_up_again_reuses_the_running_pair(started: tuple[LocalPod, UpResult]) -> None:
    pod, _ = started
    pids = {name: pod.process(name) for name in (ENGINE, GATEWAY)}
    again = LocalPod(pod.name).up()  # no spec: the recorded one
    assert again.reused == {ENGINE, GATEWAY}
    assert {name: pod.process(name) for name in (ENGINE, GATEWAY)} == pids


def test_a_dead_gateway_is_replaced_and_the_engine_kept(
    started: tuple[LocalPod, UpResult],
) -> None:
    pod, _ = started
    engine, gateway = pod.process(ENGINE), pod.process(GATEWAY)
    assert engine is not None and gateway is not None
    os.killpg(gateway.pid, signal.SIGKILL)
    # SIGKILL is asynchronous: the gateway is dead (the premise) only once its whole group is
    # gone, and until then its listening socket still holds the port the replacement needs.
    gone_by = time.monotonic() + 30
    while (gateway.alive() or group_members(gateway.pid)) and time.monotonic() < gone_by:
        time.sleep(0.05)
    assert not gateway.alive() and not group_members(gateway.pid)
    result = pod.up()
    assert result.reused == {ENGINE}
    assert pod.process(ENGINE) == engine
    replaced = pod.process(GATEWAY)
    assert replaced is not None and replaced.pid != gateway.pid and replaced.alive()
    assert pod.chat("Still there?", max_tokens=4).completion_tokens >= 1


def test_cli_pod_up_shows_the_answer_metrics_and_curl(started: tuple[LocalPod, UpResult]) -> None:
    pod, _ = started
    result = CliRunner().invoke(dev, ["pod", "up", "--name", pod.name])
    assert result.exit_code == 0, result.output
    assert "assistant:" in result.output
    assert 'goodput_requests_total{deployment="tiny-llama"' in result.output
    assert "goodput_request_ttft_seconds_count" in result.output
    assert f"curl -s {pod.gateway_url}/v1/chat/completions" in result.output
    status = CliRunner().invoke(dev, ["pod", "status", "--name", pod.name])
    assert status.exit_code == 0 and "ready: yes" in status.output


def test_down_leaves_no_process_behind(started: tuple[LocalPod, UpResult]) -> None:
    pod, _ = started
    groups = [record.pid for record in map(pod.process, (ENGINE, GATEWAY)) if record]
    assert len(groups) == 2
    assert group_members(groups[0])  # the engine's group holds its engine-core worker too
    # `goodput dev down` stops the pod of the same name (there is no cluster of that name).
    result = CliRunner().invoke(dev, ["down", "--name", pod.name])
    assert result.exit_code == 0, result.output
    assert f"local serving pod {pod.name} stopped" in result.output
    assert [group_members(pgid) for pgid in groups] == [[], []]
    assert not pod.status().running and not pod.status().ready
    assert pod.down() == []
    result = CliRunner().invoke(dev, ["pod", "status", "--name", pod.name])
    assert result.exit_code == 1 and "ready: no" in result.output
