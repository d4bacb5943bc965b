"""One figure: per scenario, the arrival rate and every contender's replicas over the day."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from sim import Result
from workload import Workload

COLOURS = {"static-peak": "tab:red", "static-mean": "tab:orange", "hpa-inflight": "tab:purple",
           "goodput": "tab:green"}  # fmt: skip


def plot(figures: dict[str, tuple[Workload, dict[str, Result]]], path: Path) -> None:
    fig, axes = plt.subplots(len(figures), 1, figsize=(11, 4.2 * len(figures)), squeeze=False)
    for ax, (name, (workload, results)) in zip(axes[:, 0], figures.items(), strict=True):
        starts, rate = workload.rate(60.0)
        scale = 24.0 / workload.day_s  # simulated seconds -> hours of the day
        load = ax.twinx()
        load.fill_between(starts * scale, rate, step="post", color="0.85", label="arrivals")
        load.set_ylabel("arrivals, req/s (1-min bins)")
        ax.set_zorder(load.get_zorder() + 1)
        ax.patch.set_visible(False)
        for contender, result in results.items():
            t = [at * scale for at, *_ in result.timeline]
            replicas = [n for _, n, *_ in result.timeline]
            s = result.summary()
            ax.step(t, replicas, where="post", color=COLOURS.get(contender), linewidth=1.4,
                    label=f"{contender}: {s['gpu_hours']:.1f} GPU-h, "
                          f"attainment {float(s['attainment']):.3f}")  # fmt: skip
        ax.set_xlim(0, 24)
        ax.set_xlabel(f"hour of the day (compressed {86_400 / workload.day_s:.0f}x)")
        ax.set_ylabel("replicas holding GPUs")
        ax.set_title(f"{name}: {len(workload):,} requests")
        ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
