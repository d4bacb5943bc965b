"""The cascade's stages on their own: the share target over a window, sessions, modality, spill
on predicted wait, and the pipeline composed from config."""

from __future__ import annotations

import random

import numpy as np
import pytest

from goodput.api.load_report import LoadReport
from goodput.api.router_config import CascadeConfig, RouterConfig
from goodput.router.cascade import ModelCascadeFilter, ModelModalityFilter, request_content
from goodput.router.endpoints import Endpoint, EndpointTable
from goodput.router.prefix import PrefixIndex
from goodput.router.stages import (
    MaxScorePicker,
    PrefixKnowledge,
    RoutingPipeline,
    RoutingRequest,
    stable_hash,
)

SMALL, LARGE = "small", "large"


class StandInQuality:
    """A quality model whose small-model win-rate is written in the prompt ("rate=0.12"); the
    large model is the reference (0.5)."""

    score_quantiles_ = np.linspace(0.0, 0.5, 99)

    def win_rate(self, scores: np.ndarray, model: str) -> np.ndarray:
        return np.full(scores.shape, 0.5) if model == LARGE else np.asarray(scores)

    def predict_models(self, prompt: str, models: list[str]) -> np.ndarray:
        rate = float(prompt.partition("rate=")[2] or 0.25)
        return np.array([0.5 if m == LARGE else rate for m in models])


def cascade(**target: object) -> CascadeConfig:
    return CascadeConfig.model_validate(
        {
            "models": [
                {"name": SMALL, "endpoints": ["http://s"]},
                {"name": LARGE, "endpoints": ["http://l"], "multimodal": True},
            ],
            "windowRequests": 200,
            **(target or {"maxLargeShare": 0.3}),
        }
    )


def stage(**target: object) -> ModelCascadeFilter:
    knowledge = PrefixKnowledge(PrefixIndex(100))
    return ModelCascadeFilter(cascade(**target), StandInQuality(), knowledge)  # type: ignore[arg-type]


def replica(name: str, group: str, wait_s: float | None = None) -> Endpoint:
    e = Endpoint(name, f"http://{name}", group=group)
    e.report = LoadReport(
        ready=True, queue=0, inflight=0, predicted_wait_s=wait_s, first_token_s=0.05,
        ttft_objective_s=1.0,
    )  # fmt: skip
    return e


def request(prompt: str, session: str | None = None, images: bool = False) -> RoutingRequest:
    return RoutingRequest(
        model="assistant", blocks=(), prompt_tokens=10, block_tokens=4.0, session=session,
        tenant="t", priority="default", ttft_objective_s=None, key=stable_hash(prompt),
        prompt=prompt, images=images,
    )  # fmt: skip


REPLICAS = [replica("s0", SMALL, 0.0), replica("l0", LARGE, 0.0)]


def test_at_most_the_target_share_goes_large_and_it_is_the_prompts_the_small_model_loses() -> None:
    rng = random.Random(1)
    f = stage(maxLargeShare=0.3)
    rates = [rng.random() * 0.5 for _ in range(2000)]
    chosen = [f.choose(request(f"q{i} rate={r:.4f}"), REPLICAS).model for i, r in enumerate(rates)]
    tail = chosen[500:]  # once the window holds live traffic
    share = tail.count(LARGE) / len(tail)
    assert 0.25 <= share <= 0.32
    large = [r for r, c in zip(rates[500:], tail, strict=True) if c == LARGE]
    # The lowest predicted win-rates (the bottom 30% lie below 0.15), not a random 30%: the
    # threshold moves with the window, so a few near it fall on either side.
    assert sum(r < 0.15 for r in large) / len(large) > 0.85


def test_two_routers_seeing_the_same_traffic_decide_alike() -> None:
    a, b = stage(), stage()
    rng = random.Random(2)
    prompts = [f"p{i} rate={rng.random() * 0.5:.4f}" for i in range(600)]
    same = [a.choose(request(p), REPLICAS) == b.choose(request(p), REPLICAS) for p in prompts]
    assert all(same)


def test_conversations_held_on_the_large_model_count_against_the_share() -> None:
    f = stage(maxLargeShare=0.3)
    for i in range(40):  # 40 conversations open on the large model among easy requests
        f.choose(request(f"open{i} rate=0.0", session=f"u{i}"), REPLICAS)
        for j in range(4):
            f.choose(request(f"easy{i}.{j} rate=0.5"), REPLICAS)
    rng = random.Random(3)
    later, fresh = [], []
    for i in range(400):  # they go on (a fifth of the traffic) beside new requests
        if i % 5 == 0:
            later.append(f.choose(request(f"turn{i} rate=0.5", session=f"u{i % 40}"), REPLICAS))
        else:
            fresh.append(f.choose(request(f"y{i} rate={rng.random() * 0.5:.4f}"), REPLICAS))
    assert all(c == (LARGE, "session") for c in later)  # the conversations stay
    # Once the window holds only this traffic, new requests get what is left of the 30%:
    # (0.3 - 0.2) / 0.8 = 12.5% of them.
    assert 0.06 < sum(c.model == LARGE for c in fresh[-120:]) / 120 < 0.19
    assert 0.25 < f.status()["windowShareBeyondFirst"] < 0.35  # type: ignore[operator]


def test_a_conversation_stays_on_its_model_unless_a_turn_escalates_it() -> None:
    f = stage(minWinRate=0.3)
    assert f.choose(request("hi rate=0.45", session="u"), REPLICAS) == (SMALL, "quality")
    assert f.choose(request("more rate=0.4", session="u"), REPLICAS) == (SMALL, "session")
    assert f.choose(request("hard rate=0.1", session="u"), REPLICAS) == (LARGE, "escalated")
    assert f.choose(request("easy again rate=0.49", session="u"), REPLICAS) == (LARGE, "session")
    assert f.choose(request("easy rate=0.49", session="other"), REPLICAS) == (SMALL, "quality")


def test_min_win_rate_sends_the_small_model_only_what_it_is_predicted_to_win_often_enough() -> None:
    f = stage(minWinRate=0.3)
    assert f.choose(request("rate=0.31"), REPLICAS).model == SMALL
    assert f.choose(request("rate=0.29"), REPLICAS).model == LARGE


def test_images_go_only_to_a_multimodal_model_even_as_retries() -> None:
    config = RouterConfig.model_validate({"cascade": cascade().model_dump(by_alias=True)})
    assert config.filters[:3] == ["ready", "model-modality", "model-cascade"]
    pipeline = RoutingPipeline(
        [ModelModalityFilter(config.cascade), stage(maxLargeShare=0.0)],  # type: ignore[arg-type]
        [],
        MaxScorePicker(),
    )
    with_image = pipeline.decide(request("rate=0.49", images=True), list(REPLICAS))
    assert [e.group for e in with_image.ranked] == [LARGE]
    text_only = pipeline.decide(request("rate=0.49"), list(REPLICAS))
    assert [e.group for e in text_only.ranked] == [SMALL, LARGE]  # the other model: last resort


def test_a_request_spills_to_the_other_model_when_its_own_is_predicted_to_miss_the_slo() -> None:
    f = stage(minWinRate=0.3)
    busy_small = [replica("s0", SMALL, 5.0), replica("s1", SMALL, 3.0), replica("l0", LARGE, 0.1)]
    assert f.choose(request("rate=0.45"), busy_small) == (LARGE, "spill")
    busy_large = [replica("s0", SMALL, 0.1), replica("l0", LARGE, 4.0)]
    assert f.choose(request("rate=0.1"), busy_large) == (SMALL, "spill")
    both_busy = [replica("s0", SMALL, 4.0), replica("l0", LARGE, 4.0)]
    assert f.choose(request("rate=0.1"), both_busy) == (LARGE, "quality")
    unknown = [replica("s0", SMALL, None), replica("l0", LARGE, 0.0)]  # no prediction: no spill
    assert f.choose(request("rate=0.45"), unknown) == (SMALL, "quality")


def test_a_model_with_no_ready_replica_is_not_chosen() -> None:
    f = stage(minWinRate=0.3)
    assert f.choose(request("rate=0.45"), [replica("l0", LARGE, 0.0)]) == (LARGE, "only-model")


def test_the_quality_prompt_is_the_last_user_message_and_images_are_seen() -> None:
    body = {
        "messages": [
            {"role": "user", "content": "first question"},
            {"role": "assistant", "content": "an answer"},
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "what is in"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}},
                ],
            },
        ]
    }
    assert request_content(body) == ("what is in", True)
    assert request_content({"prompt": "complete this"}) == ("complete this", False)


def test_each_models_discovery_replaces_only_its_own_replicas() -> None:
    table = EndpointTable(lambda: 0.0)
    table.replace([("s0", "http://s0", True, False)], SMALL)
    table.replace([("l0", "http://l0", True, False)], LARGE)
    assert table.replace([("s1", "http://s1", True, False)], SMALL) == ["s0"]
    assert sorted((e.name, e.group) for e in table.all()) == [("l0", LARGE), ("s1", SMALL)]


def test_a_cascade_needs_one_target_and_distinct_models() -> None:
    with pytest.raises(ValueError, match="one target"):
        cascade(maxLargeShare=0.3, minWinRate=0.2)
    with pytest.raises(ValueError, match="unique"):
        CascadeConfig.model_validate(
            {"models": [{"name": "a", "endpoints": ["http://a"]}] * 2, "minWinRate": 0.2}
        )


def test_the_shipped_quality_model_builds_the_stages_from_config() -> None:
    config = RouterConfig.model_validate({"cascade": cascade().model_dump(by_alias=True)})
    pipeline = RoutingPipeline.from_config(config, lambda: 0.0)
    names = [f.name for f in pipeline.filters]
    assert names == ["ready", "model-modality", "model-cascade", "slo-headroom"]


class StandInLength:
    """Every answer is predicted 200 tokens long."""

    def predict_request(self, prompt: str, model: str) -> tuple[float, float]:
        return 200.0, 400.0


def test_a_spill_goes_where_the_whole_answer_is_predicted_to_finish_first() -> None:
    config = CascadeConfig.model_validate(
        {
            "models": [
                {"name": SMALL, "endpoints": ["http://s"]},
                {"name": "medium", "endpoints": ["http://m"], "tpotS": 0.01},
                {"name": LARGE, "endpoints": ["http://l"], "tpotS": 0.05},
            ],
            "minWinRate": 0.3,
        }
    )
    knowledge = PrefixKnowledge(PrefixIndex(100))
    f = ModelCascadeFilter(config, StandInQuality(), knowledge, StandInLength())  # type: ignore[arg-type]
    busy_small = [
        replica("s0", SMALL, 5.0), replica("m0", "medium", 0.5), replica("l0", LARGE, 0.1),
    ]  # fmt: skip
    # The large model answers first (0.15 s) but decodes 200 tokens 5x slower: 10.15 s vs 2.55 s.
    assert f.choose(request("rate=0.45"), busy_small) == ("medium", "spill")
    untimed = ModelCascadeFilter(config, StandInQuality(), knowledge)  # type: ignore[arg-type]
    assert untimed.choose(request("rate=0.45"), busy_small) == (LARGE, "spill")  # TTFT alone
