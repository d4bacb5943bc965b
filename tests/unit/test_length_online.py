"""The length predictor's per-model correction and its defences against bad input: what a new
model's answers teach it beyond a scale, and what a hostile prompt or a broken engine's usage
numbers cannot do to it. Synthetic data: fast, no shared data needed."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy.stats import kendalltau

from goodput.profiler.length_predictor import LengthPredictor
from goodput.profiler.prompt_features import prompt_cues
from goodput.serving.length_estimate import LengthPrediction, OnlineLengthEstimator

CLASSIFY = "Classify the sentiment of this review of the {} as positive or negative."
REWRITE = "Rewrite this paragraph about the {} and correct its grammar:\n\nThe {} are very nice."
ESSAY = "Write a detailed essay about the history of the {}."
LIST = "List three facts about the {}."
TEMPLATES = {CLASSIFY: 10.0, REWRITE: 40.0, ESSAY: 500.0, LIST: 60.0}
TOPICS = [
    "harbor",
    "lantern",
    "glacier",
    "violin",
    "castle",
    "tiger",
    "river",
    "coffee",
    "rocket",
    "chess",
    "garden",
    "bakery",
]
# A model that rewrites at essay length, unlike the plain ones: what an instruction-tuned model
# that pads edits with explanations does.
EDITOR = {**TEMPLATES, REWRITE: 900.0}


def responses(
    models: dict[str, dict[str, float]], topics: list[str], seed: int
) -> tuple[list[tuple[str, str]], list[int]]:
    rng = np.random.default_rng(seed)
    X, y = [], []
    for topic in topics:
        for template in TEMPLATES:
            for model, lengths in models.items():
                X.append((template.format(topic, topic), model))
                y.append(max(1, round(lengths[template] * math.exp(rng.normal(0, 0.3)))))
    return X, y


@pytest.fixture(scope="module")
def population() -> tuple[list[tuple[str, str]], list[int]]:
    plain = {f"plain-{i}": {t: v * (1 + i / 4) for t, v in TEMPLATES.items()} for i in range(4)}
    return responses({**plain, "editor-a": EDITOR, "editor-b": EDITOR}, TOPICS, seed=0)


def _ranking(model: LengthPredictor, name: str) -> float:
    probe = [t.format(topic, topic) for topic in ("owl", "canal") for t in TEMPLATES]
    truth = [EDITOR[t] for _ in ("owl", "canal") for t in TEMPLATES]
    predicted = [model.predict_request(p, name)[0] for p in probe]
    return float(kendalltau(predicted, truth).statistic)


def test_a_new_models_answers_change_its_ranking_not_only_its_scale(
    population: tuple[list[tuple[str, str]], list[int]],
) -> None:
    """A third editor-like model arrives: after its first answers, the correction ranks its
    rewrites where it writes them; the verbosity-only calibration cannot reorder prompts."""
    X_new, y_new = responses({"editor-c": EDITOR}, TOPICS[:8], seed=1)
    taus = {}
    for correction in (True, False):
        model = LengthPredictor(n_features=2**10, correction=correction).fit(*population)
        cold = _ranking(model, "editor-c")
        model.partial_fit(X_new, y_new)
        taus[correction] = (cold, _ranking(model, "editor-c"))
    assert taus[True][1] > taus[True][0] + 0.2
    assert taus[True][1] > taus[False][1] + 0.2


def test_hostile_text_is_predicted_not_raised(
    population: tuple[list[tuple[str, str]], list[int]],
) -> None:
    model = LengthPredictor(n_features=2**10).fit(*population)
    # A lone surrogate is valid JSON ("\ud800") but not encodable text.
    for prompt in ("\ud800", "Write an essay \udfff about rain", "", "\x00" * 10):
        p50, p90 = model.predict_request(prompt, "plain-0")
        assert 1.0 <= p50 <= p90 < 1e6
    assert np.isfinite(model.predict_quantiles([("\ud800 list", "plain-0")])).all()
    # And a surrogate in training data does not stop a refit.
    LengthPredictor(n_features=2**10).fit([("a \ud800", "m"), ("b", "m"), ("c", "n")], [1, 2, 3])


def test_caps_at_or_below_zero_predict_one_token(
    population: tuple[list[tuple[str, str]], list[int]],
) -> None:
    model = LengthPredictor(n_features=2**10).fit(*population)
    for cap in (0, -5):
        assert model.predict_request(ESSAY.format("owl"), "plain-0", cap) == (1.0, 1.0)
        assert LengthPrediction(200.0, 900.0).clipped(cap) == LengthPrediction(1.0, 1.0)


def test_untrusted_observations_cannot_break_or_drag_a_model(
    population: tuple[list[tuple[str, str]], list[int]],
) -> None:
    model = LengthPredictor(n_features=2**10).fit(*population)
    prompt = ESSAY.format("owl")
    before = model.predict_request(prompt, "plain-0")
    for bad in (math.nan, math.inf, -math.inf, -3.0):
        model.observe_request(prompt, "plain-0", bad)
    model.partial_fit([(prompt, "plain-0")] * 3, [math.nan, math.inf, -1])
    assert model.predict_request(prompt, "plain-0") == before
    # One absurd count moves the median by a bounded factor, not from hundreds to millions.
    model.observe_request(prompt, "plain-0", 1e9)
    after = model.predict_request(prompt, "plain-0")[0]
    assert math.isfinite(after) and after < 2 * before[0]
    # A new model whose first answer is absurd stays usable.
    model.observe_request(prompt, "fresh", 1e12)
    assert model.predict_request(prompt, "fresh")[0] < 5 * model.predict_request(prompt, "x")[0]


def test_the_band_estimator_ignores_impossible_counts() -> None:
    est = OnlineLengthEstimator(min_band_samples=1, refresh_every=1)
    for tokens in (100, -5, 10**12, 100):
        est.observe("p", 10, tokens)
    assert est.predict("p", 10, None) == LengthPrediction(100.0, 100.0)


def test_trailing_whitespace_costs_no_per_character_python(
    population: tuple[list[tuple[str, str]], list[int]],
) -> None:
    model = LengthPredictor(n_features=2**10).fit(*population)
    prompt = "Write a poem about rain."
    padded = prompt + " " * 200_000
    np.testing.assert_array_equal(prompt_cues(padded), prompt_cues(prompt))
    cpu = []
    for _ in range(5):
        started = time.thread_time()
        model.predict_request(padded, "plain-0")
        cpu.append(time.thread_time() - started)
    # A character loop over the padding cost ~10 ms; a C-speed strip costs well under 1.
    assert sorted(cpu)[2] < 0.003
