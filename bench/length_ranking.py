"""Ranking benchmark of output-length predictors: held-out prompts *and* held-out models.

    .venv/bin/python bench/length_ranking.py [--out bench/results]

AlpacaEval (678 prompts x 16 models, Mistral-v1 tokenizer counts). 25% of prompts are held out by
a hash of the prompt id and 6 models by a hash of their name; every contender is fitted once on
the other prompts' answers of the other 10 models. Reported per contender: mean per-model
Kendall tau, MAE and p90 coverage on known models (held-out prompts), and the same for the new
models after 0, 8, 32 and 100 observed answers (scored on the held-out prompts none of them
observed). ``shipped`` is the previous predictor (verbosity-only calibration) fitted on the same
split; ``oracle`` ranks by the other models' actual answers to the same prompt. Writes
``length_ranking.json`` (top-level ``summary``) and ``length_ranking.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from goodput.profiler.datasets import load_alpaca_eval, split_prompts
from goodput.profiler.length_baselines import (
    GlobalMeanLength,
    InputLengthHistogram,
    PerModelMeanLength,
)
from goodput.profiler.length_eval import ORACLE, RankingReport, ranking_benchmark
from goodput.profiler.length_predictor import LengthPredictor

CONTENDERS = {
    "goodput": LengthPredictor,
    "shipped": partial(LengthPredictor, correction=False),
    "per-model-mean": PerModelMeanLength,
    "input-length-histogram": InputLengthHistogram,
    "global-mean": GlobalMeanLength,
}
OBSERVATIONS = (0, 8, 32, 100)


def latency_us(predictor: LengthPredictor, prompts: list[str]) -> dict[str, float]:
    """CPU time of ``predict_request`` (this thread), at the prompts given, in microseconds."""
    for p in prompts[:20]:
        predictor.predict_request(p, "m")
    cpu = []
    for _ in range(3):
        for p in prompts:
            c0 = time.thread_time_ns()
            predictor.predict_request(p, "m")
            cpu.append((time.thread_time_ns() - c0) / 1e3)
    return {"p50": float(np.percentile(cpu, 50)), "p99": float(np.percentile(cpu, 99))}


def plot(report: RankingReport, path: Path) -> None:
    fig = Figure(figsize=(15, 4.2))
    left, middle, right = fig.subplots(1, 3)
    names = [n for n in report.known_models if report.known_models[n].mean.kendall_tau is not None]
    taus = [report.known_models[n].mean.kendall_tau or 0.0 for n in names]
    left.barh(names, taus, color=["tab:green" if n == "goodput" else "tab:gray" for n in names])
    for i, t in enumerate(taus):
        left.text(t + 0.005, i, f"{t:.3f}", va="center", fontsize=8)
    left.set_xlabel("mean per-model Kendall τ")
    left.set_title("Known models, held-out prompts", fontsize=10)
    left.set_xlim(0, 0.75)
    for name, curve in report.new_models.items():
        ks = list(curve)
        style = "--" if name == ORACLE else "-o"
        for ax, values in (
            (middle, [curve[k].mean.kendall_tau for k in ks]),
            (right, [curve[k].mean.p90_coverage for k in ks]),
        ):
            if any(v is not None for v in values):
                ax.plot(ks, [np.nan if v is None else v for v in values], style, label=name)
    middle.set_ylabel("mean per-model Kendall τ")
    middle.set_ylim(-0.1, 0.75)
    right.set_ylabel("p90 coverage (share of answers ≤ predicted p90)")
    right.axhspan(0.85, 0.95, color="tab:green", alpha=0.1, label="target 0.85-0.95")
    right.set_ylim(0.7, 1.0)
    n = len(report.held_out_models)
    for ax, what in ((middle, "ranking"), (right, "p90 calibration")):
        ax.set_xlabel("observed answers of the new model")
        ax.set_title(f"New models ({n}), held-out prompts: {what}", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    data = load_alpaca_eval()
    started = time.perf_counter()
    report = ranking_benchmark(data, CONTENDERS, observations=OBSERVATIONS, on_step=print)
    result = report.to_json()
    test = split_prompts(data.prompt_ids, report.test_fraction)
    train = [(data.prompts[i], data.models[i]) for i in np.flatnonzero(~test)]
    model = LengthPredictor().fit(train, data.output_tokens[~test])
    held_prompts = sorted({data.prompts[i] for i in np.flatnonzero(test)}, key=len)
    median = held_prompts[len(held_prompts) // 2]
    result["latency_us"] = {
        "held_out_prompts": latency_us(model, held_prompts),
        f"median_prompt_{len(median)}_chars": latency_us(model, [median] * 200),
        "200k_chars_trailing_whitespace": latency_us(model, ["Write a poem." + " " * 200_000] * 30),
        "540k_chars_document": latency_us(
            model, ["Summarise this.\n\n" + "lorem ipsum " * 45_000] * 10
        ),
        "5.4M_chars_document": latency_us(
            model, ["Summarise this.\n\n" + "lorem ipsum " * 450_000] * 10
        ),
    }
    result["seconds"] = time.perf_counter() - started
    result["tokenizer"] = data.tokenizer
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "length_ranking.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(report, args.out / "length_ranking.png")
    for name, row in result["summary"].items():
        print(name, {k: round(v, 3) for k, v in row.items() if v is not None and "tau" in k})


if __name__ == "__main__":
    main()
