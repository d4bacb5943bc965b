"""The gateway as a real ``goodput serve`` process in front of the real vLLM CPU engine, driven
by the official ``openai`` client: streaming and not, usage, OpenAI-format errors, client
cancellation, 429 under overload, drain on SIGTERM, and the engine dying mid-stream."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from goodput.dev.engine import EngineProcess, EngineSettings
from goodput.dev.processes import free_port

pytestmark = pytest.mark.engine

MODEL = "tiny-llama"


@contextmanager
def serve(
    engine_url: str, workdir: Path, **config: Any
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``goodput serve`` with a config file, as the operator runs it; yields (url, process)."""
    port = free_port()
    document = {
        "deployment": "it",
        "servedModelName": MODEL,
        "engineUrl": engine_url,
        "slo": {"ttftMs": 5000, "tpotMs": 1000},
        **config,
    }
    path = workdir / f"gateway-{port}.json"
    path.write_text(json.dumps(document))
    log = workdir / f"gateway-{port}.log"
    with log.open("wb") as out:
        # cwd outside the checkout: `python -m` puts it on sys.path, and the repository's
        # operator/ folder would shadow the standard library's `operator`.
        process = subprocess.Popen(
            [sys.executable, "-m", "goodput", "serve", "--config", str(path), "--port", str(port),
             "--request-log", str(workdir / f"requests-{port}.jsonl"), "--drain-timeout", "30"],
            stdout=out, stderr=subprocess.STDOUT, cwd=workdir,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"gateway did not become ready:\n{log.read_text()}")
            time.sleep(0.2)
        yield url, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)


def engine_running(engine_url: str) -> float:
    text = httpx.get(f"{engine_url}/metrics").text
    return sum(float(v) for v in re.findall(r"^vllm:num_requests_running\{.*\} (\S+)$", text, re.M))


@pytest.fixture(scope="module")
def gateway(vllm_engine: EngineProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(vllm_engine.url, tmp_path_factory.mktemp("gateway")) as (url, _):
        yield url


def test_chat_and_completions_streamed_and_not(gateway: str) -> None:
    c = client(gateway)
    chat = c.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=6,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    assert chat.usage is not None and chat.usage.completion_tokens == 6
    chunks = list(
        c.completions.create(
            model=MODEL, prompt="Once upon a time", max_tokens=5, stream=True,
            extra_body={"ignore_eos": True},
        )
    )  # fmt: skip
    assert all(chunk.usage is None for chunk in chunks)  # not asked for: stripped
    assert chunks[-1].choices[0].finish_reason == "length"
    with_usage = list(
        c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=4, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        )
    )  # fmt: skip
    assert with_usage[-1].usage is not None and with_usage[-1].usage.completion_tokens == 4
    models = c.models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_bad_input_gets_openai_errors(gateway: str) -> None:
    c = client(gateway)
    with pytest.raises(openai.NotFoundError) as unknown:
        c.completions.create(model="no-such-model", prompt="x", max_tokens=2)
    assert unknown.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as too_many:
        c.completions.create(model=MODEL, prompt="x", max_tokens=100_000)
    assert too_many.value.param == "max_tokens"
    # A prompt longer than the context: only the engine can count tokens; relayed in this shape.
    with pytest.raises(openai.BadRequestError) as overflow:
        c.completions.create(model=MODEL, prompt="word " * 5000, max_tokens=8)
    assert overflow.value.type  # the OpenAI error shape, whatever the engine's wording
    bad = httpx.post(f"{gateway}/v1/completions", content=b"{", headers={"content-type": "a/b"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    missing = httpx.post(f"{gateway}/v1/chat/completions", json={"model": MODEL})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "messages"


def test_client_disconnect_aborts_the_engine_request(
    gateway: str, vllm_engine: EngineProcess
) -> None:
    stream = client(gateway).completions.create(
        model=MODEL, prompt="Tell me", max_tokens=1500, stream=True,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    chunks = iter(stream)
    next(chunks)
    next(chunks)
    # vLLM's running gauge trails the first streamed tokens; wait (briefly) until it shows ours.
    seen = time.monotonic() + 5
    while engine_running(vllm_engine.url) != 1 and time.monotonic() < seen:
        time.sleep(0.05)
    assert engine_running(vllm_engine.url) == 1
    stream.close()
    deadline = time.monotonic() + 15
    while engine_running(vllm_engine.url) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert engine_running(vllm_engine.url) == 0
    metrics = httpx.get(f"{gateway}/metrics").text
    assert "goodput_inflight_requests" in metrics
    assert re.search(r"^goodput_inflight_requests\{.*\} 0\.0$", metrics, re.M)


def test_overload_answers_429_with_retry_after(vllm_engine: EngineProcess, tmp_path: Path) -> None:
    with serve(vllm_engine.url, tmp_path, maxConcurrency=1, maxQueueLength=1) as (url, _):
        c = client(url)
        results: list[Any] = []

        def long_request() -> None:
            try:
                results.append(
                    c.completions.create(
                        model=MODEL, prompt="x", max_tokens=400, extra_body={"ignore_eos": True}
                    )
                )
            except openai.APIError as exc:
                results.append(exc)

        threads = [threading.Thread(target=long_request) for _ in range(2)]
        for t in threads:
            t.start()
            time.sleep(0.3)  # one runs, one waits in the queue
        with pytest.raises(openai.RateLimitError) as limited:
            c.completions.create(model=MODEL, prompt="x", max_tokens=5)
        assert limited.value.code == "queue_full"
        assert int(limited.value.response.headers["retry-after"]) >= 1
        for t in threads:
            t.join()
        assert all(isinstance(r, openai.types.Completion) for r in results)
        text = httpx.get(f"{url}/metrics").text
        assert re.search(r'goodput_rejections_total\{.*reason="queue_full"\} 1\.0', text)


def test_sigterm_drains_in_flight_requests(vllm_engine: EngineProcess, tmp_path: Path) -> None:
    with serve(vllm_engine.url, tmp_path) as (url, process):
        stream = client(url).completions.create(
            model=MODEL, prompt="x", max_tokens=300, stream=True, extra_body={"ignore_eos": True}
        )
        chunks = iter(stream)
        next(chunks)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert httpx.get(f"{url}/readyz").status_code == 503
        with pytest.raises(openai.InternalServerError) as refused:
            client(url).completions.create(model=MODEL, prompt="x", max_tokens=2)
        assert refused.value.status_code == 503 and refused.value.code == "draining"
        rest = list(chunks)
        assert rest[-1].choices[0].finish_reason == "length"
        assert process.wait(timeout=30) == 0
    records = [json.loads(line) for line in next(tmp_path.glob("requests-*.jsonl")).open()]
    assert [r["output_tokens"] for r in records] == [300]


def test_engine_death_mid_stream_ends_cleanly(
    engine_python: Path, tiny_model: Path, tmp_path: Path
) -> None:
    settings = EngineSettings(model=tiny_model, served_model_name=MODEL)
    with (
        EngineProcess(settings, python=engine_python, log_path=tmp_path / "engine.log") as engine,
        serve(engine.url, tmp_path) as (url, _),
    ):
        c = client(url)
        stream = c.completions.create(
            model=MODEL, prompt="x", max_tokens=1500, stream=True,
            extra_body={"ignore_eos": True},
        )  # fmt: skip
        chunks = iter(stream)
        next(chunks)
        engine.stop(timeout=0)  # SIGTERM then SIGKILL at once: the engine dies mid-stream
        started = time.monotonic()
        with pytest.raises(openai.APIError):
            for _ in chunks:
                pass
        assert time.monotonic() - started < 30  # an error, not a hang
        with pytest.raises(openai.InternalServerError) as down:
            c.completions.create(model=MODEL, prompt="x", max_tokens=2)
        assert down.value.status_code == 503
