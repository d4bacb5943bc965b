"""The ``vllm_engine`` fixture is a real vLLM CPU engine serving the tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from tokenizers import Tokenizer

from goodput.dev.engine import EngineProcess

pytestmark = pytest.mark.engine


def _post(engine: EngineProcess, path: str, body: dict[str, object]) -> dict[str, object]:
    response = httpx.post(f"{engine.url}/v1/{path}", json=body, timeout=120)
    response.raise_for_status()
    payload: dict[str, object] = response.json()
    return payload


def test_completions_answer(vllm_engine: EngineProcess) -> None:
    body = {"model": "tiny-llama", "prompt": "The quick brown fox", "max_tokens": 5}
    payload = _post(vllm_engine, "completions", body)
    choice = payload["choices"][0]  # type: ignore[index]
    assert isinstance(choice["text"], str)
    assert choice["finish_reason"] in {"length", "stop"}
    assert 1 <= payload["usage"]["completion_tokens"] <= 5  # type: ignore[index]


def test_chat_completions_apply_the_tiny_models_template(
    vllm_engine: EngineProcess, tiny_model: Path
) -> None:
    body = {
        "model": "tiny-llama",
        "messages": [{"role": "user", "content": "Name three colours."}],
        "max_tokens": 4,
    }
    payload = _post(vllm_engine, "chat/completions", body)
    message = payload["choices"][0]["message"]  # type: ignore[index]
    assert message["role"] == "assistant"
    assert isinstance(message["content"], str)
    # The prompt the engine saw is the template's rendering, token for token.
    rendered = "<|user|>\nName three colours.</s>\n<|assistant|>\n"
    tokenizer = Tokenizer.from_file(str(tiny_model / "tokenizer.json"))
    expected = len(tokenizer.encode(rendered, add_special_tokens=False).ids)
    assert payload["usage"]["prompt_tokens"] == expected  # type: ignore[index]


@pytest.mark.parametrize("max_tokens", [1, 17, 64])
def test_ignore_eos_generates_exactly_max_tokens(
    vllm_engine: EngineProcess, max_tokens: int
) -> None:
    body = {
        "model": "tiny-llama",
        "prompt": "Count:",
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    chunks: list[dict[str, object]] = []
    with httpx.stream(
        "POST", f"{vllm_engine.url}/v1/completions", json=body, timeout=120
    ) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                chunks.append(json.loads(line.removeprefix("data: ")))
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens"] == max_tokens  # type: ignore[index]
    finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]  # type: ignore[index]
    assert finish[-1] == "length"


def test_kv_cache_tokens_match_the_configured_space(
    vllm_engine: EngineProcess, tiny_model: Path
) -> None:
    facts = vllm_engine.facts
    config = json.loads((tiny_model / "config.json").read_text())
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    # K and V, per layer, per KV head, in bfloat16 (the CPU platform's choice for float32 weights).
    bytes_per_token = 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim * 2
    budget_tokens = vllm_engine.settings.kv_cache_bytes // bytes_per_token
    assert facts.block_size > 0
    assert 0.9 * budget_tokens <= facts.kv_cache_tokens <= budget_tokens
