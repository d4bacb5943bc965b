"""A cascade over real gateways (before fake engines): two models behind one model name, each
request rewritten to the name its model serves, images to the multimodal one, a conversation
kept on its model, and the decisions reported."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from goodput.profiler.quality_model_io import load_default_quality_model

from .conftest import API_KEY, Replica

AUTH = {"authorization": f"Bearer {API_KEY}"}
EASY = "Classify the sentiment of this tweet as positive or negative: I love this phone"
HARD = (
    "Write a detailed, comprehensive business plan for a startup that sells sustainable "
    "furniture, with market analysis and financial projections."
)
SMALL_KEY, LARGE_KEY = "Mistral-7B-Instruct-v0.2", "gpt4_1106_preview"


def chat(url: str, content: Any, **extra: Any) -> httpx.Response:
    body = {"model": "assistant", "messages": [{"role": "user", "content": content}]}
    response = httpx.post(
        f"{url}/v1/chat/completions",
        json={**body, "max_tokens": 2, **extra},
        headers=AUTH,
        timeout=30,
    )
    response.raise_for_status()
    return response


def test_two_models_answer_one_model_name_each_request_to_the_one_the_cascade_picks(
    replicas: Callable[..., list[Replica]], router_for: Callable[..., tuple[Any, str]]
) -> None:
    (small,) = replicas(1, model="small-m")
    (large,) = replicas(1, model="large-m")
    quality = load_default_quality_model()
    easy = float(quality.predict_models(EASY, [SMALL_KEY])[0])
    hard = float(quality.predict_models(HARD, [SMALL_KEY])[0])
    assert easy > hard  # the shipped model's judgement this test builds on
    cascade = {
        "models": [
            {"name": "small", "model": "small-m", "qualityKey": SMALL_KEY,
             "endpoints": [small.url]},
            {"name": "large", "model": "large-m", "qualityKey": LARGE_KEY,
             "endpoints": [large.url], "multimodal": True},
        ],
        "minWinRate": (easy + hard) / 2,
        "modelName": "assistant",
    }  # fmt: skip
    _, url = router_for([], cascade=cascade)
    models = httpx.get(f"{url}/v1/models", headers=AUTH).json()
    assert [m["id"] for m in models["data"]] == ["assistant"]

    assert chat(url, EASY).json()["model"] == "small-m"
    assert chat(url, HARD).json()["model"] == "large-m"
    image = [
        {"type": "text", "text": EASY},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]
    assert chat(url, image).json()["model"] == "large-m"  # only the large one reads images
    # A conversation opened on the large model stays there on an easy turn; a new one does not.
    chat(url, HARD, user="alice")
    assert chat(url, EASY, user="alice").json()["model"] == "large-m"
    assert chat(url, EASY, user="bob").json()["model"] == "small-m"

    assert [r["model"] for r in small.engine.received] == ["small-m"] * 2
    assert [r["model"] for r in large.engine.received] == ["large-m"] * 4
    status = httpx.get(f"{url}/v1/goodput/endpoints").json()
    decisions = {(d["model"], d["reason"]): d["requests"] for d in status["cascade"]["decisions"]}
    assert decisions == {
        ("small", "quality"): 2, ("large", "quality"): 2, ("large", "session"): 1,
        ("large", "only-model"): 1,  # the image: no other model may read it
    }  # fmt: skip
    assert {e["group"] for e in status["endpoints"]} == {"small", "large"}
