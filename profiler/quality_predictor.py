"""Predicts, per prompt, how likely a model's answer is to be judged at least as good as a
reference model's: what a cascade needs to decide whether a small model suffices.

Trained on AlpacaEval's judge comparing each model's answer with ``gpt4_1106_preview``'s on the
same prompt (``preference``: 1 = the reference's answer is better, 2 = the model's; the weighted
judges give the probability in between), rescaled here to ``y`` in [0, 1], the judged chance that
the model's answer wins.

A few hundred prompts with one noisy verdict per model are too few to learn each model apart, so
the model splits as the length predictor does (``length_predictor``):
``P(model m wins | prompt) = sigmoid(a_m * z(prompt) + b_m)``.

* ``z(prompt)`` is shared: a ridge regression on hashed word n-grams (TF-IDF) and the hand-written
  cues of ``prompt_features`` (task type, requested size, material pasted), fitted to each prompt's
  *consensus* win-rate over all judged models, a far less noisy target than any one verdict
  (easy prompts are easy for every small model; open-ended, long-answer ones favour the large).
* ``(a_m, b_m)`` is one logistic calibration per model on out-of-fold ``z`` (prompts the ridge did
  not see), so its confidence is that of unseen prompts. An unknown model gets the mean
  calibration of the known ones; the reference itself is 0.5 by definition.

Everything fitted is a NumPy array, a float or a dict of them: the model saves to a small skops
file that loads with an explicit trust list (``quality_model_io``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any, Self

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.utils.validation import check_is_fitted

from goodput.profiler.length_predictor import as_requests
from goodput.profiler.prompt_features import clip_text, prompt_cue_matrix, prompt_fold

__all__ = ["FORMAT_VERSION", "REFERENCE_MODEL", "QualityPredictor"]

# What a saved model's arrays mean; a file of another version is refused, not misread.
FORMAT_VERSION = 1
REFERENCE_MODEL = "gpt4_1106_preview"
"""The model every AlpacaEval verdict compares against."""
_LEVELS = np.linspace(0.01, 0.99, 99)

FloatArray = npt.NDArray[np.float64]


@functools.lru_cache(maxsize=4)
def _word_vectorizer(n_features: int) -> HashingVectorizer:
    """Stateless: nothing to fit, nothing to save."""
    return HashingVectorizer(
        analyzer="word",
        ngram_range=(1, 2),
        n_features=n_features,
        alternate_sign=False,
        norm=None,
        dtype=np.float64,
    )


def _sigmoid(x: FloatArray) -> FloatArray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(x, -30.0, 30.0))), dtype=np.float64)


class QualityPredictor(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """P(model's answer is judged at least as good as the reference's) from (prompt, model).

    ``X`` is a sequence of ``(prompt, model)`` pairs and ``y`` the judge's verdict in [0, 1]
    (1: the model's answer wins). ``predict`` gives the predicted win-rate.

    Parameters
    ----------
    n_features:
        Hash buckets of the word 1-2-gram block.
    alpha:
        Ridge penalty of the shared prompt score.
    cue_weight:
        Scale of the standardised cues relative to the unit-norm n-gram block.
    max_chars:
        Characters of a prompt (head and tail) that features are taken from; bounds latency.
    n_oof_folds:
        Folds (by prompt) for the out-of-fold scores the per-model calibration is fitted on.
    reference:
        The model the verdicts compare against; its own win-rate is 0.5.

    Attributes
    ----------
    coef_, intercept_:
        The prompt score's ridge weights on ``[word n-grams, cues]``.
    idf_, cue_mean_, cue_scale_:
        Feature scalings.
    calibration_:
        Per model, ``[a, b]`` of its logistic map from the prompt score.
    score_quantiles_:
        Quantiles (1%..99%) of the out-of-fold prompt scores of the training prompts: a prior
        for thresholds before live traffic is seen.
    format_version_:
        ``FORMAT_VERSION`` of the code that fitted it.
    """

    def __init__(
        self,
        *,
        n_features: int = 2**13,
        alpha: float = 30.0,
        cue_weight: float = 0.3,
        max_chars: int = 600,
        n_oof_folds: int = 5,
        reference: str = REFERENCE_MODEL,
    ) -> None:
        self.n_features = n_features
        self.alpha = alpha
        self.cue_weight = cue_weight
        self.max_chars = max_chars
        self.n_oof_folds = n_oof_folds
        self.reference = reference

    # -- features ------------------------------------------------------------------------------

    def _counts(self, prompts: Sequence[str]) -> sp.csr_matrix:
        texts = [clip_text(p, self.max_chars) for p in prompts]
        X = _word_vectorizer(self.n_features).transform(texts).tocsr()
        X.data = np.log1p(X.data)
        return X

    def _design(self, counts: sp.csr_matrix, cues: FloatArray) -> sp.csr_matrix:
        weighted = counts.multiply(self.idf_).tocsr()
        norms = np.sqrt(np.asarray(weighted.multiply(weighted).sum(axis=1)).ravel())
        norms[norms == 0] = 1.0
        scaled = (cues - self.cue_mean_) / self.cue_scale_ * self.cue_weight
        return sp.hstack([sp.diags(1.0 / norms) @ weighted, sp.csr_matrix(scaled)], format="csr")

    # -- fitting -------------------------------------------------------------------------------

    def fit(self, X: Any, y: Any) -> Self:
        """Fit the shared prompt score on consensus win-rates, then each model's calibration."""
        prompts, models = as_requests(X)
        target = np.asarray(y, dtype=np.float64)
        if target.shape != (len(prompts),):
            raise ValueError(f"X has {len(prompts)} rows but y has shape {target.shape}")
        if np.any(~np.isfinite(target)) or np.any((target < 0) | (target > 1)):
            raise ValueError("y must hold verdicts in [0, 1]")
        judged = np.asarray(models) != self.reference
        if not judged.any():
            raise ValueError("need verdicts of some model other than the reference")
        uniq, prompt_idx = np.unique(np.asarray(prompts, dtype=object), return_inverse=True)
        texts = [str(p) for p in uniq]
        n = len(texts)
        weight = np.bincount(prompt_idx[judged], minlength=n).astype(np.float64)
        sums = np.bincount(prompt_idx[judged], weights=target[judged], minlength=n)
        has = weight > 0
        consensus = np.where(has, sums / np.maximum(weight, 1.0), 0.0)

        counts = self._counts(texts)
        cues = prompt_cue_matrix(texts, self.max_chars)
        df = np.bincount(counts.indices, minlength=self.n_features).astype(np.float64)
        self.idf_ = np.log((1.0 + n) / (1.0 + df)) + 1.0
        self.cue_mean_ = cues.mean(axis=0)
        scale = cues.std(axis=0)
        self.cue_scale_ = np.where(scale > 1e-9, scale, 1.0)
        design = self._design(counts, cues)
        self.coef_, self.intercept_ = self._ridge(design[has], consensus[has], weight[has])

        # Out-of-fold scores: a calibration fitted on in-sample scores would be overconfident.
        folds = np.array([prompt_fold(p, self.n_oof_folds) for p in texts])
        z_oof = design @ self.coef_ + self.intercept_
        for k in range(self.n_oof_folds):
            test = folds == k
            train = ~test & has
            if test.any() and train.sum() >= 2:
                coef, intercept = self._ridge(design[train], consensus[train], weight[train])
                z_oof[test] = design[test] @ coef + intercept
        self.score_quantiles_ = np.quantile(z_oof[has], _LEVELS)
        self.calibration_ = self._calibrate(z_oof[prompt_idx], target, models)
        self.n_features_in_ = 2  # scikit-learn's convention: X's columns, (prompt, model)
        self.format_version_ = FORMAT_VERSION
        return self

    def _ridge(
        self, design: sp.csr_matrix, target: FloatArray, weight: FloatArray
    ) -> tuple[FloatArray, float]:
        ridge = Ridge(alpha=self.alpha).fit(design, target, sample_weight=weight)
        return np.asarray(ridge.coef_, dtype=np.float64), float(ridge.intercept_)

    def _calibrate(
        self, z: FloatArray, target: FloatArray, models: list[str]
    ) -> dict[str, FloatArray]:
        """One logistic map per model; soft verdicts enter as a win and a loss, weighted."""
        names = np.asarray(models)
        out: dict[str, FloatArray] = {}
        for name in sorted(set(models) - {self.reference}):
            rows = names == name
            zs, ys = z[rows], target[rows]
            if np.all(ys == ys[0]):
                # One class only: no slope to learn; the (smoothed) base rate.
                rate = (ys.sum() + 0.5) / (ys.shape[0] + 1.0)
                out[name] = np.array([0.0, math.log(rate / (1.0 - rate))])
                continue
            features = np.concatenate([zs, zs])[:, None]
            labels = np.concatenate([np.ones_like(ys), np.zeros_like(ys)])
            weights = np.concatenate([ys, 1.0 - ys])
            fit = LogisticRegression(C=10.0).fit(features, labels, sample_weight=weights)
            out[name] = np.array([float(fit.coef_[0, 0]), float(fit.intercept_[0])])
        return out

    # -- prediction ----------------------------------------------------------------------------

    def prompt_scores(self, prompts: Sequence[str]) -> FloatArray:
        """The shared, model-independent score of each prompt (higher: small models do well)."""
        check_is_fitted(self, "coef_")
        if not prompts:
            return np.zeros(0)
        cues = prompt_cue_matrix(list(prompts), self.max_chars)
        design = self._design(self._counts(prompts), cues)
        return np.asarray(design @ self.coef_ + self.intercept_, dtype=np.float64)

    def calibration(self, model: str) -> tuple[float, float]:
        """``(a, b)`` of ``model``; the known models' mean for an unknown one."""
        check_is_fitted(self, "calibration_")
        found = self.calibration_.get(model)
        if found is None:
            found = np.mean(list(self.calibration_.values()), axis=0)
        return float(found[0]), float(found[1])

    def win_rate(self, scores: FloatArray, model: str) -> FloatArray:
        """Predicted win-rates of ``model`` at the given prompt scores."""
        if model == self.reference:
            return np.full(scores.shape, 0.5)
        a, b = self.calibration(model)
        return _sigmoid(a * scores + b)

    def predict(self, X: Any) -> FloatArray:
        """Predicted P(the model's answer is judged at least as good as the reference's)."""
        prompts, models = as_requests(X)
        scores = self.prompt_scores(prompts)
        out = np.empty(len(prompts))
        for name in set(models):
            rows = np.asarray(models) == name
            out[rows] = self.win_rate(scores[rows], name)
        return out

    def predict_models(self, prompt: str, models: Sequence[str]) -> FloatArray:
        """Win-rates of each of ``models`` for one prompt (a router's per-request call)."""
        scores = self.prompt_scores([prompt])
        return np.array([float(self.win_rate(scores, m)[0]) for m in models])
