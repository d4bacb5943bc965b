"""Cascade benchmark, offline half: how much of the large model's quality a cascade keeps for the
share of requests it sends there, on prompts the quality predictor never saw.

Quality is AlpacaEval's judge (``preferences.jsonl.gz``): a prompt routed to model m scores the
judge's verdict of m's answer against ``gpt4_1106_preview``'s (1: m's answer better, 0: worse;
the weighted judges give the probability between; gpt4_1106_preview against itself is 0.5).
A routing's quality is the mean over prompts; "all-large" is the large model everywhere.

Held-out: 5-fold cross-fitting by prompt id (``datasets.prompt_folds``): each prompt's route is
decided by a predictor fitted on the verdicts of the other four folds only, every model's
verdicts on it left out. Contenders at each share s sent to the large model:

- ``learned``: the s of prompts with the largest predicted gain (the ``model-cascade`` stage's
  rule; on a stream it is the window's quantile threshold);
- ``random``: s of prompts at random (its expectation, exactly);
- ``best-rule``: one keyword or length rule — the prompt cue or size feature (either sign)
  whose ranking scored best on the training folds, ties by prompt hash;
- ``oracle``: the judge's own verdicts (an upper bound no router reaches).

95% intervals: 2,000 bootstrap resamples of the prompts, all contenders on the same resample;
"beats random" is judged on the paired difference. Writes ``bench/results/cascade.json``
(``summary``: per contender, at a 30% share) and ``bench/results/cascade.png``.

    .venv/bin/python bench/cascade/run.py     # about a minute
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from goodput.profiler.datasets import (
    PreferenceSet,
    hash_fraction,
    load_alpaca_preferences,
    prompt_folds,
)
from goodput.profiler.prompt_features import FEATURE_NAMES, prompt_cue_matrix
from goodput.profiler.quality_predictor import QualityPredictor

FloatArray = npt.NDArray[np.float64]
RESULTS = Path(__file__).resolve().parents[1] / "results"
SHARES = np.round(np.linspace(0.0, 1.0, 21), 2)
HEADLINE_SHARE = 0.3
SERVING_PARTS = ("serving", "serving_stand_in")  # written by serve.py, kept across reruns
N_FOLDS = 5
N_BOOT = 2000
PAIRS = (
    ("Mistral-7B-Instruct-v0.2", "gpt4_1106_preview"),
    ("gemma-7b-it", "gpt4_1106_preview"),
    ("Mistral-7B-Instruct-v0.2", "Mixtral-8x7B-Instruct-v0.1"),
)


def verdict_table(data: PreferenceSet) -> tuple[list[int], list[str], dict[str, FloatArray]]:
    """Prompt ids, texts and each model's verdict per prompt (prompts every model was judged on)."""
    by_model: dict[str, dict[int, float]] = {}
    texts: dict[int, str] = {}
    for pid, text, model, v in zip(
        data.prompt_ids, data.prompts, data.models, data.verdicts, strict=True
    ):
        by_model.setdefault(model, {})[int(pid)] = float(v)
        texts[int(pid)] = text
    ids = sorted(set.intersection(*(set(v) for v in by_model.values())))
    table = {m: np.array([v[i] for i in ids]) for m, v in by_model.items()}
    return ids, [texts[i] for i in ids], table


def learned_gains(
    data: PreferenceSet, ids: list[int], texts: list[str], small: str, large: str
) -> FloatArray:
    """Predicted gain of the large model over the small one, each prompt's from a predictor that
    never saw it."""
    folds = prompt_folds(ids, N_FOLDS, salt="cascade")
    row_fold = dict(zip(ids, folds, strict=True))
    rows = np.array([row_fold.get(int(p), -1) for p in data.prompt_ids])
    gains = np.empty(len(ids))
    for k in range(N_FOLDS):
        train = (rows != k) & (rows >= 0)
        model = QualityPredictor(reference=data.reference).fit(
            [(data.prompts[i], data.models[i]) for i in np.flatnonzero(train)],
            data.verdicts[train],
        )
        test = np.flatnonzero(folds == k)
        scores = model.prompt_scores([texts[i] for i in test])
        gains[test] = model.win_rate(scores, large) - model.win_rate(scores, small)
    return gains


def route(priority: FloatArray, share: float) -> npt.NDArray[np.bool_]:
    """True where a prompt goes to the large model: the top ``share`` by ``priority``."""
    n_large = round(share * priority.shape[0])
    chosen = np.zeros(priority.shape[0], dtype=bool)
    chosen[np.argsort(-priority, kind="stable")[:n_large]] = True
    return chosen


def tie_break(ids: list[int]) -> FloatArray:
    return np.array([hash_fraction(str(i), "cascade-ties") for i in ids]) * 1e-9


def rule_priorities(texts: list[str]) -> dict[str, FloatArray]:
    """Every single-feature rule, both signs: a cue (keyword family) or a size (length)."""
    cues = prompt_cue_matrix(texts)
    rules: dict[str, FloatArray] = {}
    for j, name in enumerate(FEATURE_NAMES):
        column = cues[:, j]
        if np.ptp(column) > 0:
            rules[f"{name} high -> large"] = column
            rules[f"{name} low -> large"] = -column
    return rules


def best_rule(
    ids: list[int], rules: dict[str, FloatArray], q_small: FloatArray, q_large: FloatArray
) -> tuple[FloatArray, dict[str, int]]:
    """Per fold, the rule that scored best on the other folds (mean quality over the curve),
    applied to the fold's prompts; and how often each rule was picked."""
    folds = prompt_folds(ids, N_FOLDS, salt="cascade")
    ties = tie_break(ids)
    priority = np.empty(len(ids))
    picked: dict[str, int] = {}
    for k in range(N_FOLDS):
        train, test = folds != k, folds == k
        best, best_score = "", -np.inf
        for name, values in rules.items():
            p = values[train] + ties[train]
            score = np.mean(
                [quality(route(p, s), q_small[train], q_large[train]).mean() for s in SHARES]
            )
            if score > best_score:
                best, best_score = name, score
        picked[best] = picked.get(best, 0) + 1
        # Ranks within the held-out fold only: a rule's values are comparable across prompts.
        priority[test] = rules[best][test] + ties[test]
    return priority, picked


def quality(
    to_large: npt.NDArray[np.bool_], q_small: FloatArray, q_large: FloatArray
) -> FloatArray:
    return np.where(to_large, q_large, q_small)


def curves(
    priorities: dict[str, FloatArray], q_small: FloatArray, q_large: FloatArray, seed: int = 0
) -> dict[str, Any]:
    """Quality per share per contender, with bootstrap intervals (same resamples for all)."""
    rng = np.random.default_rng(seed)
    n = q_small.shape[0]
    boot = rng.integers(0, n, size=(N_BOOT, n))
    out: dict[str, Any] = {name: [] for name in [*priorities, "random"]}
    for s in SHARES:
        per_prompt = {
            name: quality(route(p, float(s)), q_small, q_large) for name, p in priorities.items()
        }
        per_prompt["random"] = (1.0 - s) * q_small + s * q_large  # its expectation
        means = {name: v[boot].mean(axis=1) for name, v in per_prompt.items()}
        for name, v in per_prompt.items():
            low, high = np.percentile(means[name], [2.5, 97.5])
            ci = [float(low), float(high)]
            point = {"share": float(s), "quality": float(v.mean()), "ci95": ci}
            if name != "random":
                diff = means[name] - means["random"]
                point["vs_random"] = float(v.mean() - per_prompt["random"].mean())
                point["vs_random_ci95"] = [float(x) for x in np.percentile(diff, [2.5, 97.5])]
            out[name].append(point)
    return out


def at(curve: list[dict[str, Any]], share: float) -> dict[str, Any]:
    return next(p for p in curve if abs(p["share"] - share) < 1e-9)


def evaluate_pair(
    data: PreferenceSet, small: str, large: str, rules: dict[str, FloatArray], ids: list[int],
    texts: list[str], table: dict[str, FloatArray],
) -> dict[str, Any]:  # fmt: skip
    q_small, q_large = table[small], table[large]
    ties = tie_break(ids)
    gains = learned_gains(data, ids, texts, small, large)
    rule_priority, picked = best_rule(ids, rules, q_small, q_large)
    priorities = {
        "learned": gains + ties,
        "best-rule": rule_priority,
        "oracle": (q_large - q_small) + ties,
    }
    result = curves(priorities, q_small, q_large)
    all_large = float(q_large.mean())
    head = {name: at(c, HEADLINE_SHARE) for name, c in result.items()}
    learned = head["learned"]
    return {
        "small": small,
        "large": large,
        "judges": {small: data.judges[small], large: data.judges[large]},
        "prompts": len(ids),
        "all_small": float(q_small.mean()),
        "all_large": all_large,
        "best_rule_picked": picked,
        "curves": result,
        "at_30pct": {
            "learned_fraction_of_all_large": learned["quality"] / all_large,
            "oracle_fraction_of_all_large": head["oracle"]["quality"] / all_large,
            "random_fraction_of_all_large": head["random"]["quality"] / all_large,
            "learned_beats_random_beyond_its_ci": bool(
                learned["quality"] > head["random"]["ci95"][1]
            ),
            "learned_minus_random_ci95_excludes_0": bool(learned["vs_random_ci95"][0] > 0),
        },
    }


def summary(pair: dict[str, Any]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    all_large = pair["all_large"]
    for name, curve in pair["curves"].items():
        point = at(curve, HEADLINE_SHARE)
        row = {
            "large_share": HEADLINE_SHARE,
            "quality": round(point["quality"], 4),
            "quality_ci95_low": round(point["ci95"][0], 4),
            "quality_ci95_high": round(point["ci95"][1], 4),
            "fraction_of_all_large": round(point["quality"] / all_large, 4),
        }
        if "vs_random" in point:
            row["vs_random"] = round(point["vs_random"], 4)
            row["vs_random_ci95_low"] = round(point["vs_random_ci95"][0], 4)
            row["vs_random_ci95_high"] = round(point["vs_random_ci95"][1], 4)
        out[name] = row
    out["all-large"] = {"large_share": 1.0, "quality": round(all_large, 4)}
    out["all-small"] = {"large_share": 0.0, "quality": round(pair["all_small"], 4)}
    return out


def plot(pairs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(pairs), figsize=(5.2 * len(pairs), 4.2), squeeze=False)
    styles = {"learned": "C0", "random": "0.4", "best-rule": "C2", "oracle": "C3"}
    for ax, pair in zip(axes[0], pairs, strict=True):
        for name, color in styles.items():
            curve = pair["curves"][name]
            x = [p["share"] for p in curve]
            y = [p["quality"] for p in curve]
            ax.plot(x, y, color=color, label=name, ls=":" if name == "oracle" else "-")
            low = [p["ci95"][0] for p in curve]
            high = [p["ci95"][1] for p in curve]
            ax.fill_between(x, low, high, color=color, alpha=0.15, lw=0)
        ax.axhline(0.9 * pair["all_large"], color="k", lw=0.8, ls="--", label="90% of all-large")
        ax.axvline(HEADLINE_SHARE, color="k", lw=0.5, alpha=0.5)
        ax.set_title(f"{pair['small']} -> {pair['large']}", fontsize=9)
        ax.set_xlabel("share of requests sent to the large model")
        ax.set_ylabel("judge's mean preference vs gpt4_1106_preview")
        ax.legend(fontsize=7)
    fig.suptitle("Cascade quality on held-out prompts (5-fold by prompt id, 95% bootstrap CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=RESULTS / "cascade.json")
    args = parser.parse_args()
    started = time.time()
    data = load_alpaca_preferences()
    ids, texts, table = verdict_table(data)
    rules = rule_priorities(texts)
    pairs = [evaluate_pair(data, s, large, rules, ids, texts, table) for s, large in PAIRS]
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    document = {
        "benchmark": "cascade",
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "machine": platform.node(),
        "data": "AlpacaEval preferences.jsonl.gz (judge vs gpt4_1106_preview), 5-fold by prompt",
        "headline_pair": f"{PAIRS[0][0]} -> {PAIRS[0][1]}",
        "summary": summary(pairs[0]),
        "pairs": pairs,
        # The serving run (bench/cascade/serve.py) writes its own part; kept across reruns.
        **{k: v for k, v in previous.items() if k in SERVING_PARTS},
    }
    for part in SERVING_PARTS:
        document["summary"].update(previous.get(part, {}).get("summary", {}))
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    plot(pairs, args.out.with_suffix(".png"))
    for pair in pairs:
        print(f"{pair['small']} -> {pair['large']}: all-large {pair['all_large']:.3f}")
        for name, row in summary(pair).items():
            print(f"  {name:10s} {json.dumps(row)}")
        print(f"  {json.dumps(pair['at_30pct'])}  rules picked: {pair['best_rule_picked']}")
    print(f"{time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
