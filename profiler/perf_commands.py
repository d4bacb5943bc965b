"""``goodput profile memory|latency|capacity``: the memory plan, step-latency fit and capacity."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from goodput.profiler.architectures import ModelArchitecture
    from goodput.profiler.latency import Measurement

GIB = 1024**3


def _arch(name_or_path: str) -> ModelArchitecture:
    """A catalog name / Hugging Face id, or a path to a ``config.json``."""
    from goodput.profiler import catalog
    from goodput.profiler.architectures import ModelArchitecture

    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        return ModelArchitecture.from_hf_config(json.loads(path.read_text()), name=str(path))
    try:
        return catalog.get(name_or_path)
    except KeyError as exc:
        raise click.BadParameter(str(exc.args[0])) from exc


@click.command(name="memory")
@click.argument("model")
@click.option("--gpu", "gpu_name", help="GPU type (catalog name or node label); default: all")
@click.option("--tp", default=1, show_default=True)
@click.option("--pp", default=1, show_default=True)
@click.option("--dtype", default="auto", show_default=True)
@click.option("--quantization", default="none", show_default=True,
              type=click.Choice(["none", "fp8", "int8", "awq", "gptq"]))  # fmt: skip
@click.option("--kv-dtype", default="auto", show_default=True)
@click.option("--max-model-len", type=int, help="default: the model's max_position_embeddings")
@click.option("--concurrency", default=1, show_default=True, help="sequences at max-model-len")
@click.option("--gpu-memory-utilization", default=0.9, show_default=True)
def memory_cmd(
    model: str, gpu_name: str | None, tp: int, pp: int, dtype: str, quantization: str,
    kv_dtype: str, max_model_len: int | None, concurrency: int, gpu_memory_utilization: float,
) -> None:  # fmt: skip
    """Per-GPU memory of MODEL (catalog name or config.json) and the vLLM flags that follow."""
    from goodput.profiler import catalog
    from goodput.profiler.memory import (
        InsufficientMemory,
        fits,
        kv_cache_tokens,
        max_concurrency,
        memory_plan,
        vllm_flags,
    )

    arch = _arch(model)
    plan = memory_plan(
        arch, dtype=dtype, quantization=quantization, kv_dtype=kv_dtype, tp=tp, pp=pp,
        max_model_len=max_model_len, concurrency=concurrency,
    )  # fmt: skip
    console = Console()
    summary = Table(title=f"{arch.name}: tp={tp} pp={pp} {plan.dtype} {plan.quantization.value}")
    summary.add_column("quantity")
    summary.add_column("value", justify="right")
    active = f" ({arch.num_active_parameters / 1e9:.2f}B active)" if arch.is_moe else ""
    summary.add_row("parameters", f"{arch.num_parameters / 1e9:.2f}B{active}")
    summary.add_row("weights, whole model", f"{plan.weights_bytes_total / GIB:.2f} GiB")
    summary.add_row("weights per GPU", f"{plan.weights_bytes_per_gpu / GIB:.2f} GiB")
    summary.add_row("KV cache per token per GPU", f"{plan.kv_bytes_per_token / 1024:.1f} KiB")
    summary.add_row(f"KV per {plan.max_model_len}-token sequence per GPU",
                    f"{plan.kv_bytes_per_sequence / GIB:.3f} GiB")  # fmt: skip
    summary.add_row("peak activations per GPU", f"{plan.activation_bytes_per_gpu / GIB:.2f} GiB")
    summary.add_row(
        "runtime overhead per GPU", f"{plan.runtime_overhead_bytes_per_gpu / GIB:.2f} GiB"
    )
    summary.add_row(f"needed per GPU ({concurrency} x {plan.max_model_len} tokens)",
                    f"{plan.required_bytes_per_gpu / GIB:.2f} GiB")  # fmt: skip
    console.print(summary)

    gpus = [catalog.gpu(gpu_name)] if gpu_name else catalog.gpus()
    table = Table(title=f"on each GPU type at gpu-memory-utilization {gpu_memory_utilization}")
    for column in ("GPU", "memory GiB", "fits", "KV tokens", "max sequences"):
        table.add_column(column, justify="right")
    for gpu in gpus:
        table.add_row(
            gpu.name, f"{gpu.memory_gib:.1f}",
            "yes" if fits(plan, gpu, gpu_memory_utilization) else "no",
            f"{kv_cache_tokens(plan, gpu, gpu_memory_utilization):,}",
            f"{max_concurrency(plan, gpu, gpu_memory_utilization):,}",
        )  # fmt: skip
    console.print(table)
    if gpu_name:
        try:
            flags = vllm_flags(plan, gpus[0], gpu_memory_utilization)
        except InsufficientMemory as exc:
            raise click.ClickException(str(exc)) from exc
        console.print("vLLM flags: " + " ".join(flags.args()), soft_wrap=True)


@click.group(name="latency")
def latency_group() -> None:
    """Fit and evaluate the step-latency model on the committed GPU measurements."""


def _evaluation_table(measurements: list[Measurement]) -> Table:
    from goodput.profiler.latency import (
        DATA_DIR,
        evaluate,
        leave_one_out_mape,
        load_cpu_engine_measurements,
    )

    table = Table(title="step-latency model: error on held-out measurements")
    for column in ("held out", "train", "test", "MAPE", "max error"):
        table.add_column(column, justify="right")
    for e in evaluate(measurements):
        table.add_row(e.name, str(e.train), str(e.test), f"{e.mape:.1%}", f"{e.max_ape:.1%}")
    if (DATA_DIR / "cpu_engine_latency.csv").is_file():
        cpu = load_cpu_engine_measurements()
        name = "vLLM CPU engine decode steps, tiny model (own fit, leave-one-out)"
        table.add_row(name, str(len(cpu) - 1), "1 each", f"{leave_one_out_mape(cpu):.1%}", "")
    return table


@latency_group.command(name="fit")
@click.option("--out", type=click.Path(path_type=Path), help="model JSON (default: committed)")
@click.option("--plot", type=click.Path(path_type=Path), show_default=True,
              default=Path("bench/results/latency_fit.png"))  # fmt: skip
def latency_fit(out: Path | None, plot: Path) -> None:
    """Fit on all measurements, save the model, report held-out MAPE, plot predicted vs measured."""
    from goodput.profiler.latency import (
        CPU_ENGINE_MODEL,
        DATA_DIR,
        FEATURES,
        fit_cpu_engine,
        fit_default,
        load_measurements,
    )

    measurements = load_measurements()
    model = fit_default(measurements)
    target = out or DATA_DIR / "latency_model.json"
    model.save(target)
    if out is None and (DATA_DIR / "cpu_engine_latency.csv").is_file():
        fit_cpu_engine().save(DATA_DIR / CPU_ENGINE_MODEL)  # the catalog's CPU product
    console = Console()
    coefficients = Table(title=f"coefficients ({target})")
    coefficients.add_column("feature")
    coefficients.add_column("coefficient", justify="right")
    for name, value in zip(FEATURES, model.regressor.coef_, strict=True):
        coefficients.add_row(name, f"{value:.4g}")
    console.print(coefficients)
    console.print(_evaluation_table(measurements))
    _plot_fit(measurements, plot)
    _write_evaluation(measurements, plot.with_suffix(".json"))
    console.print(f"plot: {plot}, numbers: {plot.with_suffix('.json')}")


@latency_group.command(name="eval")
def latency_eval() -> None:
    """MAPE on held-out points: random quarter, unseen GPU, unseen TP, whole models."""
    from goodput.profiler.latency import load_measurements

    Console().print(_evaluation_table(load_measurements()))


def _write_evaluation(measurements: list[Measurement], path: Path) -> None:
    """The held-out errors as JSON beside the plot, for the record."""
    from dataclasses import asdict

    from goodput.profiler.latency import evaluate

    gpus = sorted({m.gpu for m in measurements})
    payload = {
        "measurements": len(measurements),
        "gpus": gpus,
        "tp_degrees": sorted({m.step.tp for m in measurements}),
        "held_out": [asdict(e) for e in evaluate(measurements)],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1) + "\n")


def _plot_fit(measurements: list[Measurement], path: Path) -> None:
    """Predicted vs measured for each held-out split (each point predicted by a model that
    never saw it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from goodput.profiler.latency import LatencyModel, design_matrix

    splits = {
        "unseen GPU (H200 from H100)": (
            [m for m in measurements if m.gpu == "H100-80GB"],
            [m for m in measurements if m.gpu == "H200-141GB" and m.step.tp == 1],
        ),
        "unseen TP (tp=4 from tp=1,2)": (
            [m for m in measurements if m.step.tp <= 2],
            [m for m in measurements if m.step.tp == 4],
        ),
    }
    rng = np.random.default_rng(0)
    held = rng.random(len(measurements)) < 0.25
    splits["random 25% held out"] = (
        [m for m, h in zip(measurements, held, strict=True) if not h],
        [m for m, h in zip(measurements, held, strict=True) if h],
    )
    fig, axes = plt.subplots(1, len(splits), figsize=(5 * len(splits), 4.6))
    colors = {"decode": "tab:blue", "prefill": "tab:orange", "lm_head": "tab:green"}
    for ax, (title, (train, test)) in zip(axes, splits.items(), strict=True):
        if not train or not test:
            continue
        model = LatencyModel.fit(train)
        X, y = design_matrix(test)
        pred = model.regressor.predict(X)
        for phase, color in colors.items():
            idx = [i for i, m in enumerate(test) if m.phase == phase]
            ax.scatter(y[idx] * 1e3, pred[idx] * 1e3, s=10, c=color, label=phase, alpha=0.7)
        lo, hi = float(min(y.min(), pred.min())) * 1e3, float(max(y.max(), pred.max())) * 1e3
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        mape = float(np.mean(np.abs(pred - y) / y))
        ax.set_title(f"{title}\nMAPE {mape:.1%} on {len(test)} points", fontsize=10)
        ax.set_xlabel("measured ms")
        ax.set_ylabel("predicted ms")
        ax.legend(fontsize=8)
    fig.suptitle("Step-latency model: held-out predictions (bf16 decoder layers, CUDA events)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


@click.command(name="capacity")
@click.argument("model")
@click.option("--gpu", "gpu_name", required=True)
@click.option("--tp", default=1, show_default=True)
@click.option("--pp", default=1, show_default=True)
@click.option("--slo-ttft-ms", type=float, required=True)
@click.option("--slo-tpot-ms", type=float, required=True)
@click.option("--percentile", default=0.99, show_default=True)
@click.option("--trace", type=click.Choice(["azure-conv", "azure-code", "sharegpt"]),
              default="azure-conv", show_default=True, help="length distribution")  # fmt: skip
@click.option("--prompt-tokens", type=int, help="fixed prompt length instead of a trace")
@click.option("--output-tokens", type=int, help="fixed output length instead of a trace")
@click.option("--quantization", default="none", show_default=True)
@click.option("--kv-dtype", default="auto", show_default=True)
@click.option("--max-model-len", type=int, default=8192, show_default=True)
@click.option("--gpu-memory-utilization", default=0.9, show_default=True)
def capacity_cmd(
    model: str, gpu_name: str, tp: int, pp: int, slo_ttft_ms: float, slo_tpot_ms: float,
    percentile: float, trace: str, prompt_tokens: int | None, output_tokens: int | None,
    quantization: str, kv_dtype: str, max_model_len: int, gpu_memory_utilization: float,
) -> None:  # fmt: skip
    """Requests/s one replica of MODEL sustains within the SLO, and its largest batch."""
    from goodput.profiler import catalog
    from goodput.profiler.capacity import SLO, LengthDistribution, capacity

    if (prompt_tokens is None) != (output_tokens is None):
        raise click.UsageError("give both --prompt-tokens and --output-tokens, or neither")
    if prompt_tokens is not None and output_tokens is not None:
        lengths = LengthDistribution.fixed(prompt_tokens, output_tokens)
        source = f"fixed {prompt_tokens} in / {output_tokens} out"
    else:
        try:
            lengths = LengthDistribution.from_trace(trace)
        except FileNotFoundError as exc:
            raise click.ClickException(f"{exc} (set GOODPUT_SHARED_DIR)") from exc
        source = trace
    arch, gpu = _arch(model), catalog.gpu(gpu_name)
    slo = SLO(slo_ttft_ms / 1e3, slo_tpot_ms / 1e3, percentile)
    c = capacity(
        arch, gpu, tp=tp, pp=pp, slo=slo, lengths=lengths, quantization=quantization,
        kv_dtype=kv_dtype, max_model_len=max_model_len,
        gpu_memory_utilization=gpu_memory_utilization,
    )  # fmt: skip
    table = Table(title=f"{arch.name} on {tp * pp} x {gpu.name} (tp={tp} pp={pp}), {source}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    p = f"p{percentile * 100:g}"
    table.add_row("max requests/s within SLO", f"{c.max_rps:.2f}")
    table.add_row("output tokens/s", f"{c.output_tokens_per_s:,.0f}")
    table.add_row("batch at max rate", str(c.batch_at_max_rps))
    table.add_row(f"max batch (decode step <= {slo_tpot_ms:g} ms, KV fits)", str(c.max_batch))
    table.add_row("TPOT", f"{c.tpot_s * 1e3:.1f} ms")
    table.add_row("TTFT p50", f"{c.ttft_p50_s * 1e3:.0f} ms")
    table.add_row(f"TTFT {p}", f"{c.ttft_p99_s * 1e3:.0f} ms")
    table.add_row("KV cache tokens", f"{c.kv_cache_tokens:,}")
    table.add_row("limited by", c.limited_by)
    Console().print(table)
