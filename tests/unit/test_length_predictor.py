"""The output-length predictor: estimator contract, quantiles, determinism, online learning,
safe model files, and the evaluation metrics. Synthetic data: fast, no shared data needed."""

from __future__ import annotations

import json
import math
import zipfile
from pathlib import Path

import numpy as np
import pytest
import skops.io as sio
from sklearn.base import clone
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer
from sklearn.utils.estimator_checks import (
    check_get_params_invariance,
    check_no_attributes_set_in_init,
    check_parameters_default_constructible,
    check_set_params,
)

from goodput.profiler.datasets import AlpacaEvalSet
from goodput.profiler.length_baselines import (
    GlobalMeanLength,
    InputLengthHistogram,
    PerModelMeanLength,
)
from goodput.profiler.length_eval import (
    ORACLE,
    REFERENCE,
    evaluate,
    length_metrics,
    ranking_benchmark,
)
from goodput.profiler.length_model_io import (
    UntrustedModelFile,
    default_model_path,
    dumps_length_model,
    load_default_length_model,
    load_length_model,
    loads_length_model,
    save_length_model,
)
from goodput.profiler.length_predictor import LengthPredictor
from goodput.profiler.online import OnlineLengthLearner, read_request_log
from goodput.profiler.prompt_features import FEATURE_NAMES, prompt_cues

# Prompts whose answers are short or long for a reason a reader can see: labels vs essays.
SHORT = [
    "Classify the sentiment of this tweet as positive or negative: {}",
    "What is the capital of {}? Answer in one word.",
    "Rewrite the sentence and correct the spelling: {}",
    "Categorize the product {} into one of: Electronics, Home, Toys.",
]
LONG = [
    "Write a detailed essay about the history of {} with at least five sections.",
    "Explain step by step how to build a {} and list the tools needed.",
    "Write a story about a {} who travels the world, with dialogue between characters.",
    "Create a comprehensive business plan for a {} startup including marketing strategy.",
]
TOPICS = [
    "France",
    "jazz",
    "robot",
    "bakery",
    "Kenya",
    "chess",
    "rocket",
    "garden",
    "violin",
    "river",
    "castle",
    "coffee",
    "glacier",
    "tiger",
    "harbor",
    "lantern",
]
MODELS = {"terse-7b": 0.5, "chatty-70b": 2.0, "plain-13b": 1.0}


def synthetic(
    seed: int = 0, models: dict[str, float] = MODELS
) -> tuple[list[tuple[str, str]], np.ndarray]:
    """Requests where long-form prompts get ~20x more tokens, scaled by each model's verbosity."""
    rng = np.random.default_rng(seed)
    X: list[tuple[str, str]] = []
    y: list[float] = []
    for topic in TOPICS:
        for templates, base in ((SHORT, 12.0), (LONG, 400.0)):
            for template in templates:
                for model, scale in models.items():
                    X.append((template.format(topic), model))
                    y.append(max(1, round(base * scale * math.exp(rng.normal(0, 0.25)))))
    return X, np.asarray(y)


@pytest.fixture(scope="module")
def fitted() -> LengthPredictor:
    X, y = synthetic()
    return LengthPredictor(n_features=2**10).fit(X, y)


def test_sklearn_estimator_contract() -> None:
    name = LengthPredictor.__name__
    check_no_attributes_set_in_init(name, LengthPredictor())
    check_parameters_default_constructible(name, LengthPredictor())
    check_get_params_invariance(name, LengthPredictor())
    check_set_params(name, LengthPredictor())
    est = LengthPredictor(alpha=3.0, n_features=2**10)
    twin = clone(est)
    assert twin.get_params() == est.get_params() and twin is not est
    assert not hasattr(twin, "coef_")


def test_works_as_the_last_step_of_a_pipeline() -> None:
    X, y = synthetic()
    # A pipeline step that rewrites prompts (here: strips whitespace) before the predictor.
    strip = FunctionTransformer(
        lambda rows: np.array([(p.strip(), m) for p, m in rows], dtype=object)
    )
    pipe = Pipeline([("clean", strip), ("length", LengthPredictor(n_features=2**10))])
    pipe.fit(np.array(X, dtype=object), y)
    pred = pipe.predict(np.array(X[:5], dtype=object))
    assert pred.shape == (5,) and np.all(pred >= 1)


def test_ranks_long_form_prompts_above_labels_and_learns_verbosity(
    fitted: LengthPredictor,
) -> None:
    unseen_topic = "volcano"  # not in training: generalisation through the task words
    short = fitted.predict([(SHORT[0].format(unseen_topic), "plain-13b")])[0]
    long = fitted.predict([(LONG[0].format(unseen_topic), "plain-13b")])[0]
    assert long > 5 * short
    terse = fitted.predict([(LONG[1].format(unseen_topic), "terse-7b")])[0]
    chatty = fitted.predict([(LONG[1].format(unseen_topic), "chatty-70b")])[0]
    assert chatty > 2.5 * terse


def test_quantiles_are_ordered_and_match_the_fast_path(fitted: LengthPredictor) -> None:
    X = [(SHORT[1].format("Peru"), "terse-7b"), (LONG[2].format("owl"), "unseen-model")]
    q = fitted.predict_quantiles(X, (0.1, 0.5, 0.9, 0.99))
    assert np.all(np.diff(q, axis=1) >= 0)
    for (prompt, model), row in zip(X, q, strict=True):
        p50, p90 = fitted.predict_request(prompt, model)
        assert p90 >= p50 >= 1
        assert p50 == pytest.approx(row[1]) and p90 == pytest.approx(row[2])
    p50, p90 = fitted.predict_request(LONG[0].format("owl"), "chatty-70b", max_tokens=64)
    assert p50 <= 64 and p90 <= 64


def test_p90_covers_about_nine_in_ten_on_fresh_noise(fitted: LengthPredictor) -> None:
    X, y = synthetic(seed=1)  # same prompts, new noise: coverage is what the quantiles promise
    p90 = fitted.predict_quantiles(X, (0.9,))[:, 0]
    assert 0.75 <= float(np.mean(y <= p90)) <= 0.99


def test_fit_is_deterministic() -> None:
    X, y = synthetic()
    a = LengthPredictor(n_features=2**10).fit(X, y)
    b = LengthPredictor(n_features=2**10).fit(X, y)
    probe = [(LONG[3].format("sushi"), "terse-7b"), (SHORT[2].format("teh cat"), "new")]
    np.testing.assert_array_equal(a.predict_quantiles(probe), b.predict_quantiles(probe))
    # Row order changes only the iterative solver's rounding: folds and prompts are by content.
    c = LengthPredictor(n_features=2**10).fit(list(reversed(X)), y[::-1])
    np.testing.assert_allclose(a.predict_quantiles(probe), c.predict_quantiles(probe), rtol=1e-5)


def test_online_updates_move_an_unseen_models_verbosity_toward_its_data(
    fitted: LengthPredictor,
) -> None:
    model = clone(fitted).fit(*synthetic())
    prompt = LONG[0].format("volcano")
    cold = model.predict_request(prompt, "huge-verbose")[0]
    cold_offset = model.verbosity("huge-verbose")[1]
    X, y = synthetic(seed=2, models={"huge-verbose": 6.0})
    for (p, m), tokens in list(zip(X, y, strict=True))[:40]:
        model.observe_request(p, m, int(tokens))
    warm = model.predict_request(prompt, "huge-verbose")[0]
    assert model.verbosity("huge-verbose")[1] > cold_offset
    truth = 400.0 * 6.0
    assert abs(math.log(warm / truth)) < 0.5 * abs(math.log(cold / truth))


def test_learner_reads_the_gateway_log_skips_truncated_and_refits(
    tmp_path: Path, fitted: LengthPredictor
) -> None:
    X, y = synthetic(seed=3, models={"pod-model": 3.0})
    log = tmp_path / "requests.jsonl"
    with log.open("w") as f:
        for i, ((prompt, model), tokens) in enumerate(zip(X, y, strict=True)):
            record = {
                "ts": 1.7e9 + i,
                "deployment": "d",
                "model": model,
                "request_id": str(i),
                "prompt": prompt,
                "prompt_tokens": 20,
                "max_tokens": None,
                "predicted_p50": 100.0,
                "predicted_p90": 300.0,
                "output_tokens": int(tokens),
                "finish_reason": "stop",
            }
            f.write(json.dumps(record) + "\n")
        f.write("not json\n")
        f.write(json.dumps({**record, "finish_reason": "length", "output_tokens": 5}) + "\n")
    before = clone(fitted).fit(*synthetic())
    learner = OnlineLengthLearner(before, refit_every=64, min_prompts=16)
    summary = learner.consume(read_request_log(log.with_name("missing.1"), log))
    assert summary.used == len(X) and summary.malformed == 1 and summary.truncated == 1
    assert summary.refits == 2 and learner.predictor is not before
    after = learner.predictor.predict_request(LONG[1].format("volcano"), "pod-model")[0]
    assert abs(math.log(after / 1200.0)) < 0.5


def test_model_file_round_trips(tmp_path: Path, fitted: LengthPredictor) -> None:
    path = tmp_path / "m.skops"
    save_length_model(fitted, path)
    loaded = load_length_model(path)
    probe = [(LONG[0].format("owl"), "chatty-70b")]
    np.testing.assert_allclose(loaded.predict_quantiles(probe), fitted.predict_quantiles(probe))


class Payload:
    """A type nobody trusted: loading a file that holds it must fail before it is built."""

    def __init__(self) -> None:
        self.note = "would run code on load if this were a pickle"


def test_loading_refuses_untrusted_types(tmp_path: Path, fitted: LengthPredictor) -> None:
    hostile = sio.dumps({"model": Payload()}, compression=zipfile.ZIP_DEFLATED)
    with pytest.raises(UntrustedModelFile, match="untrusted types"):
        loads_length_model(hostile)
    # A trusted type holding something untrusted is refused too.
    fitted.__dict__["extra_"] = Payload()
    try:
        with pytest.raises(UntrustedModelFile, match="Payload"):
            loads_length_model(dumps_length_model(fitted))
    finally:
        del fitted.__dict__["extra_"]
    with pytest.raises(UntrustedModelFile):
        loads_length_model(b"\x80\x04K\x01.")  # a pickle is not a model file
    # Well-formed but not a length model.
    with pytest.raises(UntrustedModelFile, match="expected a LengthPredictor"):
        loads_length_model(sio.dumps({"a": np.zeros(3)}))


def test_shipped_default_model_is_small_and_loads() -> None:
    path = default_model_path()
    assert path.stat().st_size < 2 * 1024 * 1024
    model = load_default_length_model()
    essay, label = (
        model.predict_request(p, "Mistral-7B-Instruct-v0.2")[0]
        for p in (
            "Write a 1500 word essay on the causes of the First World War.",
            "Classify the sentiment of this review as positive or negative: great phone!",
        )
    )
    assert essay > 3 * label


def test_baselines_share_the_interface() -> None:
    X, y = synthetic()
    for est in (GlobalMeanLength(), PerModelMeanLength(), InputLengthHistogram(min_count=2)):
        q = est.fit(X, y).predict_quantiles(X[:3], (0.5, 0.9))
        assert q.shape == (3, 2)
        est.partial_fit([("hello", "brand-new")], [7])
    per_model = PerModelMeanLength().fit(X, y)
    means = per_model.predict([(X[0][0], m) for m in MODELS])
    assert means[list(MODELS).index("chatty-70b")] > means[list(MODELS).index("terse-7b")]


def test_metrics_on_a_tiny_case() -> None:
    actual = [10, 20, 30, 40]
    m = length_metrics(actual, p50=[12, 18, 35, 33], p90=[15, 25, 29, 60])
    # Pairs: (1,2) c, (1,3) c, (1,4) c, (2,3) c, (2,4) c, (3,4) d -> tau = (5 - 1) / 6.
    assert m.kendall_tau == pytest.approx(4 / 6)
    assert m.spearman_rho == pytest.approx(0.8)
    assert m.mae_tokens == pytest.approx((2 + 2 + 5 + 7) / 4)
    assert m.p90_coverage == pytest.approx(0.75)
    constant = length_metrics(actual, p50=[25] * 4, p90=[50] * 4)
    assert constant.kendall_tau is None and constant.p90_coverage == 1.0


def test_prompt_cues_read_requested_sizes() -> None:
    cues = dict(
        zip(FEATURE_NAMES, prompt_cues("Write a 2000 word essay in 5 paragraphs."), strict=True)
    )
    assert cues["log_requested_words"] == pytest.approx(math.log1p(2000))
    assert cues["log_requested_paragraphs"] == pytest.approx(math.log1p(5))
    assert cues["cue_long_form"] == 1.0 and cues["cue_classify"] == 0.0


def _synthetic_set() -> AlpacaEvalSet:
    X, y = synthetic(
        seed=4, models={"terse-7b": 0.5, "chatty-70b": 2.0, "plain-13b": 1.0, "other-8b": 1.3}
    )
    prompts = sorted({p for p, _ in X})
    pid = {p: i for i, p in enumerate(prompts)}
    return AlpacaEvalSet(
        prompt_ids=np.array([pid[p] for p, _ in X], dtype=np.int64),
        models=tuple(m for _, m in X),
        prompts=tuple(p for p, _ in X),
        datasets=tuple("synthetic" for _ in X),
        prompt_tokens=np.array([len(p.split()) for p, _ in X], dtype=np.int64),
        output_tokens=y.astype(np.int64),
        tokenizer="synthetic",
    )


def test_evaluation_scores_every_contender_in_both_scenarios() -> None:
    data = _synthetic_set()
    contenders = {
        "goodput": lambda: LengthPredictor(n_features=2**10),
        "per-model-mean": PerModelMeanLength,
    }
    report = evaluate(data, contenders, test_fraction=0.3, calibration=8)
    assert set(report.held_out_prompts) == {"goodput", "per-model-mean", REFERENCE}
    assert set(report.held_out_models) == {
        "goodput (cold)",
        "goodput (+8 obs)",
        "per-model-mean (cold)",
        "per-model-mean (+8 obs)",
    }
    ours = report.held_out_prompts["goodput"]
    assert set(ours.per_model) == set(data.model_names)
    # Task words decide length here, so ranking is easy and the constant baseline cannot rank.
    assert ours.mean.kendall_tau is not None and ours.mean.kendall_tau > 0.5
    assert report.held_out_prompts["per-model-mean"].mean.kendall_tau is None
    # Observing the unseen model's answers fixes its scale: the error drops.
    cold = report.held_out_models["goodput (cold)"].mean.mae_tokens
    warm = report.held_out_models["goodput (+8 obs)"].mean.mae_tokens
    assert cold is not None and warm is not None and warm < cold
    as_json = json.loads(json.dumps(report.to_json()))
    assert as_json["held_out_prompts"]["goodput"]["per_model"]["chatty-70b"]["n"] > 0


def test_ranking_benchmark_holds_out_prompts_and_models_and_scores_a_learning_curve() -> None:
    data = _synthetic_set()
    contenders = {
        "goodput": lambda: LengthPredictor(n_features=2**10),
        "per-model-mean": PerModelMeanLength,
    }
    report = ranking_benchmark(
        data, contenders, test_fraction=0.3, n_held_out_models=1, observations=(0, 8)
    )
    (new_model,) = report.held_out_models
    # Known models are scored without the new one; the new one only on prompts it never showed.
    assert new_model not in report.known_models["goodput"].per_model
    assert set(report.new_models["goodput"][8].per_model) == {new_model}
    summary = json.loads(json.dumps(report.to_json()))["summary"]
    assert set(summary) == {"goodput", "per-model-mean", ORACLE}
    assert summary["goodput"]["tau_known_models"] > 0.5
    assert summary["per-model-mean"]["tau_known_models"] is None
    # Eight answers fix the new model's scale: its error drops.
    assert summary["goodput"]["mae_new_models_8obs"] < summary["goodput"]["mae_new_models_0obs"]


def test_cli_update_learns_a_new_models_verbosity_from_a_log(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from goodput.profiler.cli import profile

    X, y = synthetic(seed=5, models={"pod-model": 4.0})
    log = tmp_path / "requests.jsonl"
    log.write_text(
        "".join(
            json.dumps({"model": m, "prompt": p, "output_tokens": int(t), "finish_reason": "stop"})
            + "\n"
            for (p, m), t in zip(X, y, strict=True)
        )
    )
    out = tmp_path / "tuned.skops"
    runner = CliRunner()
    result = runner.invoke(profile, ["update", "--log", str(log), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"{len(X)} requests learned from" in result.output
    tuned, shipped = load_length_model(out), load_default_length_model()
    prompt = LONG[0].format("volcano")
    assert (
        tuned.predict_request(prompt, "pod-model")[0]
        > shipped.predict_request(prompt, "pod-model")[0]
    )
    query = runner.invoke(
        profile, ["length", prompt, "--model", "pod-model", "--model-file", str(out)]
    )
    assert query.exit_code == 0 and query.output.startswith("p50 ")


def test_prompt_cues_ignore_surrounding_whitespace_and_bound_long_prompts() -> None:
    prompt = "Rewrite the email politely.\n\nHey, send the report now."
    np.testing.assert_array_equal(prompt_cues(f"  \n{prompt}\n\t "), prompt_cues(prompt))
    document = "Summarize this document.\n\n" + "lorem ipsum dolor sit amet " * 50_000
    cues = dict(zip(FEATURE_NAMES, prompt_cues(document), strict=True))
    # Sizes come from the whole document; the task words from its head.
    # Counted on the document's ends and scaled: close on the log scale, at a bounded cost.
    assert cues["log_input_words"] == pytest.approx(math.log1p(250_001), rel=1e-3)
    assert cues["head_edit"] == 0.0 and cues["cue_long_form"] == 0.0


def test_forgetting_follows_a_model_whose_verbosity_drifts() -> None:
    X, y = synthetic()
    before, after = (
        synthetic(seed=6, models={"drifty": 1.0}),
        synthetic(seed=7, models={"drifty": 4.0}),
    )
    offsets = {}
    for forgetting in (1.0, 0.9):
        model = LengthPredictor(n_features=2**10, forgetting=forgetting).fit(X, y)
        for (p, m), t in zip(*before, strict=True):  # a long stable history
            model.observe_request(p, m, int(t))
        for (p, m), t in list(zip(*after, strict=True))[:30]:  # then the model gets chattier
            model.observe_request(p, m, int(t))
        offsets[forgetting] = model.verbosity("drifty")[1]
    # log(4) ~ 1.39 higher is the truth; forgetting gets much closer to it.
    assert offsets[0.9] - offsets[1.0] > 0.4


def test_cli_eval_writes_report_and_plots_from_a_data_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import gzip

    from click.testing import CliRunner

    from goodput.profiler.cli import profile

    monkeypatch.setenv("GOODPUT_CACHE_DIR", str(tmp_path / "cache"))
    data = _synthetic_set()
    folder = tmp_path / "data" / "alpaca_eval"
    folder.mkdir(parents=True)
    seen: dict[int, str] = dict(zip(data.prompt_ids.tolist(), data.prompts, strict=True))
    (folder / "prompts.jsonl").write_text(
        "".join(
            json.dumps({"prompt_id": i, "dataset": "synthetic", "instruction": p}) + "\n"
            for i, p in seen.items()
        )
    )
    with gzip.open(folder / "outputs.jsonl.gz", "wt") as f:
        for pid, model, tokens in zip(
            data.prompt_ids, data.models, data.output_tokens, strict=True
        ):
            # An answer of about that many tokens: one short word per token.
            f.write(
                json.dumps(
                    {
                        "prompt_id": int(pid),
                        "model": model,
                        "output": " ".join(["ok"] * int(tokens)),
                    }
                )
                + "\n"
            )
    out = tmp_path / "report"
    result = CliRunner().invoke(
        profile,
        ["eval", "--data-dir", str(tmp_path / "data"), "--out-dir", str(out), "--calibration", "8"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "length_predictor.json").read_text())
    assert report["tokenizer"] == "mistral-v1-spm32k"
    assert report["held_out_prompts"]["goodput"]["mean_over_models"]["kendall_tau"] > 0.5
    assert report["latency_us"]["cpu_p50"] > 0
    for png in ("length_predictor.scatter.png", "length_predictor.tau_by_model.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((tmp_path / "cache" / "token_counts").glob("alpaca_eval-*.json"))
