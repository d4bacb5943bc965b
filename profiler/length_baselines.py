"""The simple output-length predictors that the learned one must beat, with the same interface.

* ``GlobalMeanLength``: one number for every request (what a scheduler without a predictor assumes).
* ``PerModelMeanLength``: each serving model's mean (its typical verbosity, nothing about prompts).
* ``InputLengthHistogram``: per model, a histogram of output lengths for each input-length bucket,
  as AIBrix's length predictor keeps (buckets by powers of two of the prompt's length).

All take ``X`` as ``(prompt, model)`` rows like ``LengthPredictor``, so one evaluation runs them
side by side, and all learn online through ``partial_fit`` so the held-out-model test is fair.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Self

import numpy as np
import numpy.typing as npt
from sklearn.base import BaseEstimator, RegressorMixin

from goodput.profiler.length_predictor import as_requests

__all__ = ["GlobalMeanLength", "InputLengthHistogram", "PerModelMeanLength"]

FloatArray = npt.NDArray[np.float64]


def _quantile_of(values: Sequence[float], q: float) -> float:
    return float(np.quantile(np.asarray(values, dtype=np.float64), q)) if values else 1.0


class GlobalMeanLength(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """Predicts the training mean for every request; the p90 is the training 90th percentile."""

    def fit(self, X: Any, y: Any) -> Self:
        as_requests(X)
        self.values_ = [float(v) for v in np.asarray(y, dtype=np.float64)]
        return self

    def partial_fit(self, X: Any, y: Any) -> Self:
        self.values_.extend(float(v) for v in np.asarray(y, dtype=np.float64))
        return self

    def predict_quantiles(self, X: Any, quantiles: Sequence[float] = (0.5, 0.9)) -> FloatArray:
        prompts, _ = as_requests(X)
        row = [
            float(np.mean(self.values_)) if q == 0.5 else _quantile_of(self.values_, q)
            for q in quantiles
        ]
        return np.tile(np.asarray(row), (len(prompts), 1))

    def predict(self, X: Any) -> FloatArray:
        return self.predict_quantiles(X, (0.5,))[:, 0]


class PerModelMeanLength(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """Each model's mean output length; an unseen model gets the pooled mean until observed."""

    def fit(self, X: Any, y: Any) -> Self:
        self.values_: dict[str, list[float]] = {}
        self.pooled_: list[float] = []
        return self.partial_fit(X, y)

    def partial_fit(self, X: Any, y: Any) -> Self:
        _, models = as_requests(X)
        for model, value in zip(models, np.asarray(y, dtype=np.float64), strict=True):
            self.values_.setdefault(model, []).append(float(value))
            self.pooled_.append(float(value))
        return self

    def predict_quantiles(self, X: Any, quantiles: Sequence[float] = (0.5, 0.9)) -> FloatArray:
        _, models = as_requests(X)
        out = np.empty((len(models), len(quantiles)))
        for i, model in enumerate(models):
            values = self.values_.get(model) or self.pooled_
            out[i] = [
                float(np.mean(values)) if q == 0.5 else _quantile_of(values, q) for q in quantiles
            ]
        return out

    def predict(self, X: Any) -> FloatArray:
        return self.predict_quantiles(X, (0.5,))[:, 0]


class InputLengthHistogram(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """Per model and per input-length bucket (powers of two of characters), the outputs seen.

    Predicts the bucket's mean and 90th percentile; a bucket with fewer than ``min_count``
    observations falls back to the model's pooled histogram, and an unseen model to all models'.
    Characters stand in for tokens (a near-constant ratio), so no tokenizer runs per request.
    """

    def __init__(self, min_count: int = 5) -> None:
        self.min_count = min_count

    @staticmethod
    def _bucket(prompt: str) -> int:
        return int(math.log2(max(len(prompt), 1)))

    def fit(self, X: Any, y: Any) -> Self:
        self.histograms_: dict[str, dict[int, list[float]]] = {}
        return self.partial_fit(X, y)

    def partial_fit(self, X: Any, y: Any) -> Self:
        prompts, models = as_requests(X)
        for prompt, model, value in zip(
            prompts, models, np.asarray(y, dtype=np.float64), strict=True
        ):
            bucket = self._bucket(prompt)
            for key in (model, ""):  # "" pools all models, for models not seen yet
                self.histograms_.setdefault(key, {}).setdefault(bucket, []).append(float(value))
                self.histograms_[key].setdefault(-1, []).append(float(value))
        return self

    def _values(self, prompt: str, model: str) -> list[float]:
        hist = self.histograms_.get(model) or self.histograms_[""]
        values = hist.get(self._bucket(prompt), [])
        return values if len(values) >= self.min_count else hist[-1]

    def predict_quantiles(self, X: Any, quantiles: Sequence[float] = (0.5, 0.9)) -> FloatArray:
        prompts, models = as_requests(X)
        out = np.empty((len(prompts), len(quantiles)))
        for i, (prompt, model) in enumerate(zip(prompts, models, strict=True)):
            values = self._values(prompt, model)
            out[i] = [
                float(np.mean(values)) if q == 0.5 else _quantile_of(values, q) for q in quantiles
            ]
        return out

    def predict(self, X: Any) -> FloatArray:
        return self.predict_quantiles(X, (0.5,))[:, 0]
