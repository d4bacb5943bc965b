"""Predicts how many tokens a model will write for a prompt, as quantiles, in well under 2 ms.

The log of a response's length splits into what the prompt asks for and how verbose the serving
model is: ``log(1 + tokens) = a_m * z(prompt) + b_m + noise_m``.

* ``z(prompt)`` is shared by all models: a ridge regression on hashed word and character n-grams
  of the prompt plus hand-written cues (``prompt_features``). It is trained on each prompt's
  consensus length across models, a far less noisy target than any single response.
* ``(a_m, b_m, noise_m)`` is the model's verbosity: a Bayesian linear calibration per model whose
  prior is the population of known models. An unseen model starts at that prior and moves toward
  its own behaviour with every observed response (``partial_fit``): a few dozen responses suffice.
* Quantiles come from the empirical distribution of standardised out-of-fold residuals, so the
  p90 is calibrated on prompts the text model did not see, not on its (optimistic) training fit.

Everything fitted is a NumPy array, a float or a dict of them: the model saves to a small skops
file that loads with an explicit list of trusted types (``length_model_io``).
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Iterable, Sequence
from typing import Any, Self

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import Ridge
from sklearn.utils.validation import check_is_fitted

from goodput.profiler.prompt_features import prompt_cue_matrix, prompt_cues

__all__ = ["LengthPredictor", "as_requests"]

FloatArray = npt.NDArray[np.float64]
# Levels at which the standardised residual distribution is stored: any quantile in between is
# interpolated, so callers may ask for p50, p90, p99 or anything else without refitting.
_LEVELS = np.linspace(0.01, 0.99, 99)


def as_requests(X: Any) -> tuple[list[str], list[str]]:
    """Split ``X`` (rows of ``(prompt, model)``) into prompts and model names.

    Accepts a sequence of pairs or a 2-column object array, which is what a ``Pipeline`` passes.
    """
    if isinstance(X, np.ndarray):
        if X.ndim != 2 or X.shape[1] != 2:
            raise ValueError(f"expected rows of (prompt, model), got an array of shape {X.shape}")
        return [str(p) for p in X[:, 0]], [str(m) for m in X[:, 1]]
    prompts: list[str] = []
    models: list[str] = []
    for row in X:
        prompt, model = row
        prompts.append(str(prompt))
        models.append(str(model))
    return prompts, models


def _clip_text(text: str, max_chars: int) -> str:
    """Head and tail of a long prompt: instructions sit at either end, the middle is material."""
    if len(text) <= max_chars:
        return text
    head = (max_chars * 2) // 3
    return text[:head] + "\n" + text[-(max_chars - head) :]


@functools.lru_cache(maxsize=4)
def _vectorizers(n_features: int) -> tuple[HashingVectorizer, HashingVectorizer]:
    """Stateless hashing vectorizers: nothing to fit, nothing to save."""
    common: dict[str, Any] = {
        "n_features": n_features,
        "alternate_sign": False,
        "norm": None,
        "dtype": np.float64,
    }
    words = HashingVectorizer(analyzer="word", ngram_range=(1, 2), **common)
    chars = HashingVectorizer(analyzer="char_wb", ngram_range=(3, 5), **common)
    return words, chars


def _fold_of(prompt: str, n_folds: int) -> int:
    digest = hashlib.sha256(prompt.encode("utf-8", "replace")).digest()
    return int.from_bytes(digest[:8], "big") % n_folds


class LengthPredictor(RegressorMixin, BaseEstimator):  # type: ignore[misc]
    """Quantiles of output tokens from (prompt, serving model); ``predict`` gives the median.

    ``X`` is a sequence of ``(prompt, model)`` pairs and ``y`` the output token counts.

    Parameters
    ----------
    n_features:
        Hash buckets for each of the word and the character n-gram blocks.
    alpha:
        Ridge penalty of the prompt model.
    cue_weight:
        Scale of the standardised cue features relative to the unit-norm n-gram blocks.
    max_chars:
        Characters of a prompt (head and tail) that n-grams are taken from; bounds latency.
    n_oof_folds:
        Folds (by prompt) for the out-of-fold residuals that calibrate verbosity and quantiles.
    prior_strength:
        How many observations the population prior of an unseen model's verbosity is worth.
    forgetting:
        Per-observation decay of a model's verbosity evidence in ``partial_fit`` (1.0 keeps all),
        so a deployment follows drift in its users' prompts.
    warm_start:
        When refitting, shrink the prompt model toward the current one instead of toward zero,
        so a small log of the deployment's own traffic refines rather than replaces it.
    """

    def __init__(
        self,
        *,
        n_features: int = 2**14,
        alpha: float = 1.0,
        cue_weight: float = 0.1,
        max_chars: int = 600,
        n_oof_folds: int = 5,
        prior_strength: float = 8.0,
        forgetting: float = 1.0,
        warm_start: bool = False,
    ) -> None:
        self.n_features = n_features
        self.alpha = alpha
        self.cue_weight = cue_weight
        self.max_chars = max_chars
        self.n_oof_folds = n_oof_folds
        self.prior_strength = prior_strength
        self.forgetting = forgetting
        self.warm_start = warm_start

    # ----------------------------------------------------------------------------------------
    # Features

    def _ngram_blocks(self, prompts: Sequence[str]) -> list[sp.csr_matrix]:
        words, chars = _vectorizers(self.n_features)
        texts = [_clip_text(p, self.max_chars) for p in prompts]
        blocks = []
        for vec in (words, chars):
            X = vec.transform(texts).tocsr()
            X.data = np.log1p(X.data)  # sublinear tf: repetition adds little
            blocks.append(X)
        return blocks

    def _design(self, blocks: list[sp.csr_matrix], cues: FloatArray) -> sp.csr_matrix:
        """Weighted, normalised n-gram blocks side by side with standardised cues."""
        parts: list[sp.spmatrix] = []
        for X, idf in zip(blocks, (self.word_idf_, self.char_idf_), strict=True):
            Xw = X.multiply(idf).tocsr()
            norms = np.sqrt(np.asarray(Xw.multiply(Xw).sum(axis=1)).ravel())
            norms[norms == 0] = 1.0
            parts.append(sp.diags(1.0 / norms) @ Xw)
        parts.append(sp.csr_matrix((cues - self.cue_mean_) / self.cue_scale_ * self.cue_weight))
        return sp.hstack(parts, format="csr")

    # ----------------------------------------------------------------------------------------
    # Fitting

    def fit(self, X: Any, y: Any) -> Self:
        """Fit the prompt model on consensus lengths, then each model's verbosity calibration."""
        prompts, models = as_requests(X)
        y_log = np.log1p(np.asarray(y, dtype=np.float64))
        if len(prompts) != y_log.shape[0]:
            raise ValueError(f"X has {len(prompts)} rows but y has {y_log.shape[0]}")
        if y_log.shape[0] < 2:
            raise ValueError("need at least two responses to fit")
        if np.any(~np.isfinite(y_log)) or np.any(y_log < 0):
            raise ValueError("y must hold non-negative token counts")
        previous = self._previous_state() if self.warm_start else None

        uniq, prompt_idx = np.unique(np.asarray(prompts, dtype=object), return_inverse=True)
        uniq_prompts = [str(p) for p in uniq]
        model_names = sorted(set(models))
        model_idx = np.searchsorted(np.asarray(model_names), np.asarray(models))

        if previous is None:
            z, weight = _consensus(
                y_log, prompt_idx, model_idx, len(uniq_prompts), len(model_names)
            )
        else:
            # Reuse the current verbosity to map each response back to its prompt's scale.
            a_b = np.array([self._posterior_mean(m) for m in model_names])
            a, b = a_b[model_idx, 0], a_b[model_idx, 1]
            per_row = (y_log - b) / np.maximum(a, 0.05)
            weight = np.bincount(prompt_idx, minlength=len(uniq_prompts)).astype(np.float64)
            z = np.bincount(prompt_idx, weights=per_row, minlength=len(uniq_prompts)) / weight

        blocks = self._ngram_blocks(uniq_prompts)
        cues = prompt_cue_matrix(uniq_prompts, self.max_chars)
        self._fit_scalers(blocks, cues, previous)
        design = self._design(blocks, cues)
        coef, intercept = self._fit_ridge(design, z, weight, previous)

        # Out-of-fold prompt scores: the verbosity calibration and the residual spread must be
        # learned from predictions on prompts the ridge did not see, or both come out too tight.
        folds = np.array([_fold_of(p, self.n_oof_folds) for p in uniq_prompts])
        z_oof = np.empty(len(uniq_prompts))
        for k in range(self.n_oof_folds):
            test = folds == k
            if not test.any() or test.all():
                z_oof[test] = design[test] @ coef + intercept
                continue
            c_k, i_k = self._fit_ridge(design[~test], z[~test], weight[~test], previous)
            z_oof[test] = design[test] @ c_k + i_k

        self.coef_ = coef
        self.intercept_ = float(intercept)
        self.n_features_in_ = 2  # scikit-learn's convention: X's columns, (prompt, model)
        self._fit_verbosity(z_oof[prompt_idx], y_log, models, model_names, previous)
        return self

    def _previous_state(self) -> dict[str, Any] | None:
        if not hasattr(self, "coef_"):
            return None
        return {
            "coef": self.coef_.copy(),
            "intercept": self.intercept_,
            "word_idf": self.word_idf_.copy(),
            "char_idf": self.char_idf_.copy(),
            "cue_mean": self.cue_mean_.copy(),
            "cue_scale": self.cue_scale_.copy(),
        }

    def _fit_scalers(
        self, blocks: list[sp.csr_matrix], cues: FloatArray, previous: dict[str, Any] | None
    ) -> None:
        if previous is not None:
            # Keep the feature space fixed so the old coefficients still mean the same thing.
            self.word_idf_ = previous["word_idf"]
            self.char_idf_ = previous["char_idf"]
            self.cue_mean_ = previous["cue_mean"]
            self.cue_scale_ = previous["cue_scale"]
            return
        n = blocks[0].shape[0]
        idfs = []
        for X in blocks:
            df = np.bincount(X.indices, minlength=self.n_features).astype(np.float64)
            idfs.append(np.log((1.0 + n) / (1.0 + df)) + 1.0)
        self.word_idf_, self.char_idf_ = idfs
        self.cue_mean_ = cues.mean(axis=0)
        scale = cues.std(axis=0)
        self.cue_scale_ = np.where(scale > 1e-9, scale, 1.0)

    def _fit_ridge(
        self,
        design: sp.csr_matrix,
        z: FloatArray,
        weight: FloatArray,
        previous: dict[str, Any] | None,
    ) -> tuple[FloatArray, float]:
        ridge = Ridge(alpha=self.alpha, solver="auto")
        if previous is None:
            ridge.fit(design, z, sample_weight=weight)
            return np.asarray(ridge.coef_, dtype=np.float64), float(ridge.intercept_)
        # Ridge toward the old weights: fit the correction on what the old model misses.
        base = design @ previous["coef"] + previous["intercept"]
        ridge.fit(design, z - base, sample_weight=weight)
        return previous["coef"] + ridge.coef_, previous["intercept"] + float(ridge.intercept_)

    def _fit_verbosity(
        self,
        z: FloatArray,
        y_log: FloatArray,
        models: list[str],
        model_names: list[str],
        previous: dict[str, Any] | None,
    ) -> None:
        """Per-model (slope, offset, noise) and the population prior an unseen model starts from."""
        model_arr = np.asarray(models)
        fits: dict[str, tuple[FloatArray, float, int]] = {}
        for name in model_names:
            rows = model_arr == name
            design = np.column_stack([z[rows], np.ones(rows.sum())])
            coef, *_ = np.linalg.lstsq(design, y_log[rows], rcond=None)
            if rows.sum() < 3 or not np.all(np.isfinite(coef)):
                coef = np.array([1.0, float(np.mean(y_log[rows] - z[rows]))])
            resid = y_log[rows] - design @ coef
            fits[name] = (coef, float(np.sqrt(np.mean(resid**2)) + 1e-3), int(rows.sum()))

        if previous is None or not hasattr(self, "prior_mean_"):
            coefs = np.array([c for c, _, _ in fits.values()])
            self.prior_mean_ = coefs.mean(axis=0)
            spread = np.cov(coefs.T) if len(coefs) > 2 else np.diag([0.1, 0.25])
            # A floor keeps the prior honest about models unlike any seen in training.
            self.prior_cov_ = spread + np.diag([0.02, 0.05])
            self.prior_noise_ = float(np.median([s for _, s, _ in fits.values()]))

        self.__dict__.pop("_verbosity_cache", None)
        self.__dict__.pop("_offsets_cache", None)
        # Standardised residuals pooled over models give the quantile shape.
        std_resid = np.concatenate(
            [
                (y_log[model_arr == n] - np.column_stack([z[model_arr == n], np.ones(k)]) @ c) / s
                for n, (c, s, k) in fits.items()
            ]
        )
        self.residual_quantiles_ = np.quantile(std_resid, _LEVELS)

        # Each model's evidence as a Gaussian in natural parameters: precision and shift.
        prior_precision = np.linalg.inv(self.prior_cov_)
        self.verbosity_ = {} if previous is None else dict(getattr(self, "verbosity_", {}))
        for name, (_, noise, n) in fits.items():
            design = np.column_stack([z[model_arr == name], np.ones(n)])
            precision = prior_precision + design.T @ design / noise**2
            shift = (
                prior_precision @ self.prior_mean_ + design.T @ y_log[model_arr == name] / noise**2
            )
            self.verbosity_[name] = _pack(precision, shift, n, noise**2 * n, n)

    def partial_fit(self, X: Any, y: Any) -> Self:
        """Update each model's verbosity from observed responses; the prompt model is unchanged.

        Cheap (a 2x2 update per response), so a gateway can call it for every finished request.
        """
        check_is_fitted(self, "coef_")
        prompts, models = as_requests(X)
        y_log = np.log1p(np.asarray(y, dtype=np.float64))
        z = self.prompt_scores(prompts)
        for zi, yi, name in zip(z, y_log, models, strict=True):
            self._observe(name, float(zi), float(yi))
        return self

    def _observe(self, model: str, z: float, y_log: float) -> None:
        precision, shift, n, sq, n_sq = self._state(model)
        noise2 = self._noise2(n_sq, sq)
        mean = np.linalg.solve(precision, shift)
        resid = y_log - (mean[0] * z + mean[1])
        x = np.array([z, 1.0])
        lam = self.forgetting
        prior_precision = np.linalg.inv(self.prior_cov_)
        prior_shift = prior_precision @ self.prior_mean_
        # Forgetting decays the evidence, never the prior, so the state cannot drift to nothing.
        precision = prior_precision + lam * (precision - prior_precision) + np.outer(x, x) / noise2
        shift = prior_shift + lam * (shift - prior_shift) + x * y_log / noise2
        self.verbosity_[model] = _pack(precision, shift, n + 1, lam * sq + resid**2, lam * n_sq + 1)
        self.__dict__.pop("_verbosity_cache", None)

    def _state(self, model: str) -> tuple[FloatArray, FloatArray, float, float, float]:
        packed = self.verbosity_.get(model)
        if packed is None:
            precision = np.linalg.inv(self.prior_cov_)
            return precision, precision @ self.prior_mean_, 0.0, 0.0, 0.0
        return (
            packed[:4].reshape(2, 2),
            packed[4:6].copy(),
            float(packed[6]),
            float(packed[7]),
            float(packed[8]),
        )

    def _noise2(self, n_sq: float, sq: float) -> float:
        """Residual variance: the population's, until the model's own evidence outweighs it."""
        k = self.prior_strength
        return (k * self.prior_noise_**2 + sq) / (k + n_sq)

    def _posterior_mean(self, model: str) -> FloatArray:
        precision, shift, *_ = self._state(model)
        return np.asarray(np.linalg.solve(precision, shift), dtype=np.float64)

    # ----------------------------------------------------------------------------------------
    # Prediction

    def prompt_scores(self, prompts: Sequence[str]) -> FloatArray:
        """The shared, model-independent length score ``z`` of each prompt (log-token scale)."""
        check_is_fitted(self, "coef_")
        if not prompts:
            return np.zeros(0)
        design = self._design(
            self._ngram_blocks(prompts), prompt_cue_matrix(list(prompts), self.max_chars)
        )
        return np.asarray(design @ self.coef_ + self.intercept_, dtype=np.float64)

    def verbosity(self, model: str) -> tuple[float, float, float]:
        """``(slope, offset, noise)`` of ``model`` in log tokens; the population prior if unseen."""
        check_is_fitted(self, "coef_")
        a, b = self._posterior_mean(model)
        _, _, _, sq, n_sq = self._state(model)
        return float(a), float(b), math.sqrt(self._noise2(n_sq, sq))

    def _quantile_offsets(self, quantiles: Iterable[float]) -> FloatArray:
        qs = np.asarray(list(quantiles), dtype=np.float64)
        if np.any((qs <= 0) | (qs >= 1)):
            raise ValueError("quantiles must lie strictly between 0 and 1")
        return np.asarray(np.interp(qs, _LEVELS, self.residual_quantiles_), dtype=np.float64)

    def predict_quantiles(self, X: Any, quantiles: Sequence[float] = (0.5, 0.9)) -> FloatArray:
        """Output-token quantiles, one row per request and one column per quantile."""
        prompts, models = as_requests(X)
        z = self.prompt_scores(prompts)
        offsets = self._quantile_offsets(quantiles)
        out = np.empty((len(prompts), offsets.shape[0]))
        cache: dict[str, tuple[float, float, float]] = {}
        for i, (zi, name) in enumerate(zip(z, models, strict=True)):
            if name not in cache:
                cache[name] = self.verbosity(name)
            a, b, noise = cache[name]
            out[i] = np.expm1(a * zi + b + offsets * noise)
        return np.maximum(out, 1.0)

    def predict(self, X: Any) -> FloatArray:
        """Median output tokens."""
        return self.predict_quantiles(X, (0.5,))[:, 0]

    def predict_request(
        self, prompt: str, model: str, max_tokens: int | None = None
    ) -> tuple[float, float]:
        """``(p50, p90)`` output tokens of one request; the gateway's per-request call.

        Works on one row's indices and values directly (no sparse-matrix algebra), and caches
        each model's verbosity, so a request costs about the time to hash its n-grams. Capped at
        ``max_tokens`` when the client set one: the engine stops there.
        """
        z = self._request_score(prompt)
        a, b, noise = self._cached_verbosity(model)
        u50, u90 = self._request_offsets()
        p50 = max(math.expm1(a * z + b + u50 * noise), 1.0)
        p90 = max(math.expm1(a * z + b + u90 * noise), p50)
        if max_tokens is not None:
            p50, p90 = min(p50, float(max_tokens)), min(p90, float(max_tokens))
        return p50, p90

    def observe_request(self, prompt: str, model: str, output_tokens: int) -> None:
        """Learn from one finished request: ``partial_fit`` for a single row, at request speed."""
        self._observe(model, self._request_score(prompt), math.log1p(max(output_tokens, 0)))

    def _request_score(self, prompt: str) -> float:
        """``prompt_scores`` of one prompt, on the row's indices and values directly."""
        check_is_fitted(self, "coef_")
        text = _clip_text(prompt, self.max_chars)
        z = self.intercept_
        start = 0
        idfs = (self.word_idf_, self.char_idf_)
        for vec, idf in zip(_vectorizers(self.n_features), idfs, strict=True):
            row = vec.transform([text])
            idx = row.indices
            values = np.log1p(row.data) * idf[idx]
            norm = math.sqrt(float(values @ values)) or 1.0
            z += float(values @ self.coef_[start + idx]) / norm
            start += self.n_features
        cues = (prompt_cues(prompt, self.max_chars) - self.cue_mean_) / self.cue_scale_
        return z + self.cue_weight * float(cues @ self.coef_[start:])

    def _cached_verbosity(self, model: str) -> tuple[float, float, float]:
        cache: dict[str, tuple[float, float, float]] = self.__dict__.setdefault(
            "_verbosity_cache", {}
        )
        hit = cache.get(model)
        if hit is None:
            hit = cache[model] = self.verbosity(model)
        return hit

    def _request_offsets(self) -> tuple[float, float]:
        offsets = self.__dict__.get("_offsets_cache")
        if offsets is None:
            u50, u90 = self._quantile_offsets((0.5, 0.9))
            offsets = self.__dict__["_offsets_cache"] = (float(u50), float(u90))
        return offsets

    def __getstate__(self) -> dict[str, Any]:
        # Caches are derived: keep them out of saved files (and out of skops' type check).
        state = dict(super().__getstate__())
        state.pop("_verbosity_cache", None)
        state.pop("_offsets_cache", None)
        return state


def _pack(precision: FloatArray, shift: FloatArray, n: float, sq: float, n_sq: float) -> FloatArray:
    """One model's verbosity state as a flat array (saves as one array, loads without pickle)."""
    return np.concatenate([precision.ravel(), shift, [n, sq, n_sq]]).astype(np.float64)


def _consensus(
    y_log: FloatArray,
    prompt_idx: npt.NDArray[np.intp],
    model_idx: npt.NDArray[np.intp],
    n_prompts: int,
    n_models: int,
) -> tuple[FloatArray, FloatArray]:
    """Each prompt's length with model verbosity taken out (two-way additive fit, missing cells ok).

    Returns the score per prompt and how many responses back it.
    """
    counts_p = np.bincount(prompt_idx, minlength=n_prompts).astype(np.float64)
    counts_m = np.bincount(model_idx, minlength=n_models).astype(np.float64)
    offset = np.zeros(n_models)
    z = np.zeros(n_prompts)
    for _ in range(10):
        sums_p = np.bincount(prompt_idx, weights=y_log - offset[model_idx], minlength=n_prompts)
        z = sums_p / np.maximum(counts_p, 1.0)
        sums_m = np.bincount(model_idx, weights=y_log - z[prompt_idx], minlength=n_models)
        offset = sums_m / np.maximum(counts_m, 1.0)
        offset -= offset.mean()
    return z, counts_p
