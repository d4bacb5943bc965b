"""A burst at a freshly started gateway (issue 15): without a starting batch limit a cold gateway
sent a whole burst to the engine at once and every request of it missed its SLO. Now it starts
from ``initialConcurrency`` and explores upward.

One real vLLM CPU engine (the tests' tiny model); for each contender a fresh ``goodput serve``
(cold: nothing measured), then ``--burst`` streamed requests sent at the same instant:

- ``cold, no starting limit``: ``--initial-concurrency`` far above the burst (the old behaviour);
- ``cold, starting limit 4``: the default now;
- ``warm``: the default, after a warm-up of a few hundred requests.

The SLO is the unloaded TTFT x 30 and TPOT x 3 (the serving benchmark's x 10 for TTFT leaves a
burst of 307 on two cores nothing to meet, warm or cold). It needs a quiet machine: tried on
2026-12-03 while other engines ran beside it (load average 23 on 2 cores), not one request of
the burst met the SLO for any contender, warm included, and no result was kept. Run from the
repository root, as a script::

    .venv/bin/python bench/serving/cold_burst.py     # ~5 min on 2 cores

Writes ``bench/results/gateway-cold-burst.json`` (with a ``summary``) and ``.png``.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click
from contenders import gateway
from loadgen import SLO, replay
from workload import Request

from goodput.dev.engine import EngineEnv, EngineProcess, EngineSettings
from goodput.dev.tiny_model import ensure_tiny_model

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench" / "results"
MODEL = "tiny-llama"
PROMPT = "Tell me a story about a lighthouse keeper and the sea."


def burst(count: int, tokens: int, offset: int = 0) -> list[Request]:
    def one(i: int) -> Request:
        return Request(
            index=offset + i, prompt_id=i, prompt=f"{PROMPT} ({offset + i})",
            prompt_tokens=16, output_tokens=tokens, real_output_tokens=tokens,
        )  # fmt: skip

    return [one(i) for i in range(count)]


def run(url: str, requests: list[Request], slo: SLO) -> dict[str, Any]:
    outcomes = asyncio.run(
        replay(url, MODEL, requests, [0.0] * len(requests), slo, enforce="max-tokens")
    )
    met = sum(o.met(slo) for o in outcomes)
    rejected = sum(o.status == 429 for o in outcomes)
    served = [o for o in outcomes if o.status == 200 and o.ttft_s is not None]

    def median(values: list[float]) -> float | None:
        return round(sorted(values)[len(values) // 2] * 1000, 1) if values else None

    return {
        "requests": len(outcomes),
        "met_slo": met,
        "rejected_429": rejected,
        "served_but_missed": len(outcomes) - met - rejected,
        "errors": sum(o.status not in (200, 429) for o in outcomes),
        "served_median_ttft_ms": median([o.ttft_s for o in served if o.ttft_s is not None]),
        "served_median_tpot_ms": median([o.tpot_s for o in served if o.tpot_s is not None]),
        "served_ttft_met": sum(o.ttft_s <= slo.ttft_s for o in served if o.ttft_s is not None),
    }


@click.command()
@click.option("--burst", "count", default=307, show_default=True, help="Requests in the burst.")
@click.option("--tokens", default=32, show_default=True, help="Output tokens per request.")
@click.option("--ttft-scale", default=30.0, show_default=True, help="TTFT SLO / unloaded TTFT.")
@click.option("--tpot-scale", default=3.0, show_default=True, help="TPOT SLO / unloaded TPOT.")
def main(count: int, tokens: int, ttft_scale: float, tpot_scale: float) -> None:
    python = EngineEnv().ensure()
    settings = EngineSettings(model=ensure_tiny_model(), served_model_name=MODEL)
    workdir = Path(tempfile.mkdtemp(prefix="goodput-cold-burst-"))
    results: dict[str, Any] = {}
    with EngineProcess(settings, python=python, log_path=workdir / "engine.log") as engine:
        loose = SLO(ttft_s=3600.0, tpot_s=3600.0)
        run(engine.url, burst(16, tokens), loose)  # the engine's own first-shape costs
        alone = [
            asyncio.run(replay(engine.url, MODEL, burst(1, tokens, i), [0.0], loose))[0]
            for i in range(8)
        ]
        ttft = sorted(o.ttft_s or 0.0 for o in alone)[4]
        tpot = sorted(o.tpot_s or 0.0 for o in alone)[4]
        slo = SLO(ttft_s=ttft * ttft_scale, tpot_s=tpot * tpot_scale)
        click.echo(f"SLO: TTFT {slo.ttft_s * 1000:.0f} ms, TPOT {slo.tpot_s * 1000:.1f} ms")
        contenders = (
            ("cold, no starting limit (before)", 100_000, False),
            ("cold, starting limit 4 (now)", 4, False),
            ("warm", 4, True),
        )
        for name, initial, warm in contenders:
            with ExitStack() as stack:
                url = stack.enter_context(
                    gateway("slo", engine, slo, workdir / f"gateway-{initial}-{warm}.log",
                            extra=("--initial-concurrency", str(initial)))
                )  # fmt: skip
                if warm:
                    run(url, burst(count, tokens, 10_000), slo)
                    time.sleep(2)
                results[name] = run(url, burst(count, tokens, 20_000), slo)
                click.echo(f"{name}: {results[name]}")
    document = {
        "benchmark": "a burst at a cold gateway (issue 15)",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count()},
        "slo": {"ttft_ms": round(slo.ttft_s * 1000, 1), "tpot_ms": round(slo.tpot_s * 1000, 2)},
        "burst": count,
        "output_tokens": tokens,
        "summary": {name: r["met_slo"] for name, r in results.items()},
        "results": results,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "gateway-cold-burst.json").write_text(json.dumps(document, indent=2) + "\n")
    plot(results, count, RESULTS / "gateway-cold-burst.png")
    click.echo(json.dumps(document["summary"], indent=2))


def plot(results: dict[str, Any], count: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    parts = (("met_slo", "met SLO", "#55a868"), ("served_but_missed", "missed", "#c44e52"),
             ("rejected_429", "429", "#8c8c8c"))  # fmt: skip
    fig, ax = plt.subplots(figsize=(8, 3.5))
    left = [0.0] * len(names)
    for key, label, color in parts:
        values = [results[n][key] for n in names]
        ax.barh(names, values, left=left, label=label, color=color)
        left = [a + b for a, b in zip(left, values, strict=True)]
    ax.set_xlabel(f"requests of a burst of {count}")
    ax.legend(loc="lower right")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
