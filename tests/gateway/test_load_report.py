"""The gateway's load report (``GET /v1/goodput/load``): what the cluster router reads to pick a
replica, against the fake engine on loopback."""

from __future__ import annotations

import asyncio
import json

import httpx

from goodput.api.load_report import LOAD_PATH, LoadReport
from goodput.serving.engine_state import parse_engine_metrics
from goodput.serving.openai_request import parse_request

from .conftest import GatewayFactory


def test_an_idle_gateway_reports_ready_and_empty(gateway_for: GatewayFactory) -> None:
    _, url = gateway_for(maxConcurrency=4)
    report = LoadReport.model_validate(httpx.get(f"{url}{LOAD_PATH}").json())
    assert report.ready and not report.draining
    assert (report.queue, report.inflight) == (0, 0)
    assert report.limit == 4
    assert report.predicted_wait_s == 0.0
    assert report.ttft_objective_s == 2.0
    assert report.kv_usage == 0.25
    assert not report.saturated
    assert report.prefill_s_per_token is None  # no first token seen yet
    assert (report.requests, report.met_slo, report.finished, report.output_tokens) == (0, 0, 0, 0)


async def test_a_busy_gateway_reports_its_queue_and_saturation(
    gateway_for: GatewayFactory,
) -> None:
    # A lenient TTFT objective: the waiting requests queue rather than being turned away.
    _, url = gateway_for(maxConcurrency=2, slo={"ttftMs": 600_000, "tpotMs": 200})
    body = {"model": "tiny", "prompt": "x", "max_tokens": 400}
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        requests = [
            asyncio.create_task(client.post("/v1/completions", json=body)) for _ in range(5)
        ]
        report = None
        for _ in range(200):
            report = LoadReport.model_validate((await client.get(LOAD_PATH)).json())
            if report.queue >= 3:
                break
            await asyncio.sleep(0.01)
        assert report is not None
        assert (report.inflight, report.queue) == (2, 3)
        assert report.saturated
        assert report.predicted_wait_s is None or report.predicted_wait_s > 0
        responses = await asyncio.gather(*requests)
        assert all(r.status_code == 200 for r in responses)
        after = LoadReport.model_validate((await client.get(LOAD_PATH)).json())
        assert (after.queue, after.inflight) == (0, 0)
        # The counters the autoscaler takes rates of: every request judged once.
        assert (after.requests, after.finished) == (5, 5)
        assert after.met_slo <= 5
        usage = [r.json()["usage"] for r in responses]
        assert after.output_tokens == sum(u["completion_tokens"] for u in usage)
        assert after.prompt_tokens >= 5


def test_the_prefill_rate_is_reported_once_prompts_of_several_sizes_were_served(
    gateway_for: GatewayFactory,
) -> None:
    """The router prices a replica's missing prefix with it (``router.stages.PrefixKnowledge``):
    the slope of the gateway's first-token time over the prompt tokens prefilling."""
    gateway, url = gateway_for()
    for i in range(12):
        prompt = "word " * (20 + 150 * (i % 4))
        httpx.post(
            f"{url}/v1/completions",
            json={"model": "tiny", "prompt": prompt, "max_tokens": 2, "stream": True},
            timeout=30,
        ).raise_for_status()
    report = LoadReport.model_validate(httpx.get(f"{url}{LOAD_PATH}").json())
    fit = gateway.service.prefill.fit
    assert fit is not None
    assert report.prefill_s_per_token == fit.slope_s >= 0.0
    assert "prefillSPerToken" in httpx.get(f"{url}{LOAD_PATH}").json()


def test_what_the_engine_was_sent_is_reported_and_prices_the_next_prompt(
    gateway_for: GatewayFactory,
) -> None:
    """Each dispatched prompt's blocks go into the gateway's record of what its engine holds:
    reported to routers (``prefixSketch``) and used to price the next prompt's prefill (the
    dispatcher's prefill model learns on those tokens, not on cached ones)."""
    gateway, url = gateway_for()
    context = "You are the assistant of one tenant; its documents follow. " * 30
    body = {"model": "tiny", "prompt": context + "First question?", "max_tokens": 2}
    httpx.post(f"{url}/v1/completions", json=body, timeout=30).raise_for_status()
    sketch = LoadReport.model_validate(httpx.get(f"{url}{LOAD_PATH}").json()).prefix_sketch
    assert sketch is not None and sketch.blocks == len(context + "First question?") // 64
    follow = parse_request(
        json.dumps({**body, "prompt": context + "Second question?"}).encode(),
        "completions",
        (),
        None,
    )
    uncached = gateway.uncached_tokens(follow)
    assert uncached is not None
    assert uncached < 0.1 * follow.prompt_tokens_estimate  # the context is held


def test_engine_prefix_cache_counters_are_read_from_vllm_metrics() -> None:
    text = (
        'vllm:prefix_cache_queries_total{engine="0",model_name="m"} 1200.0\n'
        'vllm:prefix_cache_hits_total{engine="0",model_name="m"} 800.0\n'
        'vllm:prefix_cache_queries_total{engine="1",model_name="m"} 300.0\n'
        'vllm:prefix_cache_hits_total{engine="1",model_name="m"} 100.0\n'
    )
    snapshot = parse_engine_metrics(text)
    assert (snapshot.prefix_cache_queries, snapshot.prefix_cache_hits) == (1500.0, 900.0)
