"""What the router itself costs: added time to first token and lost throughput, measured against
a fast stand-in engine (tests/gateway/fake_engine.py) so that the engine's own variance does not
drown a millisecond.

One engine process, one gateway (``goodput serve``) before it, one router (``goodput route``)
before the gateway. The same requests go to the gateway directly and through the router:

- added TTFT: streamed requests one at a time, direct, through the router and through two
  reference relays (``relays.py``: a bytes-only L4 relay and a bare uvicorn + aiohttp relay,
  the floors under any proxy hop and under the router's HTTP stack), in a rotated order per
  round; the median (and p90) of each hop's per-round differences from direct;
- throughput at saturation: a closed loop of ``--concurrency`` streams for ``--seconds``, direct
  and routed in ``--rounds`` ABBA-ordered pairs, completed tokens per second, the median of the
  pairs' routed / direct ratios; and the router's CPU per relayed token, which bounds what one
  core of router can carry;
- the router's CPU time per request (``/proc/PID/stat``) and its own decision time (its
  ``goodput_router_decision_seconds`` histogram).

Run from the repository root: ``.venv/bin/python bench/routing/overhead.py`` (~2 min). Writes
``bench/results/router_overhead.json`` and ``.png``.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click
import httpx
import numpy as np

from goodput.dev.processes import free_port, served

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "bench" / "results"
MODEL = "tiny"
# The reference hops measured beside the router (bench/routing/relays.py): name there -> here.
FLOORS = {"l4": "l4-relay", "http": "bare-http-relay"}

ENGINE = """
import sys
sys.path.insert(0, {tests!r})
import uvicorn
from fake_engine import FakeEngine
engine = FakeEngine({model!r}, step_base_s={step}, step_per_request_s={per_request})
uvicorn.run(engine.app, host="127.0.0.1", port={port}, log_level="warning")
"""


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def body(i: int, max_tokens: int) -> dict[str, Any]:
    prompt = f"request {i}: " + "tell me about routing and caches " * 20
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "stream": True,
    }


async def one(client: httpx.AsyncClient, url: str, payload: dict[str, Any]) -> tuple[float, int]:
    """(time to first content byte, tokens streamed) of one streamed chat completion."""
    started = time.perf_counter()
    ttft = None
    tokens = 0
    async with client.stream("POST", url + "/v1/chat/completions", json=payload) as reply:
        if reply.status_code != 200:
            raise RuntimeError(f"{url}: {reply.status_code} {(await reply.aread())[:200]!r}")
        async for line in reply.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            if ttft is None:
                ttft = time.perf_counter() - started
            chunk = json.loads(line[6:])
            if chunk.get("choices"):
                tokens += 1
    if ttft is None:
        raise RuntimeError(f"{url}: no data")
    return ttft, tokens


async def paired_ttft(direct: str, hops: dict[str, str], pairs: int) -> dict[str, Any]:
    """Each round sends the same request directly and through every hop, in a rotated order;
    per hop, the distribution of (through the hop - direct) within a round."""
    urls = {"direct": direct, **hops}
    names = list(urls)
    async with httpx.AsyncClient(timeout=30) as client:
        for i in range(20):  # warm every path's connections and code
            for url in urls.values():
                await one(client, url, body(i, 2))
        deltas: dict[str, list[float]] = {name: [] for name in hops}
        directs = []
        for i in range(pairs):
            ttft: dict[str, float] = {}
            shift = i % len(names)
            for name in names[shift:] + names[:shift]:
                ttft[name] = (await one(client, urls[name], body(i, 2)))[0]
            for name in hops:
                deltas[name].append(ttft[name] - ttft["direct"])
            directs.append(ttft["direct"])
    added = {}
    for name, values in deltas.items():
        ms = np.array(values) * 1000
        added[name] = {
            "added_ttft_p50_ms": round(float(np.median(ms)), 3),
            "added_ttft_p90_ms": round(float(np.percentile(ms, 90)), 3),
            "added_ttft_iqr_ms": [round(float(np.percentile(ms, q)), 3) for q in (25, 75)],
        }
    return {
        "pairs": pairs,
        "direct_ttft_p50_ms": round(statistics.median(directs) * 1000, 3),
        "hops": added,
    }


async def closed_loop(
    url: str, concurrency: int, seconds: float, max_tokens: int
) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency)
    stop = time.monotonic() + seconds
    tokens = requests = 0

    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def worker(w: int) -> None:
            nonlocal tokens, requests
            i = 0
            while time.monotonic() < stop:
                _, streamed = await one(client, url, body(w * 100_000 + i, max_tokens))
                tokens += streamed  # after the await: ``tokens += await ...`` loses updates
                requests += 1
                i += 1

        started = time.monotonic()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.monotonic() - started
    return {"requests": requests, "tokens": tokens, "tokens_per_s": tokens / elapsed}


def decision_seconds(router: str) -> tuple[float, float]:
    """(sum, count) of the router's decision-time histogram."""
    total = count = 0.0
    for line in httpx.get(router + "/metrics").text.splitlines():
        if line.startswith("goodput_router_decision_seconds_sum"):
            total += float(line.rsplit(" ", 1)[1])
        elif line.startswith("goodput_router_decision_seconds_count"):
            count += float(line.rsplit(" ", 1)[1])
    return total, count


@click.command()
@click.option("--pairs", default=400, show_default=True)
@click.option("--concurrency", default=32, show_default=True)
@click.option("--seconds", default=15.0, show_default=True)
@click.option("--rounds", default=6, show_default=True, help="Direct/routed loop pairs.")
@click.option("--max-tokens", default=32, show_default=True)
@click.option("--step-ms", default=20.0, show_default=True, help="The stand-in engine's step.")
@click.option("--out", default=str(RESULTS / "router_overhead.json"), show_default=True)
def main(
    pairs: int,
    concurrency: int,
    seconds: float,
    rounds: int,
    max_tokens: int,
    step_ms: float,
    out: str,
) -> None:
    started = time.monotonic()
    engine_port, gateway_port, router_port = free_port(), free_port(), free_port()
    floors = {name: f"http://127.0.0.1:{free_port()}" for name in FLOORS}
    engine = f"http://127.0.0.1:{engine_port}"
    direct = f"http://127.0.0.1:{gateway_port}"
    routed = f"http://127.0.0.1:{router_port}"
    py = sys.executable
    script = ENGINE.format(
        tests=str(REPO / "tests" / "gateway"),
        model=MODEL,
        step=step_ms / 1000,
        per_request=0.0,
        port=engine_port,
    )
    with ExitStack() as stack:
        stack.enter_context(served([py, "-c", script], engine + "/v1/models"))
        stack.enter_context(
            served(
                [py, "-m", "goodput", "serve", "--engine-url", engine, "--port", str(gateway_port),
                 "--deployment", "bench", "--served-model-name", MODEL, "--ttft-ms", "5000",
                 "--tpot-ms", "1000", "--log-level", "warning"],
                direct + "/readyz",
            )
        )  # fmt: skip
        router_pid = stack.enter_context(
            served(
                [py, "-m", "goodput", "route", "--endpoint", direct, "--port", str(router_port),
                 "--log-level", "warning"],
                routed + "/readyz",
            )
        ).pid  # fmt: skip
        for name, url in floors.items():
            port = url.rsplit(":", 1)[1]
            relay = [py, str(REPO / "bench" / "routing" / "relays.py"), name, port, direct]
            stack.enter_context(served(relay, url + "/readyz"))
        click.echo(f"engine {engine}, gateway {direct}, router {routed}, floors {floors}")
        cpu0, (dsum0, dcount0) = cpu_seconds(router_pid), decision_seconds(routed)
        ttft = asyncio.run(
            paired_ttft(
                direct, {"router": routed, **{FLOORS[n]: u for n, u in floors.items()}}, pairs
            )
        )
        click.echo(f"added TTFT: {json.dumps(ttft)}")
        loops: dict[str, list[dict[str, Any]]] = {"direct": [], "routed": []}
        cpu_loops0 = cpu_seconds(router_pid)
        for block in range(rounds):
            # ABBA blocks: a drift in the machine's load hits both sides alike.
            for name in ("direct", "routed") if block % 2 == 0 else ("routed", "direct"):
                url = direct if name == "direct" else routed
                result = asyncio.run(closed_loop(url, concurrency, seconds, max_tokens))
                click.echo(f"{name:7s} {result}")
                loops[name].append(result)
        cpu1, (dsum1, dcount1) = cpu_seconds(router_pid), decision_seconds(routed)
    routed_requests = pairs + 20 + sum(r["requests"] for r in loops["routed"])
    hops = ttft["hops"]
    routed_tokens = sum(r["tokens"] for r in loops["routed"])
    # Each block's routed/direct ratio, and their median: one noisy block cannot decide it.
    ratios = [
        r["tokens_per_s"] / d["tokens_per_s"]
        for r, d in zip(loops["routed"], loops["direct"], strict=True)
    ]
    loss = 1 - statistics.median(ratios)
    cpu_per_token_us = 1e6 * (cpu1 - cpu_loops0) / routed_tokens
    summary = {
        "added_ttft_p50_ms": hops["router"]["added_ttft_p50_ms"],
        "added_ttft_p90_ms": hops["router"]["added_ttft_p90_ms"],
        # The same measure through hops that do nothing but relay: the floor under the router.
        "floors_added_ttft_p50_ms": {
            name: hops[name]["added_ttft_p50_ms"] for name in FLOORS.values()
        },
        "direct_ttft_p50_ms": ttft["direct_ttft_p50_ms"],
        "throughput_loss_at_saturation": round(loss, 4),
        "throughput_ratio_by_block": [round(r, 3) for r in ratios],
        "router_cpu_us_per_streamed_token": round(cpu_per_token_us, 1),
        "router_tokens_per_core_second": round(1e6 / cpu_per_token_us),
        "router_cpu_ms_per_request": round(1000 * (cpu1 - cpu0) / routed_requests, 3),
        "router_decision_ms_mean": round(1000 * (dsum1 - dsum0) / max(dcount1 - dcount0, 1), 4),
        "targets": {
            "added_ttft_p50_ms": {
                "target": "< 1.0",
                "met": hops["router"]["added_ttft_p50_ms"] < 1.0,
            },
            # Not judged when the blocks scatter wider than the effect to be shown.
            "throughput_loss": {
                "target": "< 0.02",
                "met": loss < 0.02 if max(ratios) - min(ratios) <= 0.04 else None,
            },
        },
    }
    report = {
        "benchmark": "router_overhead",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_end": list(os.getloadavg()),
        },
        "setup": {
            "engine": f"tests/gateway/fake_engine.py, step {step_ms} ms",
            "concurrency": concurrency,
            "seconds_per_loop": seconds,
            "max_tokens": max_tokens,
        },
        "duration_s": round(time.monotonic() - started, 1),
        "summary": summary,
        "paired_ttft": ttft,
        "closed_loop": loops,
    }
    Path(out).write_text(json.dumps(report, indent=1) + "\n")
    plot(report, Path(out).with_suffix(".png"))
    click.echo(json.dumps(summary, indent=1))


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = report["summary"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    hops = report["paired_ttft"]["hops"]
    names = list(hops)
    left.bar(names, [hops[n]["added_ttft_p50_ms"] for n in names], label="p50")
    left.scatter(names, [hops[n]["added_ttft_p90_ms"] for n in names], color="black", label="p90")
    left.axhline(1.0, color="red", linestyle="--", label="target: 1 ms added")
    left.set_ylabel("ms added to TTFT")
    left.set_title(f"added TTFT (direct p50 {s['direct_ttft_p50_ms']:.0f} ms)")
    left.legend()
    loops = report["closed_loop"]
    means = [statistics.mean(r["tokens_per_s"] for r in loops[k]) for k in ("direct", "routed")]
    right.bar(["direct", "through router"], means)
    right.set_ylabel("tokens/s")
    right.set_title(f"saturation (loss {s['throughput_loss_at_saturation']:.1%})")
    fig.suptitle("Router overhead against a fast stand-in engine")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
