"""Pictures of a length evaluation, for a person: predicted vs actual, and ranking per model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from goodput.profiler.length_eval import REFERENCE, LengthReport, ScenarioResult

__all__ = ["plot_predicted_vs_actual", "plot_tau_by_model"]


def _scatter(ax: Axes, result: ScenarioResult, title: str) -> None:
    actual = np.array([r[1] for r in result.rows], dtype=np.float64)
    p50 = np.array([r[2] for r in result.rows], dtype=np.float64)
    ax.scatter(np.maximum(actual, 1), np.maximum(p50, 1), s=4, alpha=0.25, linewidths=0)
    ax.plot([1, 5000], [1, 5000], color="black", linewidth=0.8, label="predicted = actual")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(1, 5000)
    ax.set_ylim(1, 5000)
    tau = result.pooled.kendall_tau
    per_model = result.mean.kendall_tau
    ax.set_title(
        f"{title}\nKendall τ per model {per_model:.2f}, pooled {tau:.2f}"
        if tau is not None and per_model is not None
        else title,
        fontsize=10,
    )
    ax.set_xlabel("actual output tokens")
    ax.set_ylabel("predicted median")
    ax.legend(loc="upper left", fontsize=8)


def plot_predicted_vs_actual(report: LengthReport, path: Path) -> Path:
    """Held-out prompts: ours, the AIBrix-style histogram, and the reference ceiling."""
    panels = [
        ("goodput", "goodput (held-out prompts)"),
        ("input-length-histogram", "input-length histogram (AIBrix-style)"),
        (REFERENCE, "reference: other models' answers"),
    ]
    panels = [(k, t) for k, t in panels if k in report.held_out_prompts]
    # A bare Figure (no pyplot): renders to a file with Agg, never opens a window or keeps state.
    fig = Figure(figsize=(5 * len(panels), 4.6))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        _scatter(ax, report.held_out_prompts[key], title)
    fig.suptitle(f"Output length on held-out prompts ({report.tokenizer} tokens)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_tau_by_model(report: LengthReport, path: Path) -> Path:
    """Kendall τ per model: ours on held-out prompts and models, the ceiling, and the histogram."""
    cal = report.calibration
    series = [
        ("held-out prompts: goodput", report.held_out_prompts.get("goodput")),
        (
            f"held-out model: goodput (+{cal} obs)",
            report.held_out_models.get(f"goodput (+{cal} obs)"),
        ),
        (
            "held-out prompts: input-length histogram",
            report.held_out_prompts.get("input-length-histogram"),
        ),
        ("reference: other models' answers", report.held_out_prompts.get(REFERENCE)),
    ]
    kept = [(label, r) for label, r in series if r is not None]
    models = report.models
    x = np.arange(len(models))
    width = 0.8 / max(len(kept), 1)
    fig = Figure(figsize=(12, 5))
    ax = fig.subplots()
    for k, (label, result) in enumerate(kept):
        values = [
            (result.per_model[m].kendall_tau or 0.0) if m in result.per_model else 0.0
            for m in models
        ]
        ax.bar(x + (k - (len(kept) - 1) / 2) * width, values, width, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(models, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("Kendall τ (predicted vs actual)")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_title("Ranking quality per serving model")
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.0)
    ax.legend(fontsize=8, loc="upper center", ncols=len(kept))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
