"""The step-latency model against the committed GPU measurements, on points it never saw."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from goodput.profiler import catalog
from goodput.profiler.capacity import SLO, LengthDistribution, capacity
from goodput.profiler.latency import (
    FEATURES,
    LatencyModel,
    Measurement,
    RooflineFeatures,
    Step,
    design_matrix,
    evaluate,
    fit_cpu_engine,
    leave_one_out_mape,
    load_cpu_engine_measurements,
    load_measurements,
)


@pytest.fixture(scope="module")
def measurements() -> list[Measurement]:
    return load_measurements()


def test_committed_data_covers_two_gpus_and_three_tp_degrees(
    measurements: list[Measurement],
) -> None:
    assert {m.gpu for m in measurements} == {"H100-80GB", "H200-141GB"}
    assert {m.step.tp for m in measurements} == {1, 2, 4}
    assert {m.phase for m in measurements} == {"decode", "prefill", "mixed", "lm_head"}
    assert all(m.seconds > 0 for m in measurements)


def test_held_out_error_stays_within_the_bound_we_achieve(measurements: list[Measurement]) -> None:
    # Achieved when committed: 4.7% random, 4.3% / 7.0% unseen GPU, 9.3% every TP>1 point from
    # TP=1 alone, 6.4% TP=4 from TP<=2, 4.4% mixed steps, 5.6% whole models from 4-layer stacks.
    results = {e.name: e for e in evaluate(measurements)}
    assert results["random 25% held out"].mape < 0.06
    assert results["unseen GPU: H100-80GB"].mape < 0.06
    assert results["unseen GPU: H200-141GB"].mape < 0.09
    assert results["unseen TP: all tp>1 from tp=1"].mape < 0.10
    assert results["unseen TP: tp=4 from smaller"].mape < 0.08
    assert results["mixed prefill+decode steps from pure ones"].mape < 0.07
    assert results["whole model from 4-layer stacks"].mape < 0.07


def test_datasheet_roofline_alone_misses_the_bound(measurements: list[Measurement]) -> None:
    # The bound is not vacuous: bytes / bandwidth and FLOPs / peak at datasheet rates, without
    # the learned efficiencies and overheads, miss the measurements by far more.
    X, y = design_matrix(measurements)
    features = RooflineFeatures().transform(X)
    plain = sum(
        features[:, FEATURES.index(name)]
        for name in ("linear_roofline", "attention_roofline", "head_roofline")
    )
    assert float(np.mean(np.abs(plain - y) / y)) > 0.3


def test_json_round_trip_predicts_the_same(measurements: list[Measurement], tmp_path: Path) -> None:
    model = LatencyModel.fit(measurements[::2])
    path = tmp_path / "model.json"
    model.save(path)
    again = LatencyModel.load(path)
    X, _ = design_matrix(measurements[1::2])
    np.testing.assert_allclose(model.regressor.predict(X), again.regressor.predict(X))
    assert json.loads(path.read_text())["features"] == list(FEATURES)


def test_committed_model_matches_a_fresh_fit(measurements: list[Measurement]) -> None:
    committed = LatencyModel.load()
    fresh = LatencyModel.fit(measurements)
    np.testing.assert_allclose(committed.regressor.coef_, fresh.regressor.coef_, rtol=1e-6)


def test_predictions_follow_hardware_and_parallelism() -> None:
    model = LatencyModel.load()
    arch = catalog.get("llama-3-8b")
    step = Step(arch, decode_seqs=32, decode_context=1024)
    h100, h200, a100, l4 = (catalog.gpu(n) for n in ("H100-80GB", "H200-141GB", "A100-80GB", "L4"))
    # Decode is memory-bound: more bandwidth, shorter steps.
    times = [model.step_seconds(step, g) for g in (h200, h100, a100, l4)]
    assert times == sorted(times)
    # Tensor parallelism shortens a large model's step, but by less than the degree.
    big = catalog.get("llama-3-70b")
    tp2, tp4 = (model.step_seconds(Step(big, tp, decode_seqs=32, decode_context=1024), h100)
                for tp in (2, 4))  # fmt: skip
    assert tp4 < tp2 < 2 * tp4
    # Larger batches and longer contexts never make a step faster.
    batches = [model.step_seconds(Step(arch, decode_seqs=b, decode_context=1024), h100)
               for b in (1, 8, 64, 256)]  # fmt: skip
    assert batches == sorted(batches)
    prefill = [model.step_seconds(Step(arch, prefill_seqs=1, prefill_tokens=t), h100)
               for t in (128, 1024, 8192)]  # fmt: skip
    assert prefill == sorted(prefill)


def test_whole_llama_3_8b_decode_step_is_plausible_on_h100() -> None:
    # 16 GB of weights at 3.35 TB/s is 4.8 ms: a batch-1 step cannot be faster than that.
    model = LatencyModel.load()
    t = model.step_seconds(Step(catalog.get("llama-3-8b"), decode_seqs=1, decode_context=512),
                           catalog.gpu("H100-80GB"))  # fmt: skip
    assert 0.0048 < t < 0.012


def test_the_same_model_type_fits_the_vllm_cpu_engine() -> None:
    # Decode steps of the real vLLM CPU engine (tiny model) on this shared machine: 6 batch
    # sizes that fit its KV cache; leave-one-out MAPE was 10.6% when committed.
    cpu = load_cpu_engine_measurements()
    assert [m.step.decode_seqs for m in cpu] == [1, 2, 4, 8, 16, 32]
    assert leave_one_out_mape(cpu) < 0.15
    model = LatencyModel.fit(cpu)
    X, _ = design_matrix(cpu)
    predicted = model.regressor.predict(X)
    assert list(predicted) == sorted(predicted)  # steps grow with the batch


def test_the_cpu_engine_product_is_timed_by_its_own_committed_fit() -> None:
    cpu, labelled = catalog.gpu("CPU-vLLM"), catalog.gpu("Goodput-CPU-vLLM")
    assert cpu is labelled  # the catalog name and the node label name the same product
    committed = LatencyModel.for_gpu(cpu).regressor.coef_
    assert committed == pytest.approx(fit_cpu_engine().regressor.coef_)  # refitted with the data
    assert LatencyModel.for_gpu(catalog.gpu("H100-80GB")).to_json() == LatencyModel.load().to_json()
    # Its own decode steps, predicted by the product's model on the product's figures.
    model = LatencyModel.for_gpu(cpu)
    for m in load_cpu_engine_measurements():
        assert model.step_seconds(m.step, cpu) == pytest.approx(m.seconds, rel=0.35)


def test_the_tiny_cpu_example_slo_is_attainable_on_the_cpu_product() -> None:
    # examples/llmdeployment-tiny-cpu.yaml: TTFT 2 s, TPOT 200 ms, maxModelLen 2048, and the
    # placement's typical request (1,024 prompt + 256 output tokens).
    c = capacity(catalog.get("tiny-llama"), catalog.gpu("CPU-vLLM"), slo=SLO(2.0, 0.2),
                 lengths=LengthDistribution.fixed(1024, 256), max_model_len=2048)  # fmt: skip
    assert c.max_rps > 1.0 and c.kv_cache_tokens > 100_000
