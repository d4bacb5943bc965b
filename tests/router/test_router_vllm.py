"""The router over two real vLLM CPU engines (prefix caching on, as vLLM 0.32 defaults), each
behind its own gateway: a multi-turn conversation keeps landing on the replica that holds its
prefix, as the engines' own prefix-cache counters show, while another conversation is free to
land elsewhere."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway.conftest import running_server

from goodput.api.gateway_config import GatewayConfig
from goodput.api.router_config import RouterConfig
from goodput.dev.engine import EngineProcess, EngineSettings
from goodput.dev.engine import prefix_cache_tokens as prefix_counters
from goodput.router.app import create_app as create_router
from goodput.serving.app import create_app as create_gateway
from goodput.serving.gateway import Gateway

pytestmark = [pytest.mark.engine, pytest.mark.timeout(900)]

MODEL = "tiny-llama"
SYSTEM = (
    "You are a careful assistant for a platform team. Answer in short sentences, cite the "
    "runbook section you rely on, and never guess a number you were not given. "
) * 3


@pytest.fixture(scope="module")
def two_replicas(
    vllm_engine: EngineProcess,
    engine_python: Path,
    tiny_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[tuple[str, str]]]:
    """(gateway URL, engine URL) of two replicas: the session's engine and one more."""
    settings = EngineSettings(model=tiny_model, served_model_name=MODEL)
    log = tmp_path_factory.mktemp("second-engine") / "engine.log"
    with ExitStack() as stack:
        second = stack.enter_context(EngineProcess(settings, python=engine_python, log_path=log))
        out = []
        for engine in (vllm_engine, second):
            gateway = Gateway(
                GatewayConfig.model_validate(
                    {
                        "deployment": "router-it",
                        "servedModelName": MODEL,
                        "engineUrl": engine.url,
                        "slo": {"ttftMs": 30_000, "tpotMs": 2000},
                    }
                ),
                engine_metrics_interval_s=1.0,
            )
            url, _ = stack.enter_context(running_server(create_gateway(gateway)))
            out.append((url, engine.url))
        yield out


def converse(router: str, user: str, turns: int) -> None:
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
    for turn in range(turns):
        messages.append({"role": "user", "content": f"{user}: step {turn} of the rollout?"})
        reply = httpx.post(
            f"{router}/v1/chat/completions",
            json={"model": MODEL, "messages": messages, "max_tokens": 12, "temperature": 0},
            timeout=120,
        )
        reply.raise_for_status()
        answer = reply.json()["choices"][0]["message"]["content"]
        messages.append({"role": "assistant", "content": answer})


def test_a_conversation_stays_where_its_prefix_is_cached(
    two_replicas: list[tuple[str, str]],
) -> None:
    config = RouterConfig.model_validate(
        {"endpoints": [g for g, _ in two_replicas], "pollIntervalS": 0.2}
    )
    app = create_router(config)
    with running_server(app) as (router, _):
        before = [prefix_counters(e) for _, e in two_replicas]
        converse(router, "alice", turns=6)
        after = [prefix_counters(e) for _, e in two_replicas]
        queried = [a[0] - b[0] for a, b in zip(after, before, strict=True)]
        hits = [a[1] - b[1] for a, b in zip(after, before, strict=True)]
        home = max(range(2), key=lambda i: queried[i])
        # Every turn went to one replica: the other engine saw none of the conversation.
        assert queried[1 - home] == 0, (queried, hits)
        # Turns 2..6 resend the history: the engine found most of it cached.
        assert hits[home] >= 0.5 * queried[home], (queried, hits)
        metrics = httpx.get(f"{router}/metrics").text
        assert "goodput_router_prefix_predicted_hit_blocks_total" in metrics
        predicted = next(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("goodput_router_prefix_predicted_hit_blocks_total{")
        )
        assert predicted > 0
