"""The cascade's answer-quality predictor: estimator contract, what it learns from a synthetic
signal, safe model files, and the shipped model. Synthetic data: fast, no shared data needed."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from sklearn.base import clone
from sklearn.utils.estimator_checks import (
    check_get_params_invariance,
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
)

from goodput.profiler.length_model_io import UntrustedModelFile
from goodput.profiler.quality_model_io import (
    dumps_quality_model,
    load_default_quality_model,
    load_quality_model,
    loads_quality_model,
    save_quality_model,
)
from goodput.profiler.quality_predictor import REFERENCE_MODEL, QualityPredictor

EASY = ["Classify the sentiment of this tweet: {i} great day", "Is {i} a prime number?"]
HARD = ["Write a detailed essay about the history of {i} empires", "Compose a long story on {i}"]


def _verdicts(n: int = 60) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Two small models that win short tasks and lose long-form ones, and the reference."""
    rng = np.random.default_rng(0)
    X: list[tuple[str, str]] = []
    y: list[float] = []
    for i in range(n):
        for template, p_win in ((EASY[i % 2], 0.8), (HARD[i % 2], 0.1)):
            prompt = template.format(i=i)
            for model, shift in (("small-a", 0.0), ("small-b", -0.05)):
                X.append((prompt, model))
                y.append(float(rng.random() < p_win + shift))
            X.append((prompt, REFERENCE_MODEL))
            y.append(0.5)
    return X, np.asarray(y)


class Payload:
    """Stands for any type a hostile file might name to run code while loading."""


@pytest.fixture(scope="module")
def fitted() -> QualityPredictor:
    X, y = _verdicts()
    return QualityPredictor(n_features=2**10).fit(X, y)


def test_it_follows_scikit_learns_estimator_contract() -> None:
    check_no_attributes_set_in_init("QualityPredictor", QualityPredictor())
    check_parameters_default_constructible("QualityPredictor", QualityPredictor())
    check_get_params_invariance("QualityPredictor", QualityPredictor())
    assert clone(QualityPredictor(alpha=3.0)).get_params()["alpha"] == 3.0


def test_it_ranks_unseen_short_tasks_above_unseen_long_form_ones(fitted: QualityPredictor) -> None:
    easy = fitted.predict([("Classify the sentiment of this tweet: awful service", "small-a")])
    hard = fitted.predict([("Write a detailed essay about the history of Rome", "small-a")])
    assert easy[0] > 0.5 > hard[0]


def test_the_reference_is_even_with_itself_and_an_unknown_model_gets_the_mean(
    fitted: QualityPredictor,
) -> None:
    prompt = "Compose a long story on dragons"
    rates = fitted.predict_models(prompt, [REFERENCE_MODEL, "small-a", "small-b", "never-seen"])
    assert rates[0] == 0.5
    assert min(rates[1], rates[2]) <= rates[3] <= max(rates[1], rates[2])


def test_bad_verdicts_are_refused() -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        QualityPredictor().fit([("a", "m"), ("b", "m")], [0.0, 2.0])
    with pytest.raises(ValueError, match="other than the reference"):
        QualityPredictor().fit([("a", REFERENCE_MODEL)], [0.5])


def test_a_saved_model_predicts_alike_after_loading(
    fitted: QualityPredictor, tmp_path: Path
) -> None:
    path = tmp_path / "q.skops"
    save_quality_model(fitted, path)
    loaded = load_quality_model(path)
    X = [("Is 7 a prime number?", "small-b"), ("Write a long essay", "small-a")]
    assert np.allclose(loaded.predict(X), fitted.predict(X))


def test_files_that_could_run_code_or_do_not_fit_together_are_refused(
    fitted: QualityPredictor,
) -> None:
    with pytest.raises(UntrustedModelFile, match="not a skops"):
        loads_quality_model(b"\x80\x04pickled")
    with pytest.raises(UntrustedModelFile, match="untrusted types"):
        loads_quality_model(bytes(sio.dumps({"model": Payload()}, compression=zipfile.ZIP_STORED)))
    broken = clone(fitted)
    broken.__dict__.update(fitted.__dict__)
    broken.idf_ = fitted.idf_[:-1]
    with pytest.raises(UntrustedModelFile, match="inconsistent"):
        loads_quality_model(dumps_quality_model(broken))
    stale = clone(fitted)
    stale.__dict__.update({**fitted.__dict__, "format_version_": 0})
    with pytest.raises(UntrustedModelFile, match="format 0"):
        loads_quality_model(dumps_quality_model(stale))


def test_the_shipped_model_loads_and_knows_alpaca_evals_small_models() -> None:
    model = load_default_quality_model()
    assert {"Mistral-7B-Instruct-v0.2", "gemma-7b-it"} <= set(model.calibration_)
    rates = model.predict_models("What is the capital of France?", ["gemma-7b-it"])
    assert 0.0 < rates[0] < 1.0
