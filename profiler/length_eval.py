"""Judges output-length predictors the way a scheduler uses them: ranking, error, p90 coverage.

Two scenarios, both on prompts no contender trained on (held out by a hash of the prompt id):

* held-out prompts: every model was seen in training, the prompts were not;
* held-out models (leave-one-model-out): the model was never seen either. Each contender first
  predicts cold, then observes the model's answers to ``calibration`` held-out prompts (as a new
  deployment would in its first minutes) and predicts again; both are scored on the remaining
  held-out prompts. Calibrating on training prompts would flatter a text model, whose scores
  there are in-sample.

Per model it reports Kendall's tau-b and Spearman's rho between predicted median and actual
length, the mean absolute error of the median in tokens, and how often the actual length stays
at or under the predicted p90 (0.9 is calibrated). A reference row shows what a predictor that
knew the other models' actual answers to the same prompt would reach: the ceiling of any
prompt-only predictor on this data.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, Self

import numpy as np
import numpy.typing as npt
from scipy.stats import kendalltau, spearmanr

from goodput.profiler.datasets import AlpacaEvalSet, hash_fraction, split_prompts
from goodput.profiler.length_baselines import (
    GlobalMeanLength,
    InputLengthHistogram,
    PerModelMeanLength,
)
from goodput.profiler.length_predictor import LengthPredictor

__all__ = [
    "CONTENDERS",
    "LengthMetrics",
    "LengthReport",
    "ScenarioResult",
    "evaluate",
    "length_metrics",
    "measure_latency",
]

FloatArray = npt.NDArray[np.float64]
REFERENCE = "reference: other models' answers"


class Contender(Protocol):
    def fit(self, X: Any, y: Any) -> Self: ...

    def partial_fit(self, X: Any, y: Any) -> Self: ...

    def predict_quantiles(self, X: Any, quantiles: Sequence[float] = ...) -> FloatArray: ...


CONTENDERS: dict[str, Callable[[], Contender]] = {
    "goodput": LengthPredictor,
    "global-mean": GlobalMeanLength,
    "per-model-mean": PerModelMeanLength,
    "input-length-histogram": InputLengthHistogram,
}


@dataclass(frozen=True)
class LengthMetrics:
    """How one predictor did on one set of responses (``None``: undefined, e.g. constant guess)."""

    n: int
    kendall_tau: float | None
    spearman_rho: float | None
    mae_tokens: float | None
    p90_coverage: float | None


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def length_metrics(actual: Any, p50: Any, p90: Any | None = None) -> LengthMetrics:
    """Metrics of predicted median ``p50`` (and ``p90``) against ``actual`` output tokens."""
    a = np.asarray(actual, dtype=np.float64)
    m = np.asarray(p50, dtype=np.float64)
    if a.shape != m.shape:
        raise ValueError(f"actual {a.shape} and predicted {m.shape} differ in shape")
    varied = a.size > 1 and np.ptp(m) > 0 and np.ptp(a) > 0
    tau = _finite(kendalltau(m, a).statistic) if varied else None
    rho = _finite(spearmanr(m, a).statistic) if varied else None
    mae = float(np.mean(np.abs(m - a))) if a.size else None
    upper = None if p90 is None else np.asarray(p90, dtype=np.float64)
    # A predictor without a p90 (NaN) gets no coverage rather than a flattering one.
    cover = None if upper is None or np.isnan(upper).all() else float(np.mean(a <= upper))
    return LengthMetrics(
        n=int(a.size), kendall_tau=tau, spearman_rho=rho, mae_tokens=mae, p90_coverage=cover
    )


def _mean_of(metrics: Sequence[LengthMetrics]) -> LengthMetrics:
    def avg(values: list[float | None]) -> float | None:
        kept = [v for v in values if v is not None]
        return float(np.mean(kept)) if kept else None

    return LengthMetrics(
        n=sum(x.n for x in metrics),
        kendall_tau=avg([x.kendall_tau for x in metrics]),
        spearman_rho=avg([x.spearman_rho for x in metrics]),
        mae_tokens=avg([x.mae_tokens for x in metrics]),
        p90_coverage=avg([x.p90_coverage for x in metrics]),
    )


@dataclass
class ScenarioResult:
    """One contender in one scenario: per model, their mean, and all rows pooled."""

    per_model: dict[str, LengthMetrics]
    mean: LengthMetrics
    pooled: LengthMetrics
    # Held-out rows' predictions for plots: (model, actual, p50, p90).
    rows: list[tuple[str, int, float, float]] = field(default_factory=list, repr=False)

    @classmethod
    def from_rows(cls, rows: list[tuple[str, int, float, float]]) -> Self:
        models = sorted({r[0] for r in rows})
        per_model = {}
        for name in models:
            mine = [r for r in rows if r[0] == name]
            per_model[name] = length_metrics(
                [r[1] for r in mine], [r[2] for r in mine], [r[3] for r in mine]
            )
        everything = length_metrics(
            [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows]
        )
        return cls(
            per_model=per_model,
            mean=_mean_of(list(per_model.values())),
            pooled=everything,
            rows=rows,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "mean_over_models": asdict(self.mean),
            "pooled": asdict(self.pooled),
            "per_model": {k: asdict(v) for k, v in self.per_model.items()},
        }


@dataclass
class LengthReport:
    """Everything ``goodput profile eval`` measured; saved as JSON beside the plots."""

    tokenizer: str
    test_fraction: float
    calibration: int
    n_prompts: int
    n_test_prompts: int
    models: list[str]
    held_out_prompts: dict[str, ScenarioResult]
    held_out_models: dict[str, ScenarioResult]
    fit_seconds: dict[str, float]
    latency: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "tokenizer": self.tokenizer,
            "test_fraction": self.test_fraction,
            "calibration_observations": self.calibration,
            "n_prompts": self.n_prompts,
            "n_test_prompts": self.n_test_prompts,
            "models": self.models,
            "held_out_prompts": {k: v.to_json() for k, v in self.held_out_prompts.items()},
            "held_out_models": {k: v.to_json() for k, v in self.held_out_models.items()},
            "fit_seconds": self.fit_seconds,
            "latency_us": self.latency,
        }


def _rows_X(data: AlpacaEvalSet, idx: npt.NDArray[np.intp]) -> list[tuple[str, str]]:
    return [(data.prompts[i], data.models[i]) for i in idx]


def _reference_rows(
    data: AlpacaEvalSet, train: npt.NDArray[np.bool_], test: npt.NDArray[np.bool_]
) -> list[tuple[str, int, float, float]]:
    """Predict each held-out response from the other models' answers to the same prompt."""
    y_log = np.log1p(data.output_tokens.astype(np.float64))
    models = data.model_array
    offsets = {m: float(np.mean(y_log[train & (models == m)])) for m in data.model_names}
    pooled = float(np.mean(list(offsets.values())))
    by_prompt: dict[int, list[int]] = {}
    for row in np.flatnonzero(test).tolist():
        by_prompt.setdefault(int(data.prompt_ids[row]), []).append(row)
    rows: list[tuple[str, int, float, float]] = []
    for members in by_prompt.values():
        for i in members:
            others = [j for j in members if j != i]
            if not others:
                continue
            score = np.mean([y_log[j] - offsets[data.models[j]] for j in others])
            guess = float(np.expm1(score + offsets.get(data.models[i], pooled)))
            rows.append((data.models[i], int(data.output_tokens[i]), guess, math.nan))
    return rows


def _calibration_split(
    data: AlpacaEvalSet, model_rows: npt.NDArray[np.bool_], k: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """The first ``k`` of a model's held-out responses in a fixed hashed order, and the rest."""
    idx = np.flatnonzero(model_rows)
    order = sorted(idx, key=lambda i: hash_fraction(str(int(data.prompt_ids[i])), "calibration"))
    return np.asarray(sorted(order[:k]), dtype=np.intp), np.asarray(sorted(order[k:]), np.intp)


def evaluate(
    data: AlpacaEvalSet,
    contenders: Mapping[str, Callable[[], Contender]] = CONTENDERS,
    *,
    test_fraction: float = 0.25,
    calibration: int = 32,
    on_step: Callable[[str], None] | None = None,
) -> LengthReport:
    """Both scenarios for every contender; ``on_step`` is called after each fit (progress bars)."""
    step = on_step or (lambda _msg: None)
    test = split_prompts(data.prompt_ids, test_fraction)
    train = ~test
    y = data.output_tokens
    fit_seconds: dict[str, float] = {}

    held_prompts: dict[str, ScenarioResult] = {}
    train_idx, test_idx = np.flatnonzero(train), np.flatnonzero(test)
    X_test = _rows_X(data, test_idx)
    for name, make in contenders.items():
        started = time.perf_counter()
        est = make().fit(_rows_X(data, train_idx), y[train_idx])
        fit_seconds[name] = time.perf_counter() - started
        q = est.predict_quantiles(X_test, (0.5, 0.9))
        held_prompts[name] = ScenarioResult.from_rows(
            [
                (data.models[i], int(y[i]), float(q[j, 0]), float(q[j, 1]))
                for j, i in enumerate(test_idx)
            ]
        )
        step(f"held-out prompts: {name}")
    held_prompts[REFERENCE] = ScenarioResult.from_rows(_reference_rows(data, train, test))

    cold: dict[str, list[tuple[str, int, float, float]]] = {n: [] for n in contenders}
    warm: dict[str, list[tuple[str, int, float, float]]] = {n: [] for n in contenders}
    models = data.model_array
    for held in data.model_names:
        is_held = models == held
        fit_idx = np.flatnonzero(train & ~is_held)
        calib_idx, eval_idx = _calibration_split(data, test & is_held, calibration)
        X_eval = _rows_X(data, eval_idx)
        for name, make in contenders.items():
            est = make().fit(_rows_X(data, fit_idx), y[fit_idx])
            for store, observe in ((cold, False), (warm, True)):
                if observe and calib_idx.size:
                    est.partial_fit(_rows_X(data, calib_idx), y[calib_idx])
                q = est.predict_quantiles(X_eval, (0.5, 0.9))
                store[name].extend(
                    (held, int(y[i]), float(q[j, 0]), float(q[j, 1]))
                    for j, i in enumerate(eval_idx)
                )
            step(f"held-out model {held}: {name}")
    held_models: dict[str, ScenarioResult] = {}
    for name in contenders:
        held_models[f"{name} (cold)"] = ScenarioResult.from_rows(cold[name])
        held_models[f"{name} (+{calibration} obs)"] = ScenarioResult.from_rows(warm[name])

    return LengthReport(
        tokenizer=data.tokenizer,
        test_fraction=test_fraction,
        calibration=calibration,
        n_prompts=len(set(data.prompt_ids.tolist())),
        n_test_prompts=len(set(data.prompt_ids[test].tolist())),
        models=data.model_names,
        held_out_prompts=held_prompts,
        held_out_models=held_models,
        fit_seconds=fit_seconds,
    )


def measure_latency(
    predictor: LengthPredictor, requests: Sequence[tuple[str, str]], repeats: int = 3
) -> dict[str, float]:
    """Per-request cost of ``predict_request`` in microseconds, one call at a time on one thread.

    Reports wall time and this thread's CPU time: on a shared machine the wall-time tail
    measures the neighbours; the CPU time is what the request itself costs.
    """
    for prompt, model in requests[:20]:  # warm the caches and the allocator
        predictor.predict_request(prompt, model)
    wall: list[float] = []
    cpu: list[float] = []
    for _ in range(repeats):
        for prompt, model in requests:
            w0, c0 = time.perf_counter_ns(), time.thread_time_ns()
            predictor.predict_request(prompt, model)
            cpu.append((time.thread_time_ns() - c0) / 1e3)
            wall.append((time.perf_counter_ns() - w0) / 1e3)
    return {
        "n": float(len(wall)),
        "wall_p50": float(np.percentile(wall, 50)),
        "wall_p99": float(np.percentile(wall, 99)),
        "cpu_p50": float(np.percentile(cpu, 50)),
        "cpu_p99": float(np.percentile(cpu, 99)),
    }
