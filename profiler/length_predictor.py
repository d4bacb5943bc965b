"""Predicts how many tokens a model will write for a prompt, as quantiles, in well under 2 ms.

The log of a response's length splits into what the prompt asks for and how verbose the serving
model is: ``log(1 + tokens) = a_m * z(prompt) + b_m + noise_m``.

* ``z(prompt)`` is shared by all models: a ridge regression on hashed word and character n-grams
  of the prompt plus hand-written cues (``prompt_features``). It is trained on each prompt's
  consensus length across models, a far less noisy target than any single response.
* ``(a_m, b_m, noise_m)`` is the model's verbosity and ``w_m . cues(prompt)`` its *correction*:
  what this model writes longer or shorter than the consensus for a kind of prompt (one model
  pads code with explanations, another answers questions tersely). Both are one Bayesian linear
  model per served model, on ``[z, 1, standardised cues]``, whose prior is the population of
  known models (empirical Bayes: their mean and spread). An unseen model starts at that prior and
  moves toward its own behaviour with every observed response (``partial_fit``), so what it
  learns changes the *ranking* of its prompts, not only their scale.
* Observations are untrusted (an engine's usage numbers): non-finite or negative ones are
  dropped, the rest clipped to ``max_output_tokens``, and each update's residual is clipped to
  ``outlier_sigma`` noise deviations, so one absurd answer cannot move a model far.
* Quantiles come from the empirical distribution of standardised out-of-fold residuals, so the
  p90 is calibrated on prompts the text model did not see, not on its (optimistic) training fit.

Everything fitted is a NumPy array, a float or a dict of them: the model saves to a small skops
file that loads with an explicit list of trusted types (``length_model_io``).
"""

from __future__ import annotations

import functools
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

from goodput.profiler.prompt_features import (
    clip_text,
    prompt_cue_matrix,
    prompt_cues,
    prompt_fold,
)

__all__ = ["FORMAT_VERSION", "LengthPredictor", "as_requests"]

# What a saved model's arrays mean; a file of another version is refused, not misread.
# 1: verbosity-only calibration (2 parameters per model); 2: per-model cue correction.
FORMAT_VERSION = 2

FloatArray = npt.NDArray[np.float64]
# Levels at which the standardised residual distribution is stored: any quantile in between is
# interpolated, so callers may ask for p50, p90, p99 or anything else without refitting.
_LEVELS = np.linspace(0.01, 0.99, 99)
# Stage-one ridge on a model's cue weights (in units of its residual variance per observation),
# and the least prior variance a cue weight keeps. Set by hand; on the ranking benchmark a
# floor of 1e-4 and 1e-3 score alike (docs/profiler-length.md).
_CUE_RIDGE = 10.0
_CUE_PRIOR_FLOOR = 1e-3
# Derived state rebuilt on demand, never saved.
_CACHES = ("_calibration_cache", "_offsets_cache", "_prior_cache")


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
    correction:
        Learn a per-model correction on the prompt's cues beside its verbosity; ``False`` is the
        verbosity-only calibration of earlier versions (an affine map of ``z`` per model, which
        cannot change a model's ranking).
    max_output_tokens:
        Largest output length an observation may claim (the longest context served); larger
        ones are clipped to it.
    outlier_sigma:
        An observation's residual is clipped to this many noise deviations before it updates the
        model's posterior.

    Attributes
    ----------
    coef_, intercept_:
        The prompt model's ridge weights on ``[word n-grams, char n-grams, cues]``.
    word_idf_, char_idf_, cue_mean_, cue_scale_:
        Feature scalings fixed at the first fit.
    prior_mean_, prior_cov_, prior_noise_:
        The population prior of a model's ``[slope, offset, cue weights...]`` and noise.
    verbosity_:
        Per served model, its posterior as one flat array (precision, shift, counts).
    residual_quantiles_:
        Quantiles of standardised out-of-fold residuals at 1%..99%.
    format_version_:
        ``FORMAT_VERSION`` of the code that fitted it.
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
        correction: bool = True,
        max_output_tokens: int = 131072,
        outlier_sigma: float = 3.0,
    ) -> None:
        self.n_features = n_features
        self.alpha = alpha
        self.cue_weight = cue_weight
        self.max_chars = max_chars
        self.n_oof_folds = n_oof_folds
        self.prior_strength = prior_strength
        self.forgetting = forgetting
        self.warm_start = warm_start
        self.correction = correction
        self.max_output_tokens = max_output_tokens
        self.outlier_sigma = outlier_sigma

    # ----------------------------------------------------------------------------------------
    # Features

    def _ngram_blocks(self, prompts: Sequence[str]) -> list[sp.csr_matrix]:
        words, chars = _vectorizers(self.n_features)
        texts = [clip_text(p, self.max_chars) for p in prompts]
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
        """Fit the prompt model on consensus lengths, then each model's verbosity and correction."""
        prompts, models = as_requests(X)
        y_log = np.log1p(np.asarray(y, dtype=np.float64))
        if len(prompts) != y_log.shape[0]:
            raise ValueError(f"X has {len(prompts)} rows but y has {y_log.shape[0]}")
        if y_log.shape[0] < 2:
            raise ValueError("need at least two responses to fit")
        if np.any(~np.isfinite(y_log)) or np.any(y_log < 0):
            raise ValueError("y must hold non-negative token counts")
        y_log = np.minimum(y_log, math.log1p(self.max_output_tokens))
        previous = self._previous_state() if self.warm_start else None

        uniq, prompt_idx = np.unique(np.asarray(prompts, dtype=object), return_inverse=True)
        uniq_prompts = [str(p) for p in uniq]
        model_names = sorted(set(models))
        model_idx = np.searchsorted(np.asarray(model_names), np.asarray(models))
        blocks = self._ngram_blocks(uniq_prompts)
        cues = prompt_cue_matrix(uniq_prompts, self.max_chars)

        if previous is None:
            z, weight = _consensus(
                y_log, prompt_idx, model_idx, len(uniq_prompts), len(model_names)
            )
        else:
            # Reuse each model's current calibration to map its responses to the prompt's scale.
            phi = self._phi((cues - previous["cue_mean"]) / previous["cue_scale"])[prompt_idx]
            means = np.array([self._posterior_mean(m) for m in model_names])[model_idx]
            rest = np.einsum("ij,ij->i", phi, means[:, 2:]) if phi.shape[1] else 0.0
            per_row = (y_log - means[:, 1] - rest) / np.maximum(means[:, 0], 0.05)
            weight = np.bincount(prompt_idx, minlength=len(uniq_prompts)).astype(np.float64)
            z = np.bincount(prompt_idx, weights=per_row, minlength=len(uniq_prompts)) / weight

        self._fit_scalers(blocks, cues, previous)
        design = self._design(blocks, cues)
        coef, intercept = self._fit_ridge(design, z, weight, previous)

        # Out-of-fold prompt scores: the per-model calibration and the residual spread must be
        # learned from predictions on prompts the ridge did not see, or both come out too tight.
        folds = np.array([prompt_fold(p, self.n_oof_folds) for p in uniq_prompts])
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
        self.format_version_ = FORMAT_VERSION
        phi = self._phi((cues - self.cue_mean_) / self.cue_scale_)
        rows = np.column_stack([z_oof, np.ones(len(uniq_prompts)), phi])[prompt_idx]
        self._fit_verbosity(rows, y_log, models, model_names, previous)
        return self

    def _phi(self, standardised_cues: FloatArray) -> FloatArray:
        """The correction's features: the standardised cues, or none without a correction."""
        return standardised_cues if self.correction else standardised_cues[:, :0]

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
        rows: FloatArray,
        y_log: FloatArray,
        models: list[str],
        model_names: list[str],
        previous: dict[str, Any] | None,
    ) -> None:
        """Per model, a posterior over ``[slope, offset, cue weights]``; and the population prior.

        The prior is empirical Bayes: the known models' mean, and their spread less what each
        model's own estimate is uncertain by (else the prior would let one new model's handful
        of answers move its cue weights as far as estimation noise moved them in training).
        """
        model_arr = np.asarray(models)
        dim = rows.shape[1]
        # Ridge on the cue weights only: the stage-one estimate of each model on its own.
        penalty = np.diag(np.r_[1e-6, 1e-6, np.full(dim - 2, _CUE_RIDGE)])
        fits: dict[str, tuple[FloatArray, float, int, FloatArray]] = {}
        for name in model_names:
            X = rows[model_arr == name]
            t = y_log[model_arr == name]
            gram = X.T @ X + penalty
            coef = np.linalg.solve(gram, X.T @ t)
            if X.shape[0] < 3 or not np.all(np.isfinite(coef)):
                coef = np.r_[1.0, float(np.mean(t - X[:, 0])), np.zeros(dim - 2)]
            resid = t - X @ coef
            noise = float(np.sqrt(np.mean(resid**2)) + 1e-3)
            fits[name] = (coef, noise, X.shape[0], noise**2 * np.linalg.inv(gram))

        fresh = previous is None or getattr(self, "prior_mean_", np.zeros(0)).shape != (dim,)
        if fresh:
            coefs = np.array([c for c, _, _, _ in fits.values()])
            self.prior_mean_ = coefs.mean(axis=0)
            # A floor keeps the prior honest about models unlike any seen in training.
            floor = np.diag(np.r_[0.02, 0.05, np.full(dim - 2, _CUE_PRIOR_FLOOR)])
            if len(coefs) > 2:
                spread = np.cov(coefs.T).reshape(dim, dim)
                sampling = np.mean([v for _, _, _, v in fits.values()], axis=0)
                cov = np.zeros((dim, dim))
                cov[:2, :2] = spread[:2, :2]
                # Cue weights: the spread beyond estimation noise, kept as a full matrix, since
                # cues fire together and models differ along combinations of them.
                values, vectors = np.linalg.eigh(spread[2:, 2:] - sampling[2:, 2:])
                cov[2:, 2:] = (vectors * np.maximum(values, 0.0)) @ vectors.T
                cov += floor
            else:
                cov = np.diag(np.r_[0.1, 0.25, np.full(dim - 2, 1e-3)]) + floor
            self.prior_cov_ = cov
            self.prior_noise_ = float(np.median([s for _, s, _, _ in fits.values()]))

        self._clear_caches()
        # Standardised residuals pooled over models give the quantile shape.
        std_resid = np.concatenate(
            [
                (y_log[model_arr == n] - rows[model_arr == n] @ c) / s
                for n, (c, s, _, _) in fits.items()
            ]
        )
        self.residual_quantiles_ = np.quantile(std_resid, _LEVELS)

        # Each model's evidence as a Gaussian in natural parameters: precision and shift.
        prior_precision, prior_shift = self._prior_natural()
        kept = {} if previous is None or fresh else dict(getattr(self, "verbosity_", {}))
        self.verbosity_ = kept
        for name, (_, noise, n, _) in fits.items():
            X = rows[model_arr == name]
            precision = prior_precision + X.T @ X / noise**2
            shift = prior_shift + X.T @ y_log[model_arr == name] / noise**2
            self.verbosity_[name] = _pack(precision, shift, n, noise**2 * n, n)

    def _prior_natural(self) -> tuple[FloatArray, FloatArray]:
        """The prior's precision and shift (natural parameters), computed once per fit."""
        cached: tuple[FloatArray, FloatArray] | None = self.__dict__.get("_prior_cache")
        if cached is None:
            precision = np.asarray(np.linalg.inv(self.prior_cov_), dtype=np.float64)
            cached = (precision, np.asarray(precision @ self.prior_mean_, dtype=np.float64))
            self.__dict__["_prior_cache"] = cached
        return cached

    def _clear_caches(self) -> None:
        for name in _CACHES:
            self.__dict__.pop(name, None)

    def partial_fit(self, X: Any, y: Any) -> Self:
        """Update each model's calibration from observed responses; the prompt model is unchanged.

        Cheap (a rank-one update per response), so a gateway can call it for every finished
        request. Unusable observations (NaN, infinite, negative) are skipped.
        """
        check_is_fitted(self, "coef_")
        prompts, models = as_requests(X)
        tokens = np.asarray(y, dtype=np.float64).reshape(-1)
        if tokens.shape[0] != len(prompts):
            raise ValueError(f"X has {len(prompts)} rows but y has {tokens.shape[0]}")
        rows = self._rows(prompts)
        for row, value, name in zip(rows, tokens, models, strict=True):
            y_log = self._usable_log(float(value))
            if y_log is not None:
                self._observe(name, row, y_log)
        return self

    def _usable_log(self, tokens: float) -> float | None:
        """``log1p`` of a length clipped to ``max_output_tokens``; None if it is not a length."""
        if not math.isfinite(tokens) or tokens < 0:
            return None
        return math.log1p(min(tokens, float(self.max_output_tokens)))

    def _observe(self, model: str, row: FloatArray, y_log: float) -> None:
        precision, shift, n, sq, n_sq = self._state(model)
        noise2 = self._noise2(n_sq, sq)
        mean, _ = self._cached_calibration(model)
        predicted = float(row @ mean)
        limit = self.outlier_sigma * math.sqrt(noise2)
        resid = min(max(y_log - predicted, -limit), limit)
        lam = self.forgetting
        prior_precision, prior_shift = self._prior_natural()
        # Forgetting decays the evidence, never the prior, so the state cannot drift to nothing.
        precision = (
            prior_precision + lam * (precision - prior_precision) + np.outer(row, row) / noise2
        )
        shift = prior_shift + lam * (shift - prior_shift) + row * (predicted + resid) / noise2
        self.verbosity_[model] = _pack(precision, shift, n + 1, lam * sq + resid**2, lam * n_sq + 1)
        self.__dict__.get("_calibration_cache", {}).pop(model, None)

    def _state(self, model: str) -> tuple[FloatArray, FloatArray, float, float, float]:
        packed = self.verbosity_.get(model)
        if packed is None:
            precision, shift = self._prior_natural()
            return precision, shift, 0.0, 0.0, 0.0
        dim = self.prior_mean_.shape[0]
        return (
            packed[: dim * dim].reshape(dim, dim),
            packed[dim * dim : dim * dim + dim].copy(),
            float(packed[-3]),
            float(packed[-2]),
            float(packed[-1]),
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
        return self._rows(prompts)[:, 0]

    def _rows(self, prompts: Sequence[str]) -> FloatArray:
        """Each prompt's ``[z, 1, correction features]``, what a model's calibration weighs."""
        check_is_fitted(self, "coef_")
        dim = self.prior_mean_.shape[0]
        if not prompts:
            return np.zeros((0, dim))
        cues = prompt_cue_matrix(list(prompts), self.max_chars)
        z = self._design(self._ngram_blocks(prompts), cues) @ self.coef_ + self.intercept_
        phi = self._phi((cues - self.cue_mean_) / self.cue_scale_)
        return np.column_stack([z, np.ones(len(prompts)), phi]).astype(np.float64)

    def verbosity(self, model: str) -> tuple[float, float, float]:
        """``(slope, offset, noise)`` of ``model`` in log tokens; the population prior if unseen."""
        check_is_fitted(self, "coef_")
        mean, noise = self._cached_calibration(model)
        return float(mean[0]), float(mean[1]), noise

    def _quantile_offsets(self, quantiles: Iterable[float]) -> FloatArray:
        qs = np.asarray(list(quantiles), dtype=np.float64)
        if np.any((qs <= 0) | (qs >= 1)):
            raise ValueError("quantiles must lie strictly between 0 and 1")
        return np.asarray(np.interp(qs, _LEVELS, self.residual_quantiles_), dtype=np.float64)

    def predict_quantiles(self, X: Any, quantiles: Sequence[float] = (0.5, 0.9)) -> FloatArray:
        """Output-token quantiles, one row per request and one column per quantile."""
        prompts, models = as_requests(X)
        rows = self._rows(prompts)
        offsets = self._quantile_offsets(quantiles)
        out = np.empty((len(prompts), offsets.shape[0]))
        for i, (row, name) in enumerate(zip(rows, models, strict=True)):
            mean, cov, noise = self._calibration(name)
            out[i] = np.expm1(float(row @ mean) + offsets * self._spread(row, cov, noise))
        return np.maximum(out, 1.0)

    def predict(self, X: Any) -> FloatArray:
        """Median output tokens."""
        return self.predict_quantiles(X, (0.5,))[:, 0]

    def predict_request(
        self, prompt: str, model: str, max_tokens: int | None = None
    ) -> tuple[float, float]:
        """``(p50, p90)`` output tokens of one request; the gateway's per-request call.

        Works on one row's indices and values directly (no sparse-matrix algebra), and caches
        each model's calibration, so a request costs about the time to hash its n-grams. Capped
        at ``max_tokens`` when the client set one (the engine stops there), and never below one
        token, whatever the cap.
        """
        row = self._request_row(prompt)
        mean, cov, noise = self._calibration(model)
        u50, u90 = self._request_offsets()
        mu = float(row @ mean)
        spread = self._spread(row, cov, noise)
        p50 = max(math.expm1(mu + u50 * spread), 1.0)
        p90 = max(math.expm1(mu + u90 * spread), p50)
        if max_tokens is not None:
            cap = max(float(max_tokens), 1.0)
            p50, p90 = min(p50, cap), min(p90, cap)
        return p50, p90

    def observe_request(self, prompt: str, model: str, output_tokens: float) -> None:
        """Learn from one finished request: ``partial_fit`` for a single row, at request speed.

        An unusable count (NaN, infinite, negative) is ignored.
        """
        y_log = self._usable_log(float(output_tokens))
        if y_log is not None:
            self._observe(model, self._request_row(prompt), y_log)

    def _request_row(self, prompt: str) -> FloatArray:
        """``_rows`` of one prompt, on the row's indices and values directly."""
        check_is_fitted(self, "coef_")
        text = clip_text(prompt, self.max_chars)
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
        z += self.cue_weight * float(cues @ self.coef_[start:])
        phi = cues if self.prior_mean_.shape[0] > 2 else cues[:0]
        return np.concatenate([[z, 1.0], phi])

    def _cached_calibration(self, model: str) -> tuple[FloatArray, float]:
        """The posterior mean of ``model``'s calibration and its noise, solved once per update."""
        mean, _, noise = self._calibration(model)
        return mean, noise

    def _calibration(self, model: str) -> tuple[FloatArray, FloatArray, float]:
        """Posterior mean and covariance of ``model``'s calibration, and its noise; cached."""
        cache: dict[str, tuple[FloatArray, FloatArray, float]] = self.__dict__.setdefault(
            "_calibration_cache", {}
        )
        hit = cache.get(model)
        if hit is None:
            precision, shift, _, sq, n_sq = self._state(model)
            cov = np.asarray(np.linalg.inv(precision), dtype=np.float64)
            mean = np.asarray(cov @ shift, dtype=np.float64)
            hit = cache[model] = (mean, cov, math.sqrt(self._noise2(n_sq, sq)))
        return hit

    def _spread(self, row: FloatArray, cov: FloatArray, noise: float) -> float:
        """Predictive deviation: the noise and what the model's calibration is unsure of, so an
        unseen model's quantiles are wider than a well-observed one's."""
        return math.sqrt(noise**2 + float(row @ cov @ row))

    def _request_offsets(self) -> tuple[float, float]:
        offsets = self.__dict__.get("_offsets_cache")
        if offsets is None:
            u50, u90 = self._quantile_offsets((0.5, 0.9))
            offsets = self.__dict__["_offsets_cache"] = (float(u50), float(u90))
        return offsets

    def __getstate__(self) -> dict[str, Any]:
        # Caches are derived: keep them out of saved files (and out of skops' type check).
        state = dict(super().__getstate__())
        for name in _CACHES:
            state.pop(name, None)
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
