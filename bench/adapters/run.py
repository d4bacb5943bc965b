"""N LoRA adapters on one base model against one deployment per adapter (issue #12).

Two parts, written to ``bench/results/adapters.json`` (``summary``: ``{contender: {metric:
value}}``) and ``adapters.png``:

1. **GPUs and memory, real GPU types** (the profiler): N adapters of a Llama-3-8B, each with
   ``--rate-per-adapter`` requests/s, within one SLO. *Dedicated*: each adapter is its own
   deployment, sized by the profiler's capacity model (at least one replica each). *Shared*: one
   deployment of the base with ``spec.lora`` (maxLoras slots, maxRank, maxCpuLoras = N), whose
   replicas lose the LoRA reservation from their KV cache (``lora_memory``) and run slower by the
   LoRA overhead measured in part 2, sized for the sum of the adapters' demand. Memory is what the
   placement books: whole GPUs.
2. **Measured on the CPU engine**: one vLLM CPU engine serving the tiny Llama with runtime LoRA
   (the operator's arguments for ``spec.lora``) behind a Goodput gateway whose catalog holds 32
   generated adapters, under an open-loop load spread evenly over N adapters; against one
   deployment per adapter, which sees 1/N of that load on an engine without LoRA (N such engines
   would not fit this machine; each serves what one of them would). Attainment and goodput at
   the same SLO; cold loads (the gateway's ``goodput_adapter_load_seconds``) and the first
   request's TTFT against warm ones.

Run from the repository root: ``.venv/bin/python bench/adapters/run.py``.
"""

from __future__ import annotations

import asyncio
import json
import math
import platform
import random
import re
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import click
import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(1, str(REPO / "bench" / "serving"))

from loadgen import SLO, Outcome, _one  # noqa: E402
from report import summarize  # noqa: E402
from workload import Corpus, Request, arrival_times, shared_data_dir, trace_gaps  # noqa: E402

from goodput.dev.engine import EngineEnv, EngineProcess, EngineSettings  # noqa: E402
from goodput.dev.processes import free_port  # noqa: E402
from goodput.dev.tiny_lora import TinyLoraSpec, ensure_tiny_lora  # noqa: E402
from goodput.dev.tiny_model import ensure_tiny_model  # noqa: E402
from goodput.profiler import catalog  # noqa: E402
from goodput.profiler.capacity import SLO as ProfilerSLO  # noqa: E402
from goodput.profiler.capacity import LengthDistribution, capacity  # noqa: E402
from goodput.profiler.memory import lora_memory  # noqa: E402

MODEL = "tiny-llama"
CATALOG_SIZE = 32
GPU_TYPES = ("L4", "A10G", "L40S", "A100-80GB", "H100-80GB")
UTILIZATION = 0.9


# -- part 1: the profiler --------------------------------------------------------------------


def gpu_budget(
    adapters: int,
    rate_per_adapter: float,
    slo: ProfilerSLO,
    lengths: LengthDistribution,
    lora_overhead: float,
    *,
    max_loras: int,
    max_rank: int,
    arch_name: str = "llama-3-8b",
) -> dict[str, dict[str, Any]]:
    """GPUs and GPU memory of dedicated and shared deployments on each GPU type."""
    arch = catalog.get(arch_name)
    out: dict[str, dict[str, Any]] = {}
    for name in GPU_TYPES:
        gpu = catalog.gpu(name)
        base = capacity(arch, gpu, slo=slo, lengths=lengths, gpu_memory_utilization=UTILIZATION)
        lora = lora_memory(arch, max_loras=max_loras, max_rank=max_rank, max_cpu_loras=adapters)
        reserved = lora.gpu_bytes_per_gpu / gpu.memory_bytes
        shared_cap = capacity(
            arch, gpu, slo=slo, lengths=lengths, gpu_memory_utilization=UTILIZATION - reserved
        )
        shared_rps = shared_cap.max_rps / lora_overhead
        if base.max_rps <= 0 or shared_rps <= 0:
            out[name] = {"fits": False, "why": "no replica meets the SLO at tp=1"}
            continue
        dedicated = adapters * max(1, math.ceil(rate_per_adapter / base.max_rps))
        shared = max(1, math.ceil(adapters * rate_per_adapter / shared_rps))
        out[name] = {
            "fits": True,
            "replica_rps_dedicated": round(base.max_rps, 3),
            "replica_rps_shared": round(shared_rps, 3),
            "lora_reserved_gib": round(lora.gpu_bytes_per_gpu / 2**30, 3),
            "kv_tokens_dedicated": base.kv_cache_tokens,
            "kv_tokens_shared": shared_cap.kv_cache_tokens,
            "host_cache_gib": round(lora.host_bytes / 2**30, 2),
            "gpus_dedicated": dedicated,
            "gpus_shared": shared,
            "memory_gib_dedicated": round(dedicated * gpu.memory_gib, 1),
            "memory_gib_shared": round(shared * gpu.memory_gib, 1),
            "memory_ratio": round(shared / dedicated, 4),
        }
    return out


# -- part 2: the CPU engine ------------------------------------------------------------------


def lora_settings(model: Path, max_loras: int) -> EngineSettings:
    """The engine as the operator starts it for ``spec.lora`` (capacity only, no adapter)."""
    return EngineSettings(
        model=model,
        served_model_name=MODEL,
        log_stats=False,
        extra_args=(
            "--no-enable-prefix-caching",
            "--enable-lora",
            "--max-loras",
            str(max_loras),
            "--max-lora-rank",
            "8",
            "--max-cpu-loras",
            str(CATALOG_SIZE),
        ),
        extra_env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"},
    )


def adapter_names() -> list[str]:
    return [f"tenant-{i:02d}" for i in range(CATALOG_SIZE)]


def write_catalog(path: Path) -> None:
    entries = [
        {"name": n, "path": str(ensure_tiny_lora(TinyLoraSpec(seed=1000 + i)))}
        for i, n in enumerate(adapter_names())
    ]
    path.write_text(json.dumps({"adapters": entries}))


@contextmanager
def gateway(engine: EngineProcess, workdir: Path, slo: SLO, *, lora: bool) -> Iterator[str]:
    """``goodput serve`` in front of ``engine`` (its own process, as in a pod), scheduling for
    the benchmark's SLO (a request's headers may only loosen it)."""
    import subprocess

    config: dict[str, Any] = {
        "deployment": "bench-adapters",
        "servedModelName": MODEL,
        "engineUrl": engine.url,
        "slo": {"ttftMs": slo.ttft_s * 1000, "tpotMs": slo.tpot_s * 1000},
        "kvCacheTokens": engine.facts.kv_cache_tokens,
    }
    if lora:
        catalog_path = workdir / "adapters.json"
        write_catalog(catalog_path)
        config["lora"] = {"catalogPath": str(catalog_path), "maxLoaded": CATALOG_SIZE}
    (workdir / "gateway.json").write_text(json.dumps(config))
    port = free_port()
    log = (workdir / f"gateway-{port}.log").open("w")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "goodput",
            "serve",
            "--config",
            str(workdir / "gateway.json"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"gateway did not start; see {log.name}")
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


async def replay_models(
    url: str,
    requests: Sequence[Request],
    models: Sequence[str],
    arrivals: Sequence[float],
    slo: SLO,
) -> list[Outcome]:
    """Open loop: each request to its own model (an adapter or the base) at its time."""
    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=len(requests))
    async with httpx.AsyncClient(timeout=httpx.Timeout(180), limits=limits) as client:
        t0 = time.perf_counter() + 0.05
        return list(
            await asyncio.gather(
                *(
                    _one(
                        client,
                        f"{url}/v1/chat/completions",
                        model,
                        request,
                        slo,
                        send_at=float(at),
                        t0=t0,
                        enforce="max-tokens",
                        oracle=False,
                        timeout_s=180.0,
                    )
                    for request, model, at in zip(requests, models, arrivals, strict=True)
                )
            )
        )


def metric_sum(url: str, name: str) -> tuple[float, float]:
    """``(sum, count)`` of a gateway histogram over all its series."""
    total = count = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith(f"{name}_sum{{"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith(f"{name}_count{{"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


def run_cell(
    url: str,
    corpus: Corpus,
    gaps: np.ndarray,
    models: list[str],
    rate: float,
    count: int,
    slo: SLO,
    seed: int,
) -> tuple[dict[str, Any], list[Outcome]]:
    requests = corpus.take(count, offset=seed * 97)
    rng = random.Random(seed)
    chosen = [models[rng.randrange(len(models))] for _ in requests]
    arrivals = arrival_times(gaps, count, rate, seed)
    outcomes = asyncio.run(replay_models(url, requests, chosen, list(arrivals), slo))
    return summarize(outcomes, slo, rate), outcomes


def cold_load_probe(url: str, corpus: Corpus, names: list[str], slo: SLO) -> dict[str, Any]:
    """One request at a time: the first for each adapter (a cold load) against a second one."""
    before = metric_sum(url, "goodput_adapter_load_seconds")
    cold: list[float] = []
    warm: list[float] = []
    for i, name in enumerate(names):
        request = corpus.take(1, offset=5000 + i)[0]
        for bucket in (cold, warm):
            outcome = asyncio.run(replay_models(url, [request], [name], [0.0], slo))[0]
            if outcome.ttft_s is not None:
                bucket.append(outcome.ttft_s)
    after = metric_sum(url, "goodput_adapter_load_seconds")
    loads = after[1] - before[1]
    return {
        "adapters": len(names),
        "loads": int(loads),
        "load_ms_mean": round(1000 * (after[0] - before[0]) / loads, 2) if loads else None,
        "first_request_ttft_ms_median": round(1000 * statistics.median(cold), 1),
        "warm_request_ttft_ms_median": round(1000 * statistics.median(warm), 1),
    }


def measure_unloaded(url: str, corpus: Corpus) -> tuple[float, float]:
    """TTFT and TPOT medians of single requests on the base model, straight to the engine:
    the scale of the SLO every contender is judged by."""
    ttft, tpot = [], []
    loose = SLO(60.0, 10.0)
    for i in range(6):
        request = corpus.take(1, offset=9000 + i)[0]
        outcome = asyncio.run(replay_models(url, [request], [MODEL], [0.0], loose))[0]
        if outcome.ttft_s is not None:
            ttft.append(outcome.ttft_s)
        if outcome.tpot_s is not None:
            tpot.append(outcome.tpot_s)
    return statistics.median(ttft), statistics.median(tpot)


def measure_cpu(
    rate: float, count: int, max_loras: int, output_scale: float, seed: int
) -> tuple[dict[str, dict[str, Any]], dict[str, Any], dict[str, float], dict[str, Any]]:
    """Part 2: the CPU engine cells, the cold-load probe, the SLO and the setup."""
    data = shared_data_dir()
    model_dir = ensure_tiny_model()
    corpus = Corpus.load(
        data,
        model_dir / "tokenizer.json",
        model="gpt4_1106_preview",
        output_scale=output_scale,
        max_model_len=2048,
        seed=seed,
    )
    gaps = trace_gaps(data / "traces" / "azure_llm_2023_conv.csv")
    python = EngineEnv().ensure()
    workdir = Path(f"/tmp/goodput-bench-adapters-{seed}")
    workdir.mkdir(parents=True, exist_ok=True)
    cells: dict[str, dict[str, Any]] = {}
    with ExitStack() as stack:
        engine = stack.enter_context(
            EngineProcess(
                lora_settings(model_dir, max_loras),
                python=python,
                log_path=workdir / "lora-engine.log",
            )
        )
        unloaded_ttft, unloaded_tpot = measure_unloaded(engine.url, corpus)
        slo = SLO(ttft_s=max(0.5, 6 * unloaded_ttft), tpot_s=max(0.05, 3 * unloaded_tpot))
        url = stack.enter_context(gateway(engine, workdir, slo, lora=True))
        names = adapter_names()
        probe = cold_load_probe(url, corpus, names[:8], slo)
        for n in (8, 32):
            cells[f"one-base-{n}"], _ = run_cell(
                url, corpus, gaps, names[:n], rate, count, slo, seed
            )
            cells[f"one-base-{n}"]["engine_adapters"] = n
        cells["one-base-base-model"], _ = run_cell(
            url, corpus, gaps, [MODEL], rate, count, slo, seed
        )
        lora_engine_start = engine.facts.startup_seconds
        stack.close()  # one engine at a time on this machine
        plain = EngineSettings(
            model=model_dir,
            served_model_name=MODEL,
            log_stats=False,
            extra_args=("--no-enable-prefix-caching",),
        )
        engine = stack.enter_context(
            EngineProcess(plain, python=python, log_path=workdir / "plain-engine.log")
        )
        url = stack.enter_context(gateway(engine, workdir, slo, lora=False))
        for n in (8, 32):
            # What one of N dedicated deployments sees: 1/N of the load (few requests: at
            # that rate the engine is nearly idle, and a long replay would say no more).
            cells[f"dedicated-{n}"], _ = run_cell(
                url, corpus, gaps, [MODEL], rate / n, 16 if n <= 8 else 10, slo, seed
            )
        cells["base-only"], _ = run_cell(url, corpus, gaps, [MODEL], rate, count, slo, seed)
    slo_out = {"ttft_s": slo.ttft_s, "tpot_s": slo.tpot_s}
    setup = {
        "rate": rate,
        "count": count,
        "output_scale": output_scale,
        "seed": seed,
        "max_loras": max_loras,
        "max_cpu_loras": CATALOG_SIZE,
        "adapter_rank": 8,
        "lora_engine_start_s": lora_engine_start,
        "unloaded_ttft_ms": round(1000 * unloaded_ttft, 1),
        "unloaded_tpot_ms": round(1000 * unloaded_tpot, 2),
        "machine": f"{platform.machine()} {_cpus()} CPUs",
    }
    return cells, probe, slo_out, setup


# -- the run ---------------------------------------------------------------------------------


@click.command()
@click.option("--rate", default=3.0, help="Requests/s all adapters together (CPU part).")
@click.option("--count", default=120, help="Requests per CPU cell.")
@click.option("--max-loras", default=4, help="Adapters one engine step mixes (spec.lora).")
@click.option("--rate-per-adapter", default=0.5, help="Requests/s per adapter (GPU part).")
@click.option("--output-scale", default=0.1, help="Output lengths x this (CPU part).")
@click.option("--seed", default=12)
@click.option(
    "--reuse-cpu/--run-cpu",
    default=False,
    help="Take the CPU part from --out as it is and recompute the GPU part only.",
)
@click.option("--out", default=str(REPO / "bench" / "results" / "adapters.json"))
def main(
    rate: float,
    count: int,
    max_loras: int,
    rate_per_adapter: float,
    output_scale: float,
    seed: int,
    out: str,
    reuse_cpu: bool,
) -> None:
    started = time.time()
    if reuse_cpu:
        previous = json.loads(Path(out).read_text())
        cells, probe = previous["cpu_cells"], previous["cold_load_probe"]
        cpu_slo, cpu_setup = previous["cpu_slo"], previous["cpu_setup"]
    else:
        cells, probe, cpu_slo, cpu_setup = measure_cpu(rate, count, max_loras, output_scale, seed)
    # The LoRA compute overhead is not known for GPUs here: the CPU engine's (adapter requests'
    # TPOT on the LoRA engine over base requests' on the plain one, same load) is vLLM's CPU
    # LoRA path, not punica's GPU kernels. The GPU part is computed for a sweep of overheads,
    # that one included; the headline takes 1.0 (memory only) and says so.
    tpot_lora = cells["one-base-8"]["tpot_p50_ms"] or 0.0
    tpot_plain = cells["base-only"]["tpot_p50_ms"] or 1.0
    measured = max(1.0, tpot_lora / tpot_plain)
    gpu_slo = ProfilerSLO(ttft_s=1.0, tpot_s=0.06, percentile=0.99)
    lengths = LengthDistribution.fixed(1024, 256)
    sweep = {}
    for overhead in (1.0, 1.5, 2.0, round(measured, 2)):
        sweep[str(overhead)] = {
            str(n): gpu_budget(
                n, rate_per_adapter, gpu_slo, lengths, overhead, max_loras=max_loras, max_rank=16
            )
            for n in (8, 32)
        }
    gpus = {n: sweep["1.0"][str(n)] for n in (8, 32)}
    summary: dict[str, dict[str, Any]] = {}
    for n in (8, 32):
        h100 = gpus[n]["H100-80GB"]
        summary[f"one-base-{n}-adapters"] = {
            "gpus_h100": h100["gpus_shared"],
            "gpu_memory_gib_h100": h100["memory_gib_shared"],
            "memory_ratio_vs_dedicated_h100": h100["memory_ratio"],
            "worst_memory_ratio_any_gpu": max(
                g["memory_ratio"] for g in gpus[n].values() if g.get("fits")
            ),
            "memory_ratio_h100_at_cpu_measured_overhead": sweep[str(round(measured, 2))][str(n)][
                "H100-80GB"
            ]["memory_ratio"],
            "cpu_attainment": round(cells[f"one-base-{n}"]["attainment"], 4),
            "cpu_goodput_rps": round(cells[f"one-base-{n}"]["goodput_rps"], 3),
        }
        summary[f"dedicated-{n}-deployments"] = {
            "gpus_h100": h100["gpus_dedicated"],
            "gpu_memory_gib_h100": h100["memory_gib_dedicated"],
            "cpu_attainment_per_deployment": round(cells[f"dedicated-{n}"]["attainment"], 4),
            "cpu_goodput_rps_all_deployments": round(n * cells[f"dedicated-{n}"]["goodput_rps"], 3),
        }
    summary["cold-load"] = {
        "load_ms_mean": probe["load_ms_mean"],
        "first_request_ttft_ms_median": probe["first_request_ttft_ms_median"],
        "warm_request_ttft_ms_median": probe["warm_request_ttft_ms_median"],
    }
    result = {
        "summary": summary,
        "gpu_budget": {str(n): v for n, v in gpus.items()},
        "gpu_budget_by_lora_overhead": sweep,
        "gpu_assumptions": {
            "model": "llama-3-8b",
            "slo": {"ttft_s": 1.0, "tpot_s": 0.06, "percentile": 0.99},
            "lengths": "1024 prompt / 256 output tokens",
            "rate_per_adapter": rate_per_adapter,
            "lora": {"max_loras": max_loras, "max_rank": 16, "max_cpu_loras": "N"},
            "lora_overhead": "1.0 in gpu_budget (memory only); see gpu_budget_by_lora_overhead",
            "lora_overhead_measured_on_cpu": round(measured, 3),
            "gpu_memory_utilization": UTILIZATION,
        },
        "cpu_cells": cells,
        "cpu_slo": cpu_slo,
        "cpu_setup": cpu_setup,
        "cold_load_probe": probe,
        "wall_s": round(time.time() - started, 1),
    }
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    plot(result, Path(out).with_suffix(".png"))
    print(json.dumps(summary, indent=2))


def _cpus() -> int:
    text = Path("/proc/cpuinfo").read_text()
    return len(re.findall(r"^processor\s*:", text, re.MULTILINE))


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    budget = result["gpu_budget"]
    width = 0.2
    for k, n in enumerate(("8", "32")):
        names = [g for g in GPU_TYPES if budget[n][g].get("fits")]
        x = np.arange(len(names))
        left.bar(
            x + (2 * k - 1.5) * width,
            [budget[n][g]["memory_gib_dedicated"] for g in names],
            width,
            label=f"{n} deployments",
        )
        left.bar(
            x + (2 * k - 0.5) * width,
            [budget[n][g]["memory_gib_shared"] for g in names],
            width,
            label=f"one base, {n} adapters",
        )
        left.set_xticks(x, names)
    left.set_yscale("log")
    left.set_ylabel("GPU memory booked (GiB, log)")
    left.set_title("Llama-3-8B adapters at equal SLO (profiler)")
    left.legend(fontsize=8)
    cells = result["cpu_cells"]
    labels = ["one-base-8", "dedicated-8", "one-base-32", "dedicated-32", "base-only"]
    right.bar(
        labels, [cells[c]["attainment"] for c in labels], color=["C1", "C0", "C1", "C0", "C2"]
    )
    right.set_ylim(0, 1.05)
    right.set_ylabel("SLO attainment (CPU engine)")
    probe = result["cold_load_probe"]
    first, warm = probe["first_request_ttft_ms_median"], probe["warm_request_ttft_ms_median"]
    right.set_title(
        f"CPU engine; cold load {probe['load_ms_mean']} ms, first TTFT {first} vs warm {warm} ms",
        fontsize=9,
    )
    right.tick_params(axis="x", labelrotation=20)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
