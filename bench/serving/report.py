"""Per-rate summaries, ratios against plain vLLM, the gateway targets, and the plot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from loadgen import SLO, Outcome

BASELINE = "vllm"


def _pct(values: Sequence[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def summarize(outcomes: Sequence[Outcome], slo: SLO, rate: float) -> dict[str, Any]:
    """Attainment, goodput, latency percentiles and throughput of one replay."""
    n = len(outcomes)
    met = sum(o.met(slo) for o in outcomes)
    ok = [o for o in outcomes if o.status == 200 and o.ttft_s is not None]
    ttft = [o.ttft_s for o in ok if o.ttft_s is not None]
    tpot = [o.tpot_s for o in ok if o.tpot_s is not None]
    tokens = sum(o.tokens for o in outcomes)
    start = min(o.sent_at for o in outcomes)
    end = max(o.done_at for o in outcomes)
    unheld = [o for o in outcomes if not o.held]
    return {
        "rate": rate,
        "requests": n,
        "met_slo": met,
        "attainment": met / n,
        # Requests/s that met the SLO: the offered rate times the attained fraction.
        "goodput_rps": rate * met / n,
        "completed": sum(o.status == 200 and o.tokens >= o.target_tokens for o in outcomes),
        "rejected": sum(o.status in (429, 503) for o in outcomes),
        "errors": sum(o.status not in (200, 429, 503) for o in outcomes),
        "ttft_p50_ms": _ms(_pct(ttft, 50)),
        "ttft_p99_ms": _ms(_pct(ttft, 99)),
        "tpot_p50_ms": _ms(_pct(tpot, 50)),
        "tpot_p99_ms": _ms(_pct(tpot, 99)),
        "throughput_tps": tokens / (end - start) if end > start else 0.0,
        "client_tokens": tokens,
        "wall_s": end - start,
        "sample_errors": sorted({o.error for o in outcomes if o.error})[:3],
        # Streams the engine delivered in one piece at their end (see docs/bench-serving.md,
        # "held streams"), and the attainment of the others: the engine's artefact set aside.
        "held_streams": len(outcomes) - len(unheld),
        "attainment_unheld": sum(o.met(slo) for o in unheld) / len(unheld) if unheld else None,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 2)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def add_ratios(results: dict[str, list[dict[str, Any]]]) -> None:
    """Each contender's goodput, attainment and throughput relative to plain vLLM, per rate."""
    base = {row["rate"]: row for row in results.get(BASELINE, [])}
    for rows in results.values():
        for row in rows:
            ref = base.get(row["rate"])
            if ref is None:
                continue
            row["vs_vllm"] = {
                "goodput": _ratio(row["goodput_rps"], ref["goodput_rps"]),
                "throughput": _ratio(row["throughput_tps"], ref["throughput_tps"]),
                "ttft_p50_added_ms": (
                    None
                    if row["ttft_p50_ms"] is None or ref["ttft_p50_ms"] is None
                    else round(row["ttft_p50_ms"] - ref["ttft_p50_ms"], 2)
                ),
            }
            if "rounds" in row and "rounds" in ref:
                # The same ratio within each round: its spread is the run's own noise estimate.
                row["vs_vllm"]["goodput_by_round"] = [
                    _ratio(mine["goodput_rps"], theirs["goodput_rps"])
                    for mine, theirs in zip(row["rounds"], ref["rounds"], strict=True)
                ]


def targets(
    results: dict[str, list[dict[str, Any]]], overhead: dict[str, Any] | None
) -> dict[str, Any]:
    """The gateway's goals, judged on this run (None where a contender is missing)."""
    out: dict[str, Any] = {}
    base = results.get(BASELINE, [])
    by_rate = {name: {r["rate"]: r for r in rows} for name, rows in results.items()}
    # The lowest rate at which plain vLLM meets the SLO for at most half of the requests.
    judged = next((r["rate"] for r in base if r["attainment"] <= 0.5), None)
    out["rate_vllm_attainment_le_50pct"] = judged
    slo_rows, oracle_rows = by_rate.get("gateway-slo", {}), by_rate.get("gateway-oracle", {})
    if judged is not None and judged in slo_rows:
        slo_goodput = slo_rows[judged]["goodput_rps"]
        vllm_goodput = by_rate[BASELINE][judged]["goodput_rps"]
        out["slo_goodput_vs_vllm"] = {
            "rate": judged,
            "slo_goodput_rps": slo_goodput,
            "vllm_goodput_rps": vllm_goodput,
            "value": _ratio(slo_goodput, vllm_goodput),  # None when vLLM's goodput is 0
            "target": ">= 2.0",
            "met": slo_goodput >= 2 * vllm_goodput and slo_goodput > 0,
        }
        if judged in oracle_rows:
            oracle_goodput = oracle_rows[judged]["goodput_rps"]
            out["slo_goodput_vs_oracle"] = {
                "rate": judged,
                "oracle_goodput_rps": oracle_goodput,
                "value": _ratio(slo_goodput, oracle_goodput),
                "target": ">= 0.9",
                "met": slo_goodput >= 0.9 * oracle_goodput,
            }
    fcfs = by_rate.get("gateway-fcfs", {})
    if overhead is not None:
        out["gateway_added_ttft_p50_ms"] = {
            "method": "paired probe: the same request alone to vLLM and through gateway-fcfs",
            "value": overhead["added_ttft_p50_ms"],
            "iqr": [overhead["added_ttft_p25_ms"], overhead["added_ttft_p75_ms"]],
            "target": "< 1.0",
        }
    if base and fcfs:
        low, high = base[0]["rate"], base[-1]["rate"]
        if low in fcfs:
            out["gateway_added_ttft_p50_ms_at_lowest_rate"] = {
                "rate": low,
                "value": fcfs[low]["vs_vllm"]["ttft_p50_added_ms"],
                "note": "unpaired, so it carries the machine's noise",
            }
        if high in fcfs:
            loss = 1 - (fcfs[high]["vs_vllm"]["throughput"] or 0)
            out["gateway_throughput_loss_at_saturation"] = {
                "rate": high,
                "value": round(loss, 4),
                "target": "< 0.02",
            }
    return out


def plot(results: dict[str, list[dict[str, Any]]], slo: SLO, title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, rows in results.items():
        rates = [r["rate"] for r in rows]
        ax1.plot(rates, [100 * r["attainment"] for r in rows], marker="o", label=name)
        ax2.plot(rates, [r["goodput_rps"] for r in rows], marker="o", label=name)
    ax1.set(xlabel="offered rate (req/s)", ylabel="SLO attainment (%)", ylim=(-3, 103))
    ax1.axhline(50, color="grey", lw=0.6, ls=":")
    ax2.set(xlabel="offered rate (req/s)", ylabel="goodput (req/s meeting SLO)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    ax2.legend()
    fig.suptitle(
        f"{title}\nSLO: TTFT <= {slo.ttft_s * 1000:.0f} ms, TPOT <= {slo.tpot_s * 1000:.1f} ms",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
