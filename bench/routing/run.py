"""Routing benchmark: Goodput's router against random, round-robin and least-outstanding routing,
in front of real vLLM CPU replicas (prefix caching on), each behind its own Goodput gateway.

Run from the repository root, as a script (``python -m`` would put the root on sys.path, where
the operator/ folder shadows the standard library):

    .venv/bin/python bench/routing/run.py            # the sweep (~25 min on 2 busy cores)
    .venv/bin/python bench/routing/run.py --quick    # one rate per workload, a smoke run

Writes ``bench/results/routing.json`` and ``bench/results/routing.png``. See
docs/bench-routing.md. It reuses bench/serving (load generator, summaries, gateways, engine
helpers) rather than copying it.

``goodput-x2`` is two routers with the default config and no shared store, the client sending
each request to either at random: the active-active claim, measured by its engines' prefix hit
rate against one router's. Every request carries an ``x-request-id``; the gateways' request logs
say which replica served it, so each cell also reports the split between replicas and how often
a session, tenant or prefix group stayed where its previous request went.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import platform
import random
import re
import statistics
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
    Tenants,
    Unique,
    ideal_prefix_hit_rate,
    load_conversations,
    load_mooncake,
    sample_by_prefix_group,
    size_tenants,
    vocabulary,
)
from workload import Corpus, Request, shared_data_dir, trace_gaps  # noqa: E402

from goodput.dev.engine import (  # noqa: E402
    EngineEnv,
    EngineProcess,
    EngineSettings,
)
from goodput.dev.engine import prefix_cache_tokens as prefix_counters  # noqa: E402
from goodput.dev.processes import free_port, served  # noqa: E402
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
    # Active-active: two routers with the default config and no shared store, each request to
    # either at random (as a Service in front of two router pods spreads connections).
    "goodput-x2": {},
    "random": {"scorers": [{"type": "random"}], "filters": ["ready"]},  # kube-proxy
    "round-robin": {"picker": "round-robin", "filters": ["ready"]},
    "least-outstanding": {"scorers": [{"type": "least-load"}], "filters": ["ready"]},
}
# Ablations of the default, run by name only (--contenders): which stage decides a result.
ABLATIONS: dict[str, dict[str, Any]] = {
    "goodput-no-slo-filter": {"filters": ["ready"]},
    "goodput-bounded-2": {"boundedLoad": 2.0},
}
ROUTER_PROCESSES = {"goodput-x2": 2}  # else one
# Where there is no prefix to share, two routers agreeing measures nothing.
SKIPPED = {"unique": {"goodput-x2"}}


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
    with served(command, f"{url}/readyz", log_path=workdir / f"router-{name}.log") as process:
        yield RouterProcess(name, url, process.pid)


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


def assignment(contender: str, targets: int, count: int, seed: str) -> list[int]:
    """Which of ``targets`` URLs each request goes to: ``direct`` alternates over the gateways
    (the router's cost baseline), two routers get each request at random (a Service spreads
    connections over router pods so, not by session), one target gets everything."""
    if targets == 1:
        return [0] * count
    if contender == "direct":
        return [i % targets for i in range(count)]
    rng = random.Random(seed)
    return [rng.randrange(targets) for _ in range(count)]


def _replay(
    urls: list[str], assign: list[int], schedule: Schedule, slo: SLO, enforce: str, id_prefix: str
) -> list[Outcome]:
    """Replay ``schedule``, request ``i`` to ``urls[assign[i]]``, each tagged with a request id."""

    async def parts() -> list[Outcome]:
        picked = [[i for i, a in enumerate(assign) if a == u] for u in range(len(urls))]
        done = await asyncio.gather(
            *(
                replay(
                    url,
                    MODEL_NAME,
                    [schedule.requests[i] for i in mine],
                    [schedule.arrivals[i] for i in mine],
                    slo,
                    enforce=enforce,
                    id_prefix=id_prefix,
                )
                for url, mine in zip(urls, picked, strict=True)
                if mine
            )
        )
        return sorted((o for part in done for o in part), key=lambda o: o.index)

    return asyncio.run(parts())


def served_by(logs: list[Path], id_prefix: str) -> dict[int, int]:
    """Request index -> the replica whose gateway logged it (the gateways' request logs)."""
    out: dict[int, int] = {}
    for replica, path in enumerate(logs):
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            request_id = json.loads(line).get("request_id", "")
            head, _, index = request_id.rpartition("-")
            if head == id_prefix and index.isdigit():
                out[int(index)] = replica
    return out


def stickiness(requests: list[Request], replica: dict[int, int]) -> float | None:
    """Of the requests whose group (session, tenant, Mooncake prefix group) was served before,
    the fraction served where the group's previous request was."""
    last: dict[object, int] = {}
    same = pairs = 0
    for r in requests:
        where = replica.get(r.index)
        if where is None:
            continue
        group = r.session or r.prompt_id
        if group in last:
            pairs += 1
            same += last[group] == where
        last[group] = where
    return round(same / pairs, 4) if pairs else None


def cell(
    workload: str,
    contender: str,
    rate: float,
    schedule: Schedule,
    slo: SLO,
    *,
    urls: list[str],
    engines: list[str],
    routers: list[RouterProcess],
    gateway_logs: list[Path],
    trace: Path,
    enforce: str,
) -> dict[str, Any]:
    """Replay ``schedule`` (its warm-up first, unmeasured) to ``urls`` (routers, or gateways
    split by the client), then read the engines' prefix-cache counters, the routers' own
    counters and CPU time, and where each request was served."""
    id_prefix = f"{workload}-{contender}-{rate:g}"
    assign = assignment(contender, len(urls), len(schedule.requests), id_prefix)
    warm_failed = 0
    if schedule.warmup is not None:
        warm = schedule.warmup
        warm_assign = assignment(contender, len(urls), len(warm.requests), f"{id_prefix}-warm")
        done = _replay(urls, warm_assign, warm, slo, enforce, f"{id_prefix}-warm")
        warm_failed = sum(o.status != 200 for o in done)
        wait_idle(engines)
    before = [prefix_counters(e) for e in engines]
    decisions_before = _router_totals(routers)
    load_before = os.getloadavg()[0]
    cpu_before = sum(cpu_seconds(r.pid) for r in routers)
    outcomes = _replay(urls, assign, schedule, slo, enforce, id_prefix)
    cpu_after = sum(cpu_seconds(r.pid) for r in routers)
    wait_idle(engines)
    after = [prefix_counters(e) for e in engines]
    row = summarize(outcomes, slo, rate)
    ok = [o.ttft_s for o in outcomes if o.status == 200 and o.ttft_s is not None]
    row["ttft_p90_ms"] = round(float(np.percentile(ok, 90)) * 1000, 2) if ok else None
    queried = [a[0] - b[0] for a, b in zip(after, before, strict=True)]
    hits = [a[1] - b[1] for a, b in zip(after, before, strict=True)]
    row["load_average_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    if routers:
        now = _router_totals(routers)
        row["router"] = {
            k: round(v - decisions_before.get(k, 0.0), 4)
            for k, v in now.items()
            if v != decisions_before.get(k, 0.0)
        }
        row["router_processes"] = len(routers)
    if schedule.warmup is not None:
        row["warmup_requests"] = len(schedule.warmup.requests)
        row["warmup_failed"] = warm_failed
    row["prefix_queried_tokens"] = [int(q) for q in queried]
    row["prefix_hit_tokens"] = [int(h) for h in hits]
    row["prefix_hit_rate"] = round(sum(hits) / sum(queried), 4) if sum(queried) else None
    replica = served_by(gateway_logs, id_prefix)
    row["requests_by_replica"] = [
        sum(1 for v in replica.values() if v == i) for i in range(len(engines))
    ]
    row["group_same_replica"] = stickiness(schedule.requests, replica)
    if routers:
        row["router_cpu_s"] = round(cpu_after - cpu_before, 3)
        row["router_cpu_ms_per_request"] = round(1000 * (cpu_after - cpu_before) / len(outcomes), 3)
    with trace.open("a") as handle:
        for o in outcomes:
            record = {"workload": workload, "contender": contender, "rate": rate, **asdict(o)}
            request = schedule.requests[o.index]
            record |= {"group": request.session or request.prompt_id}
            record |= {"replica": replica.get(o.index), "met": o.met(slo)}
            handle.write(json.dumps(record) + "\n")
    click.echo(
        f"{workload:13s} {contender:17s} rate {rate:5.2f} n={row['requests']:3d} "
        f"attain {row['attainment']:6.1%} goodput {row['goodput_rps']:5.2f}/s "
        f"TTFT p50 {row['ttft_p50_ms']} p90 {row['ttft_p90_ms']} p99 {row['ttft_p99_ms']} ms "
        f"prefix hits {row['prefix_hit_rate']} split {row['prefix_queried_tokens']} "
        f"served {row['requests_by_replica']} same-replica {row['group_same_replica']} "
        f"router CPU {row.get('router_cpu_ms_per_request')} ms/req "
        f"rejected {row['rejected']} errors {row['errors']} held {row['held_streams']} "
        f"decisions {row.get('router')}"
    )
    return row


def _router_totals(routers: list[RouterProcess]) -> dict[str, float]:
    totals: dict[str, float] = {}
    for r in routers:
        for k, v in router_counters(r.url).items():
            totals[k] = totals.get(k, 0.0) + v
    return totals


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
@click.option("--tenant-rates", default="2,3,4", show_default=True)
@click.option("--workloads", default="mooncake,conversations,tenants,unique", show_default=True)
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
@click.option(
    "--tenant-prefix-tokens", default=1024, show_default=True, help="Each tenant's own context."
)
@click.option(
    "--tenant-pressure",
    default=1.4,
    show_default=True,
    help="The tenants' distinct prefix tokens / one replica's KV cache tokens.",
)
@click.option("--tenant-zipf", default=0.0, show_default=True, help="0: tenants drawn uniformly.")
@click.option("--ttft-scale", default=5.0, show_default=True, help="TTFT SLO / unloaded TTFT.")
@click.option("--tpot-scale", default=5.0, show_default=True, help="TPOT SLO / unloaded TPOT.")
@click.option(
    "--tpot-floor-ms",
    default=40.0,
    show_default=True,
    help="TPOT SLO at least this: a stream faster than ~25 tokens/s outpaces any reader, and "
    "below it the objective measured the cores' contention at calibration, not routing.",
)
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
    tenant_rates: str,
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
    tenant_prefix_tokens: int,
    tenant_pressure: float,
    tenant_zipf: float,
    ttft_scale: float,
    tpot_scale: float,
    tpot_floor_ms: float,
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
        "tenants": _rates(tenant_rates),
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

    tenants: Tenants | None = None  # sized from the engines' KV cache once they are up

    def build(workload: str, rate: float) -> Callable[[str], Schedule]:
        if workload == "tenants":
            assert tenants is not None
            t = replace(tenants, count=count(rate))
            return lambda salt: t.schedule(rate, salt)
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
        if "tenants" in chosen:
            kv_tokens = min(p.facts.kv_cache_tokens or 0 for p in procs)
            if not kv_tokens:
                raise RuntimeError("the engines did not report their KV cache size")
            tenants, workload_facts["tenants"] = size_tenants(
                kv_cache_tokens=kv_tokens, engine_block=procs[0].facts.block_size or 16,
                replicas=replicas, prefix_tokens=tenant_prefix_tokens,
                pressure=tenant_pressure, zipf=tenant_zipf, blocks=blocks, corpus=corpus,
                tokenizer=tokenizer, max_model_len=2048, max_question_tokens=256, seed=seed,
            )  # fmt: skip
            click.echo(f"tenants: {workload_facts['tenants']}")
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
                tpot_s = max(base.tpot_s * tpot_scale, tpot_floor_ms / 1000)
                slos[workload] = SLO(base.ttft_s * ttft_scale, tpot_s)
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
                # Each gateway's request log says which replica served which request.
                logs = [workdir / f"gateway-{workload}-{i}.requests.jsonl" for i in range(replicas)]
                gateways = [
                    stage.enter_context(
                        gateway(
                            "slo",
                            p,
                            slo,
                            workdir / f"gateway-{workload}-{i}.log",
                            ("--request-log", str(logs[i])),
                        )
                    )
                    for i, p in enumerate(procs)
                ]
                here = [n for n in contenders if n not in SKIPPED.get(workload, set())]
                routers = {
                    name: [
                        stage.enter_context(
                            router(
                                name if copies == 1 else f"{name}-{chr(ord('a') + k)}",
                                (CONTENDERS | ABLATIONS)[name],
                                gateways,
                                workdir / workload,
                            )
                        )
                        for k in range(copies)
                    ]
                    for name in here
                    for copies in [ROUTER_PROCESSES.get(name, 1)]
                }
                # The routers' CPU when idle (polling the gateways' load reports), measured
                # while all are idle together; per-request CPU is given with and without it.
                idle_before = {n: sum(cpu_seconds(r.pid) for r in rs) for n, rs in routers.items()}
                time.sleep(idle_seconds)
                idle = {
                    n: (sum(cpu_seconds(r.pid) for r in rs) - idle_before[n]) / idle_seconds
                    for n, rs in routers.items()
                }
                idle_cpu[workload] = {n: round(v, 4) for n, v in idle.items()}
                click.echo(f"router idle CPU (s per s): {idle_cpu[workload]}")
                if workload == "unique" and "goodput" in routers:
                    s = build("unique", rates["unique"][0])("overhead")
                    overhead = overhead_probe(
                        gateways[0], routers["goodput"][0].url, s.requests[:probe_pairs], engines
                    )
                    click.echo(f"router overhead (paired): {overhead}")
                # The single-replica reference: the lowest rate, every request to replica 0.
                low = rates[workload][0]
                reference[workload] = cell(
                    workload, "single-replica", low, build(workload, low)("reference"),
                    slo, urls=[gateways[0]], engines=engines, routers=[], gateway_logs=logs,
                    trace=trace, enforce=enforce,
                )  # fmt: skip
                for i, rate in enumerate(rates[workload]):
                    make = build(workload, rate)
                    names_here = list(here)
                    if workload == "unique":
                        names_here.append("direct")
                    turn = i % len(names_here)
                    for name in names_here[turn:] + names_here[:turn]:
                        schedule = make(f"{workload}-{name}-{rate}")
                        mine = routers.get(name, [])
                        row = cell(
                            workload, name, rate, schedule, slo,
                            urls=[r.url for r in mine] or gateways, engines=engines,
                            routers=mine, gateway_logs=logs, trace=trace, enforce=enforce,
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
    document: dict[str, Any] = {
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
        "contenders": {n: (CONTENDERS | ABLATIONS)[n] for n in contenders}
        | {
            n: {
                "config": CONTENDERS[n],
                "router_processes": ROUTER_PROCESSES[n],
                "client": "each request to one of the routers at random",
                "skipped_on": sorted(w for w, names in SKIPPED.items() if n in names),
            }
            for n in contenders
            if n in ROUTER_PROCESSES
        }
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
                "tpot_floor_ms": tpot_floor_ms,
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
    if out_path.exists():
        # vllm_client.py's results live in this file: keep them, marked as an earlier run's.
        earlier = json.loads(out_path.read_text()).get("vllm_bench_serve")
        if earlier is not None:
            earlier.setdefault("note_run", "from a run before this file's `when`")
            document["vllm_bench_serve"] = earlier
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(document, indent=2) + "\n")
    plot(results, reference, slos, head, out_path.with_suffix(".png"), replicas)
    click.echo(
        json.dumps({"summary": document["summary"], "targets": document["targets"]}, indent=2)
    )
    click.echo(f"wrote {out_path} and {out_path.with_suffix('.png')} in {document['duration_s']} s")


if __name__ == "__main__":
    sys.exit(main())
