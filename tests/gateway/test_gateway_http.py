"""The gateway over HTTP with the official ``openai`` client, in front of the fake engine:
streaming and not, usage handling, OpenAI-format errors, cancellation, metrics, readiness."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from .conftest import GatewayFactory
from .fake_engine import FakeEngine


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def test_chat_non_streaming_returns_usage(gateway_for: GatewayFactory) -> None:
    _, url = gateway_for()
    reply = client(url).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    assert reply.choices[0].message.content == " tok" * 5
    assert reply.usage is not None and reply.usage.completion_tokens == 5


def test_streaming_strips_usage_the_client_did_not_ask_for(
    gateway_for: GatewayFactory, fake_engine: tuple[FakeEngine, str]
) -> None:
    _, url = gateway_for()
    chunks = list(
        client(url).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4, stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == " tok" * 4
    assert all(c.usage is None for c in chunks)
    # ...while the engine was asked for it, so the gateway could count tokens.
    assert fake_engine[0].received[-1]["stream_options"] == {"include_usage": True}


def test_streaming_keeps_usage_the_client_asked_for(gateway_for: GatewayFactory) -> None:
    _, url = gateway_for()
    chunks = list(
        client(url).completions.create(
            model="tiny",
            prompt="once upon",
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


def test_bad_requests_get_openai_errors(gateway_for: GatewayFactory) -> None:
    _, url = gateway_for()
    with pytest.raises(openai.NotFoundError) as not_found:
        client(url).chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "x"}]
        )
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_long:
        client(url).completions.create(model="tiny", prompt="x", max_tokens=10**6)
    assert too_long.value.param == "max_tokens"
    raw = httpx.post(f"{url}/v1/chat/completions", content=b"{not json")
    assert raw.status_code == 400
    assert raw.json()["error"]["type"] == "invalid_request_error"
    missing = httpx.post(f"{url}/v1/chat/completions", json={"model": "tiny"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "messages"
    bad_header = httpx.post(
        f"{url}/v1/completions",
        json={"model": "tiny", "prompt": "x"},
        headers={"x-goodput-priority": "platinum"},
    )
    assert bad_header.status_code == 400
    assert httpx.get(f"{url}/nowhere").json()["error"]["message"] == "Not Found"


def test_client_disconnect_aborts_the_upstream_request(
    gateway_for: GatewayFactory, fake_engine: tuple[FakeEngine, str]
) -> None:
    engine, _ = fake_engine
    gateway, url = gateway_for()
    stream = client(url).completions.create(
        model="tiny", prompt="x", max_tokens=100_000 // 100, stream=True
    )
    next(iter(stream))
    stream.close()
    deadline = time.monotonic() + 5
    while (engine.aborted == 0 or gateway.dispatcher.inflight) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert engine.aborted == 1
    assert gateway.dispatcher.inflight == 0
    # The tokens it did get were service: judged and counted, not lost.
    text = httpx.get(f"{url}/metrics").text
    assert 'goodput_output_tokens_count{deployment="test",model="tiny"} 1.0' in text


def test_engine_failure_mid_stream_ends_with_an_error_event(
    gateway_for: GatewayFactory, fake_engine: tuple[FakeEngine, str]
) -> None:
    fake_engine[0].fail_after_tokens = 2
    _, url = gateway_for()
    with pytest.raises(openai.APIError, match="engine"):
        for _ in client(url).completions.create(
            model="tiny", prompt="x", max_tokens=10, stream=True
        ):
            pass


def test_engine_down_gives_503(gateway_for: GatewayFactory) -> None:
    _, url = gateway_for(engineUrl="http://127.0.0.1:9")
    with pytest.raises(openai.InternalServerError) as err:
        client(url).completions.create(model="tiny", prompt="x", max_tokens=2)
    assert err.value.status_code == 503
    assert httpx.get(f"{url}/readyz").status_code == 503
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_metrics_follow_the_contract(gateway_for: GatewayFactory) -> None:
    _, url = gateway_for()
    c = client(url)
    for _ in c.completions.create(model="tiny", prompt="x", max_tokens=3, stream=True):
        pass
    c.completions.create(model="tiny", prompt="x", max_tokens=3)
    text = httpx.get(f"{url}/metrics").text
    labels = 'deployment="test",model="tiny"'
    for series in (
        f'goodput_request_ttft_seconds_count{{{labels},priority="default"}} 1.0',
        f'goodput_request_e2e_seconds_count{{{labels},priority="default"}} 2.0',
        f'goodput_requests_total{{{labels},outcome="met_slo",priority="default"}} 2.0',
        f"goodput_generated_tokens_total{{{labels}}} 6.0",
        f"goodput_output_tokens_count{{{labels}}} 2.0",
        f"goodput_slo_attainment_ratio{{{labels}}} 1.0",
        f"goodput_engine_up{{{labels}}} 1.0",
        f"goodput_engine_running_requests{{{labels}}}",
        f"goodput_engine_kv_cache_usage_ratio{{{labels}}} 0.25",
        f"goodput_queue_depth{{{labels}}} 0.0",
        f"goodput_inflight_requests{{{labels}}} 0.0",
    ):
        assert series in text, series


def test_queue_full_answers_429_with_retry_after(gateway_for: GatewayFactory) -> None:
    # A TTFT objective the queued request can meet: this tests the queue bound.
    gateway, url = gateway_for(maxQueueLength=1, slo={"ttftMs": 600_000, "tpotMs": 200})
    # Teach the dispatcher a limit of one request at a time.
    for _ in range(10):
        gateway.service.step.observe(1.0, 0.15)
        gateway.service.step.observe(3.0, 0.45)

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as http:
            body = {"model": "tiny", "prompt": "x", "max_tokens": 300}
            tasks = [asyncio.create_task(http.post("/v1/completions", json=body))]
            await asyncio.sleep(0.05)
            tasks.append(asyncio.create_task(http.post("/v1/completions", json=body)))
            await asyncio.sleep(0.05)
            tasks.append(asyncio.create_task(http.post("/v1/completions", json=body)))
            return list(await asyncio.gather(*tasks))

    first, second, third = asyncio.run(burst())
    assert first.status_code == 200 and second.status_code == 200
    assert third.status_code == 429
    assert third.headers["retry-after"].isdigit()
    assert third.json()["error"]["code"] == "queue_full"
