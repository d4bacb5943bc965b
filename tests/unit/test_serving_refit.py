"""The gateway refits its learned length predictor from its own request log, without a restart."""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from pathlib import Path

import pytest

from goodput.api.gateway_config import (
    GatewayConfig,
    PredictorConfig,
    RefitConfig,
    RequestLogConfig,
    SLOTargets,
)
from goodput.profiler.length_model_io import load_default_length_model
from goodput.serving.gateway import Gateway
from goodput.serving.length_estimate import LearnedLengthPredictor
from goodput.serving.refit import LogTail, PredictorRefitter
from goodput.serving.request_log import RequestLog, RequestRecord


def _record(i: int, prompt: str, output_tokens: int, finish: str = "stop") -> RequestRecord:
    return RequestRecord(
        ts=float(i),
        deployment="d",
        model="tiny-llama",
        request_id=str(i),
        prompt=prompt,
        prompt_tokens=len(prompt.split()),
        max_tokens=None,
        predicted_p50=50.0,
        predicted_p90=100.0,
        output_tokens=output_tokens,
        finish_reason=finish,
    )


def test_the_tail_returns_whole_new_lines_only(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    tail = LogTail(path)
    assert tail.read() == []  # no log yet
    path.write_text('{"a": 1}\n{"b": ')
    assert tail.read() == ['{"a": 1}']
    with path.open("a") as f:
        f.write('2}\n{"c": 3}\n')
    assert tail.read() == ['{"b": 2}', '{"c": 3}']
    assert tail.read() == []


def test_the_tail_follows_the_request_logs_rotation(tmp_path: Path) -> None:
    path = tmp_path / "requests.jsonl"
    line = len(json.dumps(asdict(_record(0, "prompt number 0", 10)))) + 1
    log = RequestLog(path, max_bytes=int(3.5 * line), keep_prompts=True)
    tail = LogTail(path)
    log.write(_record(0, "prompt number 0", 10))
    assert len(tail.read()) == 1
    for i in range(1, 6):  # the fourth line passes max_bytes: renamed to .1, a new file begun
        log.write(_record(i, f"prompt number {i}", 10))
    log.close()
    assert len(path.with_name("requests.jsonl.1").read_text().splitlines()) == 4
    ids = [json.loads(line)["request_id"] for line in tail.read()]
    assert ids == ["1", "2", "3", "4", "5"]  # nothing lost or read twice across the rename


@pytest.fixture(scope="module")
def shipped_model() -> object:
    return load_default_length_model()


def _long_answer_prompts(n: int) -> list[str]:
    return [
        f"write a detailed essay number {i} about topic {i % 7} with many sections"
        for i in range(n)
    ]


def test_a_refit_swaps_a_new_model_in_once_enough_requests_arrived(
    tmp_path: Path, shipped_model: object
) -> None:
    path = tmp_path / "requests.jsonl"
    predictor = LearnedLengthPredictor(shipped_model, "tiny-llama")  # type: ignore[arg-type]
    refitter = PredictorRefitter(
        predictor, path, RefitConfig(minNewRecords=40, minPrompts=20, intervalS=1)
    )
    log = RequestLog(path, keep_prompts=True)
    prompts = _long_answer_prompts(60)
    for i, prompt in enumerate(prompts[:20]):
        log.write(_record(i, prompt, 900))
    log.write(_record(99, prompts[0], 16, finish="length"))  # cut off: not a training row
    assert not asyncio.run(refitter.step())  # 20 usable of the 40 it waits for
    assert predictor.model is shipped_model
    before = predictor.predict(prompts[-1], 12, None).p50
    for i, prompt in enumerate(prompts[20:], start=20):
        log.write(_record(i, prompt, 900))
    log.close()
    assert asyncio.run(refitter.step())
    assert predictor.model is not shipped_model  # the shipped model itself is left as it was
    assert refitter.refits == 1
    assert predictor.predict(prompts[-1], 12, None).p50 > before  # learned: these run long
    assert not asyncio.run(refitter.step())  # nothing new since
    refitter.close()


def _config(tmp_path: Path, kind: str) -> GatewayConfig:
    return GatewayConfig(
        deployment="d",
        servedModelName="tiny-llama",
        slo=SLOTargets(ttftMs=2000, tpotMs=200),
        predictor=PredictorConfig(kind=kind, refit=RefitConfig()),  # type: ignore[arg-type]
        requestLog=RequestLogConfig(
            path=str(tmp_path / "state" / "requests.jsonl"), keepPrompts=True
        ),
    )


def test_the_gateway_keeps_its_log_where_the_config_says_and_refits_the_learned_model(
    tmp_path: Path,
) -> None:
    gateway = Gateway(_config(tmp_path, "learned"))
    assert gateway.request_log is not None
    assert gateway.request_log.path == tmp_path / "state" / "requests.jsonl"
    assert gateway.refitter is not None
    gateway.request_log.close()
    online = Gateway(_config(tmp_path, "online"))
    assert online.refitter is None  # nothing to refit: the online estimator learns as it goes
    assert online.request_log is not None
    online.request_log.close()
