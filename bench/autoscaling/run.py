"""Autoscaling benchmark: static peak, static mean, an in-flight HPA and Goodput's SLO-driven
autoscaler on the same compressed day of Azure traffic, in one simulation each.

Everything a replica does is timed by the profiler (step latency, capacity, cold start); the
Goodput contender is ``goodput.operator.autoscaling`` as the operator runs it. Writes
``bench/results/autoscaling.json`` (``summary``: per contender GPU-hours, attainment, dropped,
scale events, and ratios to static peak) and ``bench/results/autoscaling.png``.

    .venv/bin/python bench/autoscaling/run.py            # about a minute a scenario
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from contenders import GoodputScaler, InflightHPA, StaticReplicas
from plots import plot
from sim import Result, Scaler, Serving, simulate
from workload import BUSINESS_DAY, DAY, Workload, compressed_day

from goodput.operator.autoscaling import (
    Autoscaler,
    AutoscalingPolicy,
    Bounds,
    ProfilerThroughput,
    TrendForecast,
)
from goodput.operator.autoscaling.rule import replicas_for
from goodput.profiler import catalog
from goodput.profiler.capacity import SLO, LengthDistribution, capacity, replica_timings
from goodput.profiler.cold_start import ColdStart

RESULTS = Path(__file__).resolve().parents[1] / "results"
#: The HPA's target: this share of the requests a replica holds at its SLO capacity.
HPA_UTILIZATION = 0.85


def run_scenario(
    workload: Workload, args: argparse.Namespace, *, min_replicas: int
) -> tuple[dict[str, Result], dict[str, Any]]:
    arch, gpu = catalog.get(args.model), catalog.gpu(args.gpu)
    slo = SLO(args.ttft_ms / 1000, args.tpot_ms / 1000)
    reference = LengthDistribution.from_trace("azure-conv")
    cap = capacity(arch, gpu, tp=args.tp, slo=slo, lengths=reference)
    timings = replica_timings(
        arch, gpu, tp=args.tp, context=int(reference.mean_prompt + reference.mean_output / 2)
    )
    cold_start_s = ColdStart().for_model(arch, tp=args.tp)
    serving = Serving(
        timings=timings,
        limit=cap.max_batch,
        queue_cap=max(1, math.ceil(cap.max_rps * slo.ttft_s)),
        gpus_per_replica=args.tp,
        cold_start_s=cold_start_s,
        ttft_s=slo.ttft_s,
        tpot_s=slo.tpot_s,
    )
    policy = AutoscalingPolicy(headroom=args.headroom)
    forecast = TrendForecast(window_s=args.forecast_window_s, damping=args.forecast_damping)
    _, per_minute = workload.rate(60.0)
    peak_rps, mean_rps = float(per_minute.max()), len(workload) / workload.day_s
    # The static counts are sized as the autoscaler sizes (same capacity, same headroom).
    peak = replicas_for(peak_rps, cap.max_rps, policy.headroom)
    mean = replicas_for(mean_rps, cap.max_rps, policy.headroom)
    max_replicas = math.ceil(peak * 1.5)
    throughput = ProfilerThroughput(arch, gpu, slo, reference, tp=args.tp)

    def goodput_scaler(policy: AutoscalingPolicy, name: str) -> GoodputScaler:
        autoscaler = Autoscaler(throughput, cold_start_s=cold_start_s, tick_s=args.tick_s,
                                forecast=forecast, policy=policy)  # fmt: skip
        idle = args.idle_s if min_replicas == 0 else None
        bounds = Bounds(min_replicas, max_replicas, stabilization_s=300.0, idle_before_zero_s=idle)
        return GoodputScaler(autoscaler, bounds, slo_attainment=args.attainment, name=name)

    contenders: list[tuple[Scaler, int]] = [
        (StaticReplicas("static-peak", peak), peak),
        (StaticReplicas("static-mean", mean), mean),
        (
            InflightHPA(
                target_per_replica=max(1.0, round(cap.batch_at_max_rps * HPA_UTILIZATION)),
                min_replicas=max(min_replicas, 1),
                max_replicas=max_replicas,
            ),
            mean,
        ),
        (goodput_scaler(policy, "goodput"), mean),
    ]
    prefill = timings.prefill_s(workload.prompt_tokens.astype(np.float64))
    results: dict[str, Result] = {}
    for scaler, initial in contenders:
        if args.only and scaler.name not in args.only:
            continue
        started = time.perf_counter()
        results[scaler.name] = simulate(
            workload, serving, scaler, initial=initial, tick_s=args.tick_s, prefill_s=prefill
        )
        print(
            f"{workload.name} {scaler.name}: {results[scaler.name].summary()} "
            f"({time.perf_counter() - started:.1f} s)",
            flush=True,
        )
    # A clairvoyant scaler's GPU-hours: each minute exactly the replicas the same sizing gives
    # for that minute's actual rate, no cold start, no stabilisation. No contender can do less
    # at the same headroom; it bounds what the 0.6x target asks of this day.
    minutes = [replicas_for(float(r), cap.max_rps, policy.headroom) for r in per_minute]
    bound_gpu_hours = sum(max(n, min_replicas) for n in minutes) * args.tp / 60.0
    setup = {
        "model": args.model,
        "gpu": gpu.name,
        "tensor_parallel": args.tp,
        "slo": {"ttft_ms": args.ttft_ms, "tpot_ms": args.tpot_ms, "attainment": args.attainment},
        "replica_capacity_rps": round(cap.max_rps, 3),
        "replica_capacity_limited_by": cap.limited_by,
        "gateway_limit": serving.limit,
        "gateway_queue_cap": serving.queue_cap,
        "cold_start_s": round(cold_start_s, 1),
        "tick_s": args.tick_s,
        "requests": len(workload),
        "day_s": workload.day_s,
        "compression": round(86_400 / workload.day_s, 2),
        "mean_rps": round(mean_rps, 2),
        "peak_minute_rps": round(peak_rps, 2),
        "static_peak_replicas": peak,
        "clairvoyant_gpu_hours": round(bound_gpu_hours, 2),
        "static_mean_replicas": mean,
        "max_replicas": max_replicas,
        "min_replicas": min_replicas,
        "hpa_target_inflight_per_replica": contenders[2][0].target_per_replica,  # type: ignore[attr-defined]
        "policy": policy.__dict__,
        "forecast": forecast.__dict__,
    }
    # The HPA at other targets: at what GPU-hours would it reach the SLO's attainment?
    sweep = []
    for target in args.hpa_targets if "hpa-inflight" in results else []:
        hpa = InflightHPA(target, max(min_replicas, 1), max_replicas, name=f"hpa-{target}")
        r = simulate(workload, serving, hpa, initial=mean, tick_s=args.tick_s, prefill_s=prefill)
        sweep.append({"target_inflight_per_replica": target, **r.summary()})
        print(f"{workload.name} {hpa.name}: {r.summary()}", flush=True)
    setup["hpa_sweep"] = sweep
    # Goodput at other headrooms: the same trade-off curve, for a like-for-like comparison.
    curve = []
    for headroom in args.goodput_headrooms if "goodput" in results else []:
        scaler = goodput_scaler(replace(policy, headroom=headroom), f"goodput-{headroom}")
        r = simulate(workload, serving, scaler, initial=mean, tick_s=args.tick_s, prefill_s=prefill)
        curve.append({"headroom": headroom, **r.summary()})
        print(f"{workload.name} {scaler.name}: {r.summary()}", flush=True)
    setup["goodput_sweep"] = curve
    return results, setup


def summarise(results: dict[str, Result]) -> dict[str, Any]:
    summary = {name: r.summary() for name, r in results.items()}
    base = summary.get("static-peak") or next(iter(summary.values()))
    for s in summary.values():
        s["gpu_hours_vs_static_peak"] = round(float(s["gpu_hours"]) / float(base["gpu_hours"]), 3)
        s["attainment_vs_static_peak"] = round(
            float(s["attainment"]) / float(base["attainment"]), 4
        )
    return summary


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="llama-3-70b")
    parser.add_argument("--gpu", default="H100-80GB")
    parser.add_argument("--tp", type=int, default=4)
    parser.add_argument("--ttft-ms", type=float, default=1000.0)
    parser.add_argument("--tpot-ms", type=float, default=50.0)
    parser.add_argument("--attainment", type=float, default=0.99)
    parser.add_argument("--day-s", type=float, default=14400.0, help="simulated seconds a day")
    parser.add_argument("--mean-rps", type=float, default=16.0)
    parser.add_argument("--tick-s", type=float, default=15.0)
    parser.add_argument("--idle-s", type=float, default=600.0)
    parser.add_argument("--scenarios", nargs="+", default=["day", "business-day"])
    parser.add_argument("--headroom", type=float, default=AutoscalingPolicy.headroom)
    parser.add_argument("--forecast-window-s", type=float, default=600.0)
    parser.add_argument("--forecast-damping", type=float, default=1.0)
    parser.add_argument("--hpa-targets", type=float, nargs="*", default=[24.0, 20.0, 16.0, 12.0])
    parser.add_argument("--goodput-headrooms", type=float, nargs="*", default=[0.2, 0.4, 0.8])
    parser.add_argument("--only", nargs="*", default=[], help="contenders to run (debugging)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    scenarios: dict[str, Any] = {}
    figures: dict[str, tuple[Workload, dict[str, Result]]] = {}
    for name in args.scenarios:
        envelope, min_replicas = (DAY, 1) if name == "day" else (BUSINESS_DAY, 0)
        workload = compressed_day(name, envelope, day_s=args.day_s, mean_rps=args.mean_rps)
        results, setup = run_scenario(workload, args, min_replicas=min_replicas)
        goodput = results["goodput"]
        scenarios[name] = {
            "setup": setup,
            "summary": summarise(results),
            "goodput_decisions": goodput.decisions,
        }
        figures[name] = (workload, results)

    first = args.scenarios[0]
    out = {
        "benchmark": "autoscaling",
        "date": time.strftime("%Y-%m-%d"),
        "machine": platform.node(),
        "trace": "azure_llm_2023_conv.csv (one hour) on a synthetic diurnal envelope",
        "summary": scenarios[first]["summary"],
        "summary_scenario": first,
        "scenarios": scenarios,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "autoscaling.json").write_text(json.dumps(out, indent=1) + "\n")
    plot(figures, args.out / "autoscaling.png")
    print(json.dumps({k: v["summary"] for k, v in scenarios.items()}, indent=1))


if __name__ == "__main__":
    main()
