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

import copy
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
    "RankingReport",
    "ScenarioResult",
    "evaluate",
    "held_out_model_names",
    "length_metrics",
    "measure_latency",
    "ranking_benchmark",
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
    data: AlpacaEvalSet,
    train: npt.NDArray[np.bool_],
    test: npt.NDArray[np.bool_],
    keep: set[int] | None = None,
) -> list[tuple[str, int, float, float]]:
    """Predict each held-out response from the other models' answers to the same prompt
    (only the rows in ``keep``, when given)."""
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
            if not others or (keep is not None and i not in keep):
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


def _observation_order(
    data: AlpacaEvalSet, model_rows: npt.NDArray[np.bool_], k: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """A model's first ``k`` held-out responses in a fixed hashed order (the order it is
    observed in), and the rest."""
    idx = np.flatnonzero(model_rows)
    order = sorted(idx, key=lambda i: hash_fraction(str(int(data.prompt_ids[i])), "calibration"))
    return np.asarray(order[:k], dtype=np.intp), np.asarray(sorted(order[k:]), np.intp)


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


# --------------------------------------------------------------------------------------------
# The ranking benchmark: prompts *and* models held out, and learning curves of new models.

ORACLE = "oracle"


def held_out_model_names(
    names: Sequence[str], n: int = 6, salt: str = "goodput-models-v1"
) -> list[str]:
    """A fixed set of ``n`` models, chosen by a hash of the name (adding models keeps old picks)."""
    return sorted(sorted(names, key=lambda m: hash_fraction(m, salt))[:n])


@dataclass
class RankingReport:
    """Known models on held-out prompts, and new models after 0, 8, ... observed answers."""

    test_fraction: float
    held_out_models: list[str]
    n_test_prompts: int
    n_eval_prompts_new_models: int
    known_models: dict[str, ScenarioResult]
    new_models: dict[str, dict[int, ScenarioResult]]

    def summary(self) -> dict[str, dict[str, float | None]]:
        """``{contender: {metric: value}}``, the headline numbers."""
        out: dict[str, dict[str, float | None]] = {}
        for name, known in self.known_models.items():
            row: dict[str, float | None] = {
                "tau_known_models": known.mean.kendall_tau,
                "mae_known_models": known.mean.mae_tokens,
                "p90_coverage_known_models": known.mean.p90_coverage,
            }
            for k, result in self.new_models.get(name, {}).items():
                row[f"tau_new_models_{k}obs"] = result.mean.kendall_tau
                row[f"mae_new_models_{k}obs"] = result.mean.mae_tokens
                row[f"p90_coverage_new_models_{k}obs"] = result.mean.p90_coverage
            out[name] = row
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "protocol": {
                "test_fraction": self.test_fraction,
                "held_out_models": self.held_out_models,
                "n_test_prompts": self.n_test_prompts,
                "n_eval_prompts_new_models": self.n_eval_prompts_new_models,
            },
            "known_models": {k: v.to_json() for k, v in self.known_models.items()},
            "new_models": {
                name: {str(k): r.to_json() for k, r in curve.items()}
                for name, curve in self.new_models.items()
            },
        }


def ranking_benchmark(
    data: AlpacaEvalSet,
    contenders: Mapping[str, Callable[[], Contender]],
    *,
    test_fraction: float = 0.25,
    n_held_out_models: int = 6,
    observations: Sequence[int] = (0, 8, 32, 100),
    on_step: Callable[[str], None] | None = None,
) -> RankingReport:
    """Fit every contender once on training prompts of the known models, then score it.

    * Known models: every held-out prompt.
    * New models (never in training): each observes its answers to the first ``k`` held-out
      prompts in a fixed hashed order (a deployment's first traffic), for each ``k`` in
      ``observations``, and is scored on the held-out prompts after the largest ``k``: the same
      prompts for every ``k``, none of them seen by the text model or observed.
    """
    step = on_step or (lambda _msg: None)
    test = split_prompts(data.prompt_ids, test_fraction)
    held = held_out_model_names(data.model_names, n_held_out_models)
    is_new = np.isin(data.model_array, held)
    train_idx = np.flatnonzero(~test & ~is_new)
    known_idx = np.flatnonzero(test & ~is_new)
    pool = max(observations)
    splits = {m: _observation_order(data, test & (data.model_array == m), pool) for m in held}
    y = data.output_tokens

    known: dict[str, ScenarioResult] = {}
    new: dict[str, dict[int, ScenarioResult]] = {}
    for name, make in contenders.items():
        fitted = make().fit(_rows_X(data, train_idx), y[train_idx])
        q = fitted.predict_quantiles(_rows_X(data, known_idx), (0.5, 0.9))
        known[name] = ScenarioResult.from_rows(
            [
                (data.models[i], int(y[i]), float(q[j, 0]), float(q[j, 1]))
                for j, i in enumerate(known_idx)
            ]
        )
        curve: dict[int, list[tuple[str, int, float, float]]] = {k: [] for k in observations}
        for model, (observed, evaluated) in splits.items():
            X_eval = _rows_X(data, evaluated)
            for k in observations:
                est = copy.deepcopy(fitted)
                if k:
                    est.partial_fit(_rows_X(data, observed[:k]), y[observed[:k]])
                q = est.predict_quantiles(X_eval, (0.5, 0.9))
                curve[k].extend(
                    (model, int(y[i]), float(q[j, 0]), float(q[j, 1]))
                    for j, i in enumerate(evaluated)
                )
        new[name] = {k: ScenarioResult.from_rows(rows) for k, rows in curve.items()}
        step(name)

    oracle = _reference_rows(data, ~test, test)
    known[ORACLE] = ScenarioResult.from_rows([r for r in oracle if r[0] not in held])
    evaluated_rows = {int(i) for _, ev in splits.values() for i in ev}
    oracle_rows = _reference_rows(data, ~test, test, keep=evaluated_rows)
    new[ORACLE] = {k: ScenarioResult.from_rows(oracle_rows) for k in observations}
    return RankingReport(
        test_fraction=test_fraction,
        held_out_models=held,
        n_test_prompts=len(set(data.prompt_ids[test].tolist())),
        n_eval_prompts_new_models=len(next(iter(splits.values()))[1]) if splits else 0,
        known_models=known,
        new_models=new,
    )
