"""The ``goodput profile`` subcommand."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click


@click.group(name="profile")
def profile() -> None:
    """Train, evaluate and query the profiler's models."""


# --- output length ---------------------------------------------------------------------------
# Heavy imports (scikit-learn, matplotlib, the tokenizer) happen inside the commands, so
# `goodput profile --help` and the other profile commands stay fast.


def _length_table(title: str, results: dict[str, object], pooled: bool) -> object:
    from rich.table import Table

    from goodput.profiler.length_eval import ScenarioResult

    def fmt(value: float | None, spec: str) -> str:
        return "—" if value is None else format(value, spec)

    table = Table(title=title, title_justify="left")
    for col in ("predictor", "Kendall τ", "Spearman rho", "MAE tokens", "p90 coverage"):
        table.add_column(col, justify="left" if col == "predictor" else "right")
    if pooled:
        table.add_column("τ pooled", justify="right")
    for name, result in results.items():
        assert isinstance(result, ScenarioResult)
        m = result.mean
        row = [
            name,
            fmt(m.kendall_tau, ".3f"),
            fmt(m.spearman_rho, ".3f"),
            fmt(m.mae_tokens, ".0f"),
            fmt(m.p90_coverage, ".3f"),
        ]
        if pooled:
            row.append(fmt(result.pooled.kendall_tau, ".3f"))
        table.add_row(*row)
    return table


def _per_model_table(title: str, results: dict[str, object], names: list[str]) -> object:
    """Per model: the first contender's four metrics, then the others' Kendall τ beside it."""
    from rich.table import Table

    from goodput.profiler.length_eval import ScenarioResult

    def fmt(value: float | None, spec: str) -> str:
        return "—" if value is None else format(value, spec)

    ours, others = names[0], names[1:]
    table = Table(title=title, title_justify="left")
    table.add_column("model")
    for col in ("Kendall τ", "Spearman rho", "MAE tokens", "p90 coverage"):
        table.add_column(f"{col}\n{ours}", justify="right")
    for name in others:
        table.add_column(f"Kendall τ\n{name}", justify="right")
    first = results[ours]
    assert isinstance(first, ScenarioResult)
    for model, mine in first.per_model.items():
        cells = [
            fmt(mine.kendall_tau, ".3f"),
            fmt(mine.spearman_rho, ".3f"),
            fmt(mine.mae_tokens, ".0f"),
            fmt(mine.p90_coverage, ".2f"),
        ]
        for name in others:
            r = results[name]
            assert isinstance(r, ScenarioResult)
            cells.append(
                fmt(r.per_model[model].kendall_tau if model in r.per_model else None, ".3f")
            )
        table.add_row(model, *cells)
    return table


@profile.command("eval")
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("bench/results"),
    show_default=True,
    help="Where the JSON report and the PNG plots go.",
)
@click.option("--test-fraction", default=0.25, show_default=True, help="Share of prompts held out.")
@click.option(
    "--calibration",
    default=32,
    show_default=True,
    help="Responses of a held-out model observed before it is predicted again.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The shared data folder (default: $GOODPUT_SHARED_DIR/data).",
)
def length_eval_command(
    out_dir: Path, test_fraction: float, calibration: int, data_dir: Path | None
) -> None:
    """Evaluate the output-length predictor against baselines on held-out prompts and models."""
    import json

    from rich.console import Console
    from rich.progress import Progress

    from goodput.profiler.datasets import load_alpaca_eval
    from goodput.profiler.length_eval import CONTENDERS, REFERENCE, evaluate, measure_latency
    from goodput.profiler.length_plots import plot_predicted_vs_actual, plot_tau_by_model
    from goodput.profiler.length_predictor import LengthPredictor

    console = Console()
    with console.status("loading AlpacaEval and counting tokens (cached after the first run)"):
        data = load_alpaca_eval(data_dir)
    n_steps = len(CONTENDERS) * (1 + len(data.model_names))
    with Progress(console=console) as progress:
        task = progress.add_task("fitting and scoring", total=n_steps)
        report = evaluate(
            data,
            test_fraction=test_fraction,
            calibration=calibration,
            on_step=lambda msg: progress.update(task, advance=1, description=msg[:60]),
        )
    with console.status("measuring per-request latency"):
        from goodput.profiler.datasets import split_prompts

        test = split_prompts(data.prompt_ids, test_fraction)
        train = [(data.prompts[i], data.models[i]) for i in range(len(data)) if not test[i]]
        model = LengthPredictor().fit(train, data.output_tokens[~test])
        requests = [(data.prompts[i], data.models[i]) for i in range(len(data)) if test[i]]
        report.latency = measure_latency(model, requests[:: max(1, len(requests) // 1000)])

    console.print(
        f"[bold]{report.n_test_prompts}[/] of {report.n_prompts} prompts held out; "
        f"tokens counted with [bold]{report.tokenizer}[/]"
    )
    console.print(
        _length_table(
            "Held-out prompts (mean over models)", dict(report.held_out_prompts), pooled=True
        )
    )
    console.print(
        _length_table(
            f"Held-out models, leave-one-model-out (cold, and after {calibration} observations)",
            dict(report.held_out_models),
            pooled=False,
        )
    )
    console.print(
        _per_model_table(
            "Held-out prompts, per model",
            dict(report.held_out_prompts),
            ["goodput", "input-length-histogram", REFERENCE],
        )
    )
    warm = f"+{calibration} obs"
    console.print(
        _per_model_table(
            f"Held-out models, per model (after {calibration} observations)",
            dict(report.held_out_models),
            [f"goodput ({warm})", f"input-length-histogram ({warm})"],
        )
    )
    lat = report.latency
    console.print(
        f"predict_request latency (single thread, µs): wall p50 {lat['wall_p50']:.0f} "
        f"p99 {lat['wall_p99']:.0f}; CPU p50 {lat['cpu_p50']:.0f} p99 {lat['cpu_p99']:.0f}"
    )

    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "length_predictor.json"
    json_path.write_text(json.dumps(report.to_json(), indent=1, sort_keys=False) + "\n")
    scatter = plot_predicted_vs_actual(report, out_dir / "length_predictor.scatter.png")
    taus = plot_tau_by_model(report, out_dir / "length_predictor.tau_by_model.png")
    console.print(f"wrote {json_path}, {scatter}, {taus}")


def _training_options(command: Callable[..., None]) -> Callable[..., None]:
    """``--out`` and ``--data-dir``, alike for every command that trains a shipped model."""
    out = click.option(
        "--out",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Model file to write (default: the one shipped in the package).",
    )
    data_dir = click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="The shared data folder (default: $GOODPUT_SHARED_DIR/data).",
    )
    return out(data_dir(command))


@profile.command("train")
@_training_options
def length_train_command(out: Path | None, data_dir: Path | None) -> None:
    """Train the output-length predictor on all of AlpacaEval and save it (deterministic)."""
    import time

    from rich.console import Console

    from goodput.profiler.datasets import load_alpaca_eval
    from goodput.profiler.length_model_io import default_model_path, save_length_model
    from goodput.profiler.length_predictor import LengthPredictor

    console = Console()
    with console.status("loading AlpacaEval and counting tokens (cached after the first run)"):
        data = load_alpaca_eval(data_dir)
    started = time.perf_counter()
    with console.status(f"fitting on {len(data)} responses"):
        model = LengthPredictor().fit(
            list(zip(data.prompts, data.models, strict=True)), data.output_tokens
        )
    target = out or default_model_path()
    save_length_model(model, target)
    console.print(
        f"fitted in {time.perf_counter() - started:.1f} s on {len(data)} responses "
        f"({len(data.model_names)} models); wrote {target} ({target.stat().st_size / 1024:.0f} KiB)"
    )


@profile.command("train-quality")
@_training_options
def quality_train_command(out: Path | None, data_dir: Path | None) -> None:
    """Train the cascade's answer-quality predictor on all of AlpacaEval's verdicts and save it
    (deterministic). Held-out numbers come from bench/cascade, not from this fit."""
    from goodput.profiler.datasets import load_alpaca_preferences
    from goodput.profiler.quality_model_io import default_quality_model_path, save_quality_model
    from goodput.profiler.quality_predictor import QualityPredictor

    data = load_alpaca_preferences(data_dir)
    model = QualityPredictor(reference=data.reference).fit(
        list(zip(data.prompts, data.models, strict=True)), data.verdicts
    )
    target = out or default_quality_model_path()
    save_quality_model(model, target)
    click.echo(
        f"fitted on {len(data.prompts)} verdicts ({len(data.judges)} models); "
        f"wrote {target} ({target.stat().st_size / 1024:.0f} KiB)"
    )


@profile.command("update")
@click.option(
    "--log",
    "log_path",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="The gateway's request log (JSON Lines); LOG.1 is read first.",
)
@click.option(
    "--model",
    "model_in",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Model to start from (default: the shipped one).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Where to write the updated model.",
)
@click.option(
    "--refit-every",
    default=2000,
    show_default=True,
    help="Usable requests between refits of the prompt model.",
)
def length_update_command(
    log_path: Path, model_in: Path | None, out: Path, refit_every: int
) -> None:
    """Tune the output-length predictor to a deployment's own traffic from its request log."""
    from rich.console import Console

    from goodput.profiler.length_model_io import (
        load_default_length_model,
        load_length_model,
        save_length_model,
    )
    from goodput.profiler.online import OnlineLengthLearner, read_request_log

    console = Console()
    model = load_length_model(model_in) if model_in else load_default_length_model()
    learner = OnlineLengthLearner(model, refit_every=refit_every)
    rotated = log_path.with_name(log_path.name + ".1")
    summary = learner.consume(read_request_log(rotated, log_path))
    save_length_model(learner.predictor, out)
    err = summary.median_logged_error
    console.print(
        f"{summary.used} requests learned from, {summary.truncated} cut at max_tokens, "
        f"{summary.malformed} malformed lines, {summary.refits} refits; median logged error "
        f"{'—' if err is None else f'{err:.2f}'}; wrote {out}"
    )
    for name in sorted({*learner.predictor.verbosity_}):
        a, b, noise = learner.predictor.verbosity(name)
        console.print(f"  {name}: slope {a:.2f} offset {b:.2f} noise {noise:.2f} (log tokens)")


@profile.command("length")
@click.argument("prompt")
@click.option(
    "--model",
    "served_model",
    default="unknown",
    show_default=True,
    help="Serving model name (an unknown one gets the population's verbosity).",
)
@click.option(
    "--model-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Model file (default: the shipped one).",
)
def length_query_command(prompt: str, served_model: str, model_file: Path | None) -> None:
    """Predict the output length of one prompt: median and 90th percentile, in tokens."""
    from goodput.profiler.length_model_io import load_default_length_model, load_length_model

    model = load_length_model(model_file) if model_file else load_default_length_model()
    p50, p90 = model.predict_request(prompt, served_model)
    click.echo(f"p50 {p50:.0f} tokens, p90 {p90:.0f} tokens")


def _add_perf_commands() -> None:
    from goodput.profiler.perf_commands import capacity_cmd, latency_group, memory_cmd

    for command in (memory_cmd, latency_group, capacity_cmd):
        profile.add_command(command)


_add_perf_commands()
