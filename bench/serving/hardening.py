"""The gateway's hardening, measured at length (issue 15): the long fuzz run and memory under
maximum-size bodies.

1. **Fuzz**: ``tests/gateway/test_fuzz.py`` with ``--examples`` generated requests (default
   20,000) against the fake engine — the CI test runs 2,000 of the same.
2. **Memory**: a real ``goodput serve`` process in front of the fake engine; its resident memory
   sampled every 5 ms while 5 clients at once send a body of the maximum size (4 MB, valid JSON),
   then while 5 send 100 MB (the issue's attack: refused by its length before it is read, and,
   without a length, as it arrives). Target: peak <= 2 x idle + 5 x the body limit.

Run from the repository root, as a script (``python -m`` would put the root on sys.path, where
the operator/ folder shadows the standard library)::

    .venv/bin/python bench/serving/hardening.py               # ~4 min on 2 cores
    .venv/bin/python bench/serving/hardening.py --examples 2000

Writes ``bench/results/gateway-hardening.json`` (with a ``summary``) and ``.png``.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import httpx
import uvicorn

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "gateway"))
from fake_engine import FakeEngine  # noqa: E402

from goodput.dev.processes import free_port, served  # noqa: E402

RESULTS = ROOT / "bench" / "results"
BODY_LIMIT_MB = 4.0


def run_fuzz(examples: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "fuzz.json"
        env = {
            **os.environ,
            "GOODPUT_FUZZ_EXAMPLES": str(examples),
            "GOODPUT_FUZZ_REPORT": str(report),
        }
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "tests/gateway/test_fuzz.py", "-q", "-p",
             "no:cacheprovider"],
            cwd=ROOT, env=env, capture_output=True, text=True,
        )  # fmt: skip
        result: dict[str, Any] = json.loads(report.read_text())
        result["passed"] = done.returncode == 0
        result["wall_s"] = time.monotonic() - started
        if done.returncode != 0:
            result["pytest_tail"] = done.stdout[-3000:]
        return result


@contextmanager
def fake_engine() -> Iterator[str]:
    engine = FakeEngine()
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(engine.app, host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def gateway(engine_url: str) -> Iterator[tuple[str, int]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable, "-m", "goodput", "serve", "--engine-url", engine_url, "--port", str(port),
        "--deployment", "bench", "--served-model-name", "tiny", "--ttft-ms", "2000",
        "--tpot-ms", "200", "--max-body-mb", str(BODY_LIMIT_MB), "--log-level", "warning",
    ]  # fmt: skip
    with served(command, f"{url}/readyz", timeout_s=60) as process:
        yield url, process.pid


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@contextmanager
def peak_rss(pid: int) -> Iterator[dict[str, float]]:
    out = {"peak_mb": rss_mb(pid)}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            out["peak_mb"] = max(out["peak_mb"], rss_mb(pid))
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield out
    finally:
        stop.set()
        thread.join()


async def five_at_once(url: str, body: Any, headers: dict[str, str]) -> list[int | str]:
    async with httpx.AsyncClient(timeout=120) as client:

        async def one() -> int | str:
            try:
                response = await client.post(
                    f"{url}/v1/completions", content=body() if callable(body) else body,
                    headers=headers,
                )  # fmt: skip
            except httpx.TransportError:
                # The gateway answered 413 and closed while the client was still sending.
                return "closed mid-upload"
            return response.status_code

        return list(await asyncio.gather(*(one() for _ in range(5))))


def measure_memory() -> dict[str, Any]:
    limit = int(BODY_LIMIT_MB * 1024 * 1024)
    prompt = "x" * (limit - 100)
    largest = json.dumps({"model": "tiny", "prompt": prompt, "max_tokens": 1}).encode()
    assert len(largest) <= limit
    huge = b"x" * (100 * 1024 * 1024)

    async def huge_unannounced() -> Any:  # no Content-Length: refused as it arrives
        for _ in range(100):
            yield b"x" * (1024 * 1024)

    with fake_engine() as engine_url, gateway(engine_url) as (url, pid):
        httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2})
        time.sleep(0.5)
        idle = rss_mb(pid)
        runs: dict[str, Any] = {}
        for name, body, headers in (
            ("5 x 4 MB (the limit)", largest, {"content-type": "application/json"}),
            ("5 x 100 MB with Content-Length", huge, {}),
            ("5 x 100 MB chunked", huge_unannounced, {}),
        ):
            with peak_rss(pid) as peak:
                statuses = asyncio.run(five_at_once(url, body, headers))
            time.sleep(0.5)
            runs[name] = {
                "statuses": statuses,
                "peak_mb": round(peak["peak_mb"], 1),
                "after_mb": round(rss_mb(pid), 1),
            }
        answer = httpx.post(
            f"{url}/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 2}
        )
    bound = 2 * idle + 5 * BODY_LIMIT_MB
    return {
        "idle_mb": round(idle, 1),
        "body_limit_mb": BODY_LIMIT_MB,
        "bound_mb": round(bound, 1),
        "runs": runs,
        "within_bound": all(r["peak_mb"] <= bound for r in runs.values()),
        "serves_afterwards": answer.status_code == 200,
    }


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fuzz, memory = result["fuzz"], result["memory"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    statuses = fuzz["statuses"]
    left.bar([str(s) for s in statuses], list(statuses.values()), color="#4c72b0")
    left.set_title(f"{fuzz['requests']:,} fuzzed requests: answers by status")
    left.set_ylabel("requests")
    names = ["idle", *memory["runs"]]
    values = [memory["idle_mb"], *(r["peak_mb"] for r in memory["runs"].values())]
    right.barh(names, values, color="#55a868")
    right.axvline(memory["bound_mb"], color="#c44e52", linestyle="--", label="2 x idle + 5 x limit")
    right.set_xlabel("gateway RSS, MB (peak)")
    right.set_title("Memory under maximum and oversized bodies")
    right.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


@click.command()
@click.option("--examples", default=20_000, show_default=True, help="Fuzzed requests.")
@click.option("--out", default="gateway-hardening", show_default=True)
def main(examples: int, out: str) -> None:
    fuzz = run_fuzz(examples)
    memory = measure_memory()
    statuses = {int(k): v for k, v in fuzz["statuses"].items()}
    result = {
        "benchmark": "gateway hardening: fuzz and memory (issue 15)",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "summary": {
            "fuzzed_requests": fuzz["requests"],
            "fuzz_seconds": round(fuzz["seconds"], 1),
            "gateway_5xx": sum(v for k, v in statuses.items() if k >= 500),
            "property_failures": len(fuzz["failures"]),
            "hangs": fuzz["hangs"],
            "idle_rss_mb": memory["idle_mb"],
            "peak_rss_mb": max(r["peak_mb"] for r in memory["runs"].values()),
            "rss_bound_mb": memory["bound_mb"],
            "rss_within_bound": memory["within_bound"],
        },
        "fuzz": fuzz,
        "memory": memory,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{out}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot(result, RESULTS / f"{out}.png")
    print(json.dumps(result["summary"], indent=2))


if __name__ == "__main__":
    main()
