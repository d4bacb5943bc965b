"""Parsing what the engine says about itself."""

from __future__ import annotations

import pytest

from goodput.dev.engine import EngineFacts, parse_cache_config, parse_logged_kv_tokens


def test_cache_config_is_read_from_the_info_metric() -> None:
    metrics = (
        "# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig\n"
        "# TYPE vllm:cache_config_info gauge\n"
        'vllm:cache_config_info{block_size="128",cache_dtype="auto",num_cpu_blocks="None",'
        'num_gpu_blocks="1024",prefix_caching_hash_algo="sha256"} 1.0\n'
    )
    assert parse_cache_config(metrics) == (128, 1024)
    assert EngineFacts(128, 1024, 20.0).kv_cache_tokens == 131072


def test_missing_cache_metric_is_an_error() -> None:
    with pytest.raises(ValueError, match="cache_config_info"):
        parse_cache_config("vllm:num_requests_running 0.0\n")


def test_kv_capacity_is_read_from_the_log_when_statistics_are_off() -> None:
    line = (
        "(EngineCore pid=21133) INFO 11-21 14:57:58 [kv_cache_utils.py:2327] CPU KV cache size: "
        "16,384 tokens, Maximum concurrency for 2,048 tokens per request: 8.00x\n"
    )
    assert parse_logged_kv_tokens("noise\n" + line) == 16_384
    assert EngineFacts(None, None, 1.0, logged_kv_tokens=16_384).kv_cache_tokens == 16_384
    assert EngineFacts(16, 1024, 1.0).kv_cache_tokens == 16_384
    with pytest.raises(ValueError, match="KV cache size"):
        parse_logged_kv_tokens("no such line")
