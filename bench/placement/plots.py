"""The benchmark's figures: aggregate demand served by load and contender, the fleet's GPUs by
owner, and solve time against fleet size."""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from goodput.operator.inventory import GpuNode
from goodput.operator.placement import PlacementPlan

NODES_PER_ROW = 25
SLOTS = 8
# Colour indices below the deployment palette.
ABSENT, FREE, OTHERS, FIRST_DEPLOYMENT = 0, 1, 2, 3


def _grid(nodes: list[GpuNode], plan: PlacementPlan) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """One row of 8 cells per node: absent GPU, free, other teams' pods, or a deployment."""
    order = sorted(nodes, key=lambda n: (n.product, -n.gpus, n.name))
    owner: dict[str, list[int]] = {n.name: [] for n in nodes}
    for name, d in sorted(plan.deployments.items()):
        colour = FIRST_DEPLOYMENT + zlib.crc32(name.encode()) % 20
        for r in d.replicas:
            for s in r.stages:
                owner[s.node].extend([colour] * s.gpus)
    rows = -(-len(order) // NODES_PER_ROW)
    grid = np.zeros((rows, NODES_PER_ROW * (SLOTS + 1)), dtype=int)
    labels: list[tuple[int, str]] = []
    for i, node in enumerate(order):
        row, col = divmod(i, NODES_PER_ROW)
        if not labels or labels[-1][1] != node.product:
            labels.append((row, node.product))
        cells = [OTHERS] * node.allocated + owner[node.name]
        cells += [FREE] * (node.gpus - len(cells))
        start = col * (SLOTS + 1)
        grid[row, start : start + len(cells)] = cells
    return grid, labels


def plot_allocation(
    nodes: list[GpuNode], plans: dict[str, PlacementPlan], runs: list[dict[str, Any]], path: Path
) -> None:
    palette = ["#f2f2f2", "#ffffff", "#555555"] + [plt.get_cmap("tab20")(i) for i in range(20)]
    cmap = matplotlib.colors.ListedColormap(palette)
    top = max(r["nodes"] for r in runs)
    stats = {r["contender"]: r for r in runs if r["nodes"] == top}
    fig, axes = plt.subplots(1, len(plans), figsize=(6 * len(plans), 12), sharey=True)
    for ax, (name, plan) in zip(np.atleast_1d(axes), plans.items(), strict=True):
        grid, labels = _grid(nodes, plan)
        ax.imshow(grid, cmap=cmap, vmin=0, vmax=len(palette) - 1, aspect="auto",
                  interpolation="nearest")  # fmt: skip
        s = stats[name]
        ax.set_title(
            f"{name}\n{s['gpus_used']} GPUs used, {s['idle_gpus']} idle while demand waits,"
            f" {s['tp_groups_crossing_domains']} TP groups across nodes\n"
            f"aggregate demand served {s['demand_served_pct']}%",
            fontsize=9,
        )
        ax.set_xticks([])
        ax.set_yticks([row for row, _ in labels], [p for _, p in labels], fontsize=7)
    fig.suptitle(
        f"{len(nodes)} nodes, {NODES_PER_ROW} per row, one cell per GPU: colour = deployment,"
        " white = free, dark grey = other teams' pods",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_solve_time(runs: list[dict[str, Any]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    styles = ["-", "--", ":"]
    loads = list(dict.fromkeys(r["load"] for r in runs))
    for i, name in enumerate(dict.fromkeys(r["contender"] for r in runs)):
        for j, load in enumerate(loads):
            rows = sorted(
                (r["nodes"], r["solve_s"])
                for r in runs
                if r["contender"] == name and r["load"] == load
            )
            ax.plot(
                [x for x, _ in rows],
                [y for _, y in rows],
                marker="o",
                color=f"C{i}",
                linestyle=styles[j % len(styles)],
                label=f"{name}, load {load:g}",
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("nodes (deployments = nodes / 2)")
    ax.set_ylabel("solve time, s")
    ax.axhline(10, color="grey", linestyle=":", label="target at 2,000 nodes")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_demand_served(result: dict[str, Any], path: Path) -> None:
    """Aggregate demand served per load and contender: the largest mixed and homogeneous fleets,
    and the small fleets as a share of the exact optimum."""
    panels: list[tuple[str, dict[str, Any], str]] = [
        (f"mixed fleet, {result['summary'][next(iter(result['summary']))]['nodes']} nodes",
         result["summary"], "demand_served_pct"),
    ]  # fmt: skip
    if result.get("summary_homogeneous"):
        first = next(iter(result["summary_homogeneous"].values()))
        panels.append((f"homogeneous (H100), {first['nodes']} nodes",
                       result["summary_homogeneous"], "demand_served_pct"))  # fmt: skip
    small = result["optimum"]["summary"]
    by_load: dict[str, dict[str, Any]] = {}
    for key, row in small.items():
        if key.startswith("mixed load"):
            by_load[key.removeprefix("mixed ")] = row
    panels.append((f"small mixed fleets ({small['nodes']} nodes), % of the MILP optimum",
                   by_load, "pct_of_optimum_mean"))  # fmt: skip
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2))
    for ax, (title, table, metric) in zip(np.atleast_1d(axes), panels, strict=True):
        loads = list(table)
        names = [k for k in table[loads[0]] if isinstance(table[loads[0]][k], dict)]
        width = 0.8 / len(names)
        for i, name in enumerate(names):
            values = [table[load][name][metric] for load in loads]
            bars = ax.bar(np.arange(len(loads)) + i * width, values, width, label=name,
                          color=f"C{i}")  # fmt: skip
            ax.bar_label(bars, fmt="%.0f", fontsize=7)
        ax.set_xticks(np.arange(len(loads)) + 0.4 - width / 2, loads)
        ax.set_ylim(0, 110)
        ax.set_ylabel("% of optimum" if metric == "pct_of_optimum_mean" else "% of demand served")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle("aggregate demand served within the SLO (sum served / sum asked)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
