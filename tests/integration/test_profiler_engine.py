"""The memory model against what the real vLLM CPU engine allocates for the tiny test model."""

from __future__ import annotations

import json

import pytest

from goodput.dev.engine import EngineProcess
from goodput.profiler.architectures import ModelArchitecture
from goodput.profiler.memory import cpu_kv_cache_tokens

pytestmark = pytest.mark.engine


def test_kv_cache_tokens_match_the_engine(vllm_engine: EngineProcess) -> None:
    config = json.loads((vllm_engine.settings.model / "config.json").read_text())
    arch = ModelArchitecture.from_hf_config(config)
    facts = vllm_engine.facts
    predicted = cpu_kv_cache_tokens(
        arch, vllm_engine.settings.kv_cache_bytes, block_tokens=facts.block_size
    )
    assert facts.kv_cache_tokens == predicted
