"""Cascade benchmark, serving half: two real vLLM CPU engines of different sizes (the tests'
random-weight tiny Llamas, a small one and one about 20x larger) behind one ``goodput route``,
under a load the large model alone cannot carry within the SLO.

Contenders, each on the same AlpacaEval prompts with the same Azure-trace arrivals:

- ``fixed-large``: every request to the large model (the quality-first fixed choice);
- ``fixed-small``: every request to the small model (the cheap fixed choice);
- ``cascade``: the ``model-cascade`` stage with ``maxLargeShare`` 0.3 (the shipped quality
  model decides per prompt, the small model standing for Mistral-7B-Instruct-v0.2 and the large
  one for gpt4_1106_preview), spilling to the other model when its replicas are predicted to
  miss the TTFT objective.

Reported per contender: SLO attainment (TTFT and TPOT both met, as ``bench/serving``), the share
served by the large model, and the judge's mean verdict of the served answers (AlpacaEval's
verdicts of the two models the engines stand for, on the prompts sent: what the routing would
have achieved with the real models). The SLO is the large model's unloaded TTFT and TPOT times
``--ttft-scale`` and ``--tpot-scale`` (``bench/serving``'s 10 and 3). Adds a ``serving`` part
to ``bench/results/cascade.json`` and its contenders to its ``summary``.

    .venv/bin/python bench/cascade/serve.py      # about 9 minutes on two cores
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click
import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(1, str(REPO / "bench" / "serving"))
sys.path.insert(2, str(REPO / "bench" / "routing"))

from contenders import gateway  # noqa: E402
from loadgen import SLO, replay  # noqa: E402
from report import summarize  # noqa: E402
from workload import Corpus, arrival_times, shared_data_dir, trace_gaps  # noqa: E402

from goodput.dev.engine import EngineEnv, EngineProcess, EngineSettings  # noqa: E402
from goodput.dev.tiny_model import TinyLlamaSpec, ensure_tiny_model  # noqa: E402
from goodput.profiler.datasets import load_alpaca_preferences  # noqa: E402


def _routing_run() -> Any:
    """bench/routing/run.py (its router process, request-log reader and core pinning)."""
    spec = importlib.util.spec_from_file_location("routing_run", REPO / "bench/routing/run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


routing = _routing_run()
RESULTS = REPO / "bench" / "results" / "cascade.json"
SMALL, LARGE = "tiny-small", "tiny-large"
STANDS_FOR = {SMALL: "Mistral-7B-Instruct-v0.2", LARGE: "gpt4_1106_preview"}
LOGICAL = "assistant"
# Each request asks for its scaled true length (max_tokens, ignore_eos): bench/serving's default.
ENFORCE = "max-tokens"
SPECS = {
    SMALL: TinyLlamaSpec(),
    LARGE: TinyLlamaSpec(
        num_layers=8, hidden_size=768, intermediate_size=3072, num_attention_heads=12,
        num_key_value_heads=12,
    ),
}  # fmt: skip


def contenders(gateways: dict[str, str], share: float) -> dict[str, tuple[str, dict[str, Any]]]:
    """Per contender: the model name clients send and the router's config."""
    cascade = {
        "models": [
            {"name": name, "model": name, "qualityKey": STANDS_FOR[name], "endpoints": [url]}
            for name, url in gateways.items()
        ],
        "maxLargeShare": share,
        "windowRequests": 200,
    }
    return {
        "fixed-large": (LARGE, {"endpoints": [gateways[LARGE]]}),
        "fixed-small": (SMALL, {"endpoints": [gateways[SMALL]]}),
        "cascade": (LOGICAL, {"cascade": cascade}),
    }


@contextmanager
def engines(workdir: Path) -> Iterator[dict[str, EngineProcess]]:
    python = EngineEnv().ensure()
    procs: dict[str, EngineProcess] = {}
    with ExitStack() as stack:
        for i, (name, spec) in enumerate(SPECS.items()):
            settings = EngineSettings(
                model=ensure_tiny_model(spec), served_model_name=name, max_model_len=2048,
                kv_cache_bytes=256 * 2**20, log_stats=True,
            )  # fmt: skip
            proc = EngineProcess(
                routing.own_core(settings, i), python=python, log_path=workdir / f"{name}.log"
            )
            proc.start()
            stack.callback(proc.stop)
            procs[name] = proc
        yield procs


@contextmanager
def stand_in_engines(workdir: Path) -> Iterator[dict[str, Any]]:
    """Fake engines (``tests/gateway/fake_engine.py``) whose steps take as long as the real
    tiny Llamas' roughly do, the large one ten times the small one's: the router, gateways and
    load are real, the engines are not. For a machine where vLLM cannot run in time."""
    sys.path.insert(0, str(REPO / "tests"))
    from gateway.conftest import running_server
    from gateway.fake_engine import FakeEngine

    steps = {SMALL: 0.002, LARGE: 0.02}
    with ExitStack() as stack:
        procs: dict[str, Any] = {}
        for name, step in steps.items():
            engine = FakeEngine(model=name, step_base_s=step, step_per_request_s=step / 4)
            url, _ = stack.enter_context(running_server(engine.app))
            facts = SimpleNamespace(kv_cache_tokens=16384)
            procs[name] = SimpleNamespace(url=url, model_name=name, facts=facts)
        yield procs


def unloaded(url: str, model: str, corpus: Corpus) -> SLO:
    """Median TTFT and TPOT of requests sent one at a time."""
    loose = SLO(3600.0, 3600.0)
    outs = [
        asyncio.run(replay(url, model, [r], [0.0], loose, enforce=ENFORCE))[0]
        for r in corpus.take(8, offset=len(corpus.requests) // 2)
    ]
    ttft = [o.ttft_s for o in outs if o.ttft_s is not None]
    tpot = [o.tpot_s for o in outs if o.tpot_s is not None and not o.held]
    return SLO(float(np.median(ttft)), float(np.median(tpot)) if tpot else 0.05)


def verdicts() -> dict[str, dict[int, float]]:
    """The judge's verdict per prompt of each model an engine stands for."""
    data = load_alpaca_preferences()
    out: dict[str, dict[int, float]] = {name: {} for name in STANDS_FOR}
    for pid, model, v in zip(data.prompt_ids, data.models, data.verdicts, strict=True):
        for name, stands_for in STANDS_FOR.items():
            if model == stands_for:
                out[name][int(pid)] = float(v)
    return out


@click.command()
@click.option("--rate", type=float, default=9.0, help="Mean requests/s offered.")
@click.option("--seconds", type=float, default=50.0, help="Length of each contender's replay.")
@click.option("--ttft-scale", type=float, default=10.0, help="TTFT SLO / large unloaded TTFT.")
@click.option("--tpot-scale", type=float, default=3.0, help="TPOT SLO / large unloaded TPOT.")
@click.option("--share", type=float, default=0.3, help="The cascade's maxLargeShare.")
@click.option("--output-scale", type=float, default=0.25)
@click.option("--seed", type=int, default=7)
@click.option(
    "--stand-in/--vllm",
    default=False,
    help="Fake engines instead of vLLM (results under `serving_stand_in`).",
)
def main(
    rate: float,
    seconds: float,
    ttft_scale: float,
    tpot_scale: float,
    share: float,
    output_scale: float,
    seed: int,
    stand_in: bool,
) -> None:
    """Replay AlpacaEval prompts against a fixed choice of model and the cascade."""
    # A timeout's SIGTERM unwinds the stacks: the engines, gateways and routers stop with us.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    started = time.time()
    data = shared_data_dir()
    workdir = Path(tempfile.mkdtemp(prefix="goodput-bench-cascade-"))
    click.echo(f"logs in {workdir}")
    corpus = Corpus.load(
        data, ensure_tiny_model(SPECS[SMALL]) / "tokenizer.json",
        model=STANDS_FOR[SMALL], output_scale=output_scale, max_model_len=2048, seed=seed,
    )  # fmt: skip
    count = max(10, round(rate * seconds))
    requests = corpus.take(count)
    arrivals = arrival_times(trace_gaps(data / "traces" / "azure_llm_2023_conv.csv"), count,
                             rate, seed).tolist()  # fmt: skip
    judged = verdicts()
    results: dict[str, Any] = {}
    start_engines = stand_in_engines if stand_in else engines
    with start_engines(workdir) as procs, ExitStack() as stack:
        loose = SLO(60.0, 1.0)
        plain = {
            name: stack.enter_context(gateway("slo", p, loose, workdir / f"gw-{name}.log"))
            for name, p in procs.items()
        }
        for name, url in plain.items():  # warm-up: shapes compiled outside the measurements
            warm = corpus.take(8, offset=len(corpus.requests) // 3)
            asyncio.run(
                replay(url, name, warm, [0.0] * len(warm), SLO(3600.0, 3600.0), enforce=ENFORCE)
            )
        base = {name: unloaded(url, name, corpus) for name, url in plain.items()}
        slo = SLO(base[LARGE].ttft_s * ttft_scale, base[LARGE].tpot_s * tpot_scale)
        click.echo(f"unloaded {base}; SLO {slo}")
        stack.close()
        for contender in ("fixed-large", "fixed-small", "cascade"):
            with ExitStack() as run:  # fresh gateways and router per contender
                logs = {n: workdir / f"{contender}-{n}.requests.jsonl" for n in procs}
                gws = {
                    n: run.enter_context(
                        gateway("slo", p, slo, workdir / f"{contender}-gw-{n}.log",
                                ("--request-log", str(logs[n])))
                    )
                    for n, p in procs.items()
                }  # fmt: skip
                model, overrides = contenders(gws, share)[contender]
                overrides = {**overrides, "pollIntervalS": 0.1}
                endpoints = overrides.pop("endpoints", [])
                router = run.enter_context(
                    routing.router(contender, overrides, endpoints, workdir / contender)
                )
                for proc in procs.values():
                    routing.serving.wait_idle(proc.url)
                outcomes = asyncio.run(
                    replay(
                        router.url,
                        model,
                        requests,
                        arrivals,
                        slo,
                        enforce=ENFORCE,
                        id_prefix=contender,
                    )
                )
                names = list(logs)
                served = {
                    i: names[k]
                    for i, k in routing.served_by(list(logs.values()), contender).items()
                }
                status = httpx.get(f"{router.url}/v1/goodput/endpoints").json()
            row = summarize(outcomes, slo, rate)
            by_index = {r.index: r for r in requests}
            quality = [judged[m].get(by_index[i].prompt_id) for i, m in served.items()]
            known = [q for q in quality if q is not None]
            row |= {
                "large_share": sum(m == LARGE for m in served.values()) / max(1, len(served)),
                "served": len(served),
                "judge_mean_verdict": float(np.mean(known)) if known else None,
                "cascade": status.get("cascade"),
            }
            results[contender] = row
            click.echo(
                f"{contender}: attainment {row['attainment']:.3f}, large share "
                f"{row['large_share']:.2f}, judge {row['judge_mean_verdict']}, "
                f"TTFT p99 {row['ttft_p99_ms']} ms"
            )
    document = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"summary": {}}
    part = "serving_stand_in" if stand_in else "serving"
    summary = {
        f"{part.replace('_', '-')}-{name}": {
            "slo_attainment": round(row["attainment"], 4),
            "large_share": round(row["large_share"], 4),
            "judge_mean_verdict": None
            if row["judge_mean_verdict"] is None
            else round(row["judge_mean_verdict"], 4),
            "ttft_p99_ms": row["ttft_p99_ms"],
        }
        for name, row in results.items()
    }
    document[part] = {
        "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "engines": "tests/gateway/fake_engine.py, steps 2 ms / 20 ms"
        if stand_in
        else {n: vars(s) for n, s in SPECS.items()},
        "stands_for": STANDS_FOR,
        "rate": rate,
        "requests": count,
        "slo": {"ttft_s": slo.ttft_s, "tpot_s": slo.tpot_s, "scales": [ttft_scale, tpot_scale]},
        "unloaded": {n: {"ttft_s": b.ttft_s, "tpot_s": b.tpot_s} for n, b in base.items()},
        "results": results,
        "summary": summary,
        "wall_s": round(time.time() - started),
    }
    document.setdefault("summary", {}).update(summary)
    RESULTS.write_text(json.dumps(document, indent=2, default=str) + "\n")
    click.echo(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
