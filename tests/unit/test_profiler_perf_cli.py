"""``goodput profile memory|latency|capacity`` print what the modules compute."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from goodput.profiler.cli import profile


def test_memory_prints_plan_and_flags() -> None:
    result = CliRunner().invoke(
        profile,
        ["memory", "llama-3-70b", "--tp", "4", "--gpu", "NVIDIA-H100-80GB-HBM3",
         "--max-model-len", "8192", "--concurrency", "32"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "70.55B" in result.output
    assert "--tensor-parallel-size=4" in result.output
    assert "479,136" in result.output  # KV tokens per GPU at utilization 0.9


def test_memory_reads_a_config_json_and_refuses_what_cannot_fit(tmp_path: Path) -> None:
    config = {"model_type": "llama", "hidden_size": 8192, "intermediate_size": 28672,
              "num_hidden_layers": 80, "num_attention_heads": 64, "num_key_value_heads": 8,
              "vocab_size": 128256, "max_position_embeddings": 8192}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = CliRunner().invoke(profile, ["memory", str(tmp_path), "--gpu", "L4"])
    assert result.exit_code != 0
    assert "offers" in result.output


def test_capacity_with_fixed_lengths() -> None:
    result = CliRunner().invoke(
        profile,
        ["capacity", "llama-3-8b", "--gpu", "H100-80GB", "--slo-ttft-ms", "1000",
         "--slo-tpot-ms", "50", "--prompt-tokens", "1024", "--output-tokens", "256"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "max requests/s within SLO" in result.output


def test_latency_eval_reports_every_split() -> None:
    result = CliRunner().invoke(profile, ["latency", "eval"])
    assert result.exit_code == 0, result.output
    for split in ("random 25% held out", "unseen GPU", "unseen TP", "whole model"):
        assert split in result.output
