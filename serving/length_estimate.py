"""Output-length prediction: how many tokens a request will generate, as two quantiles.

The scheduler needs a cost per request before it runs. ``OnlineLengthEstimator`` needs no
training: it keeps recent true output lengths per prompt-size band and answers their quantiles.
A learned per-prompt model (the profiler's) plugs in through the same ``LengthPredictor`` shape.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from goodput.api.gateway_config import PredictorConfig

if TYPE_CHECKING:
    from goodput.profiler.length_predictor import LengthPredictor as ProfilerLengthModel


# Longest output an observation may claim (the longest context served anywhere).
_MAX_OBSERVED_TOKENS = 1 << 20


@dataclass(frozen=True, slots=True)
class LengthPrediction:
    """Predicted output tokens: median and 90th percentile."""

    p50: float
    p90: float

    def clipped(self, max_tokens: int | None) -> LengthPrediction:
        """A request cannot generate more than its ``max_tokens``; nor, for the scheduler's
        costs, less than one token (a cap of 0 or below must not make a request free)."""
        if max_tokens is None:
            return self
        cap = max(float(max_tokens), 1.0)
        return LengthPrediction(min(self.p50, cap), min(self.p90, cap))


class LengthPredictor(Protocol):
    def predict(self, prompt: str, prompt_tokens: int, max_tokens: int | None) -> LengthPrediction:
        """Predict the output length of a request before it runs."""
        ...

    def observe(self, prompt: str, prompt_tokens: int, output_tokens: int) -> None:
        """Learn from a finished request's true output length."""
        ...


class OnlineLengthEstimator:
    """Quantiles of recent output lengths, per band of prompt size (powers of two).

    Output length depends on the prompt weakly but measurably (long documents ask for summaries,
    short questions for answers); banding by size captures that without a model. A band with too
    few samples borrows the global window; with no data at all the prior answers.
    """

    def __init__(
        self,
        *,
        window: int = 512,
        min_band_samples: int = 16,
        refresh_every: int = 16,
        prior: LengthPrediction = LengthPrediction(128.0, 512.0),
    ) -> None:
        self._window = window
        self._min_band = min_band_samples
        self._refresh_every = refresh_every
        self._prior = prior
        self._all: deque[int] = deque(maxlen=window)
        self._bands: dict[int, deque[int]] = {}
        # Quantiles are recomputed every ``refresh_every`` observations, not per request: the
        # prediction is on the hot path and a sort per request would cost tens of microseconds.
        self._cached: dict[int, LengthPrediction] = {}
        self._since_refresh: dict[int, int] = {}
        self._global = prior
        self._global_since = 0

    @staticmethod
    def _band(prompt_tokens: int) -> int:
        return max(0, int(math.log2(max(prompt_tokens, 1))))

    def predict(self, prompt: str, prompt_tokens: int, max_tokens: int | None) -> LengthPrediction:
        band = self._band(prompt_tokens)
        cached = self._cached.get(band)
        return (cached or self._global).clipped(max_tokens)

    def observe(self, prompt: str, prompt_tokens: int, output_tokens: int) -> None:
        if not 0 <= output_tokens <= _MAX_OBSERVED_TOKENS:
            return  # an engine's usage numbers are not trusted blindly
        band = self._band(prompt_tokens)
        samples = self._bands.setdefault(band, deque(maxlen=self._window))
        samples.append(output_tokens)
        self._all.append(output_tokens)
        count = self._since_refresh.get(band, 0) + 1
        if len(samples) >= self._min_band and (
            count >= self._refresh_every or band not in self._cached
        ):
            self._cached[band] = _quantiles(samples)
            count = 0
        self._since_refresh[band] = count
        self._global_since += 1
        if self._global_since >= self._refresh_every or len(self._all) < self._refresh_every:
            self._global = _quantiles(self._all)
            self._global_since = 0


def _quantiles(samples: deque[int]) -> LengthPrediction:
    ordered = sorted(samples)
    n = len(ordered)
    return LengthPrediction(
        float(ordered[min(n - 1, n // 2)]), float(ordered[min(n - 1, (9 * n) // 10)])
    )


class LearnedLengthPredictor:
    """The profiler's learned quantile predictor (``goodput.profiler.length_predictor``) behind
    the gateway's interface. It scores the prompt text itself (word and character n-grams), so
    it tells a one-line question from a request for an essay; it keeps learning online from the
    gateway's answers, per served model (``model_key``: its verbosity is learned separately).
    """

    def __init__(self, model: ProfilerLengthModel, model_key: str) -> None:
        self._model = model
        self._key = model_key

    def predict(self, prompt: str, prompt_tokens: int, max_tokens: int | None) -> LengthPrediction:
        p50, p90 = self._model.predict_request(prompt, self._key, max_tokens)
        return LengthPrediction(p50, p90)

    def observe(self, prompt: str, prompt_tokens: int, output_tokens: int) -> None:
        self._model.observe_request(prompt, self._key, output_tokens)

    @property
    def model(self) -> ProfilerLengthModel:
        return self._model

    def keyed(self, model_key: str) -> LengthPredictor:
        """The same learned model answering for another served model (an adapter: its own
        verbosity, calibrated from its own answers), following this one through refits."""
        return _KeyedView(self, model_key)

    def use(self, model: ProfilerLengthModel) -> None:
        """Answer with ``model`` from now on (a refitted copy): one assignment, so a request
        sees either model whole."""
        self._model = model


class _KeyedView:
    def __init__(self, parent: LearnedLengthPredictor, model_key: str) -> None:
        self._parent = parent
        self._key = model_key

    def predict(self, prompt: str, prompt_tokens: int, max_tokens: int | None) -> LengthPrediction:
        p50, p90 = self._parent.model.predict_request(prompt, self._key, max_tokens)
        return LengthPrediction(p50, p90)

    def observe(self, prompt: str, prompt_tokens: int, output_tokens: int) -> None:
        self._parent.model.observe_request(prompt, self._key, output_tokens)


class PerModelPredictors:
    """A length predictor per served model: the base model's, and one per adapter keyed by its
    name — fine-tunes of one base answer at lengths of their own (a SQL adapter's answers are
    short, a chat adapter's long), so one estimate for all would mislead the scheduler for
    each. With the learned model, adapters share its prompt features and each gets its own
    calibration; with the online estimator, each gets its own window."""

    def __init__(self, base: LengthPredictor, *, max_models: int = 1024) -> None:
        self.base = base
        self.max_models = max_models
        self._by_model: dict[str, LengthPredictor] = {}

    def __call__(self, model: str | None) -> LengthPredictor:
        if model is None:
            return self.base
        found = self._by_model.get(model)
        if found is None:
            if len(self._by_model) >= self.max_models:  # bounded: forget the oldest
                self._by_model.pop(next(iter(self._by_model)))
            base = self.base
            found = (
                base.keyed(model)
                if isinstance(base, LearnedLengthPredictor)
                else (OnlineLengthEstimator())
            )
            self._by_model[model] = found
        return found


def make_predictor(config: PredictorConfig, *, model_key: str) -> LengthPredictor:
    if config.kind == "online":
        return OnlineLengthEstimator()
    # Imported only here: scikit-learn costs a second of start-up the online estimator avoids.
    from goodput.profiler.length_model_io import load_default_length_model, load_length_model

    model = (
        load_default_length_model()
        if config.model_path is None
        else load_length_model(config.model_path)
    )
    return LearnedLengthPredictor(model, model_key)
