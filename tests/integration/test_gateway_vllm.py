"""The gateway as a real ``goodput serve`` process in front of the real vLLM CPU engine, driven
by the official ``openai`` client: streaming and not, usage, OpenAI-format errors, client
cancellation, 429 under overload, drain on SIGTERM, and the engine dying mid-stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from goodput.dev.engine import EngineProcess, EngineSettings
from goodput.dev.processes import CLOSE_WAIT, LISTEN, TcpSocket, free_port, tcp_sockets

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
             "--request-log", str(workdir / f"requests-{port}.jsonl"), "--drain-timeout", "120"],
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


def metric_sum(exposition: str, name: str) -> float:
    """Sum of a metric's samples across labels, from Prometheus exposition text."""
    samples = re.findall(rf"^{re.escape(name)}(?:\{{.*\}})? (\S+)$", exposition, re.M)
    return sum(float(v) for v in samples)


def engine_metric(engine_url: str, name: str) -> float:
    """Sum of an engine (vLLM) or gateway metric's samples across labels."""
    return metric_sum(httpx.get(f"{engine_url}/metrics").text, name)


def wait_until(check: Any, timeout: float = 30.0) -> bool:
    """Poll ``check()`` until true or ``timeout``; returns its last value."""
    deadline = time.monotonic() + timeout
    while not check() and time.monotonic() < deadline:
        time.sleep(0.2)  # not faster: each read of vLLM's /metrics costs its API server CPU
    return bool(check())


QUEUE_DEPTH = "goodput_queue_depth"

# Longest output the tiny model's context (2048) leaves for a one-word prompt: seconds of decoding
# on any CPU.
LONG = 2040


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


def _engine_connections(port: int) -> dict[str, TcpSocket]:
    """The connections to the engine's ``port`` by peer address, from the kernel's table."""
    return {sock.peer: sock for sock in tcp_sockets(port) if sock.state != LISTEN}


def _closed_by_peer(sock: TcpSocket | None) -> bool:
    """Half-closed by the other end (FIN) and not yet by this one, or gone (reset)."""
    return sock is None or sock.state == CLOSE_WAIT


def test_client_disconnect_closes_the_engine_request(
    gateway: str, vllm_engine: EngineProcess
) -> None:
    """A client that leaves makes the gateway close the request's engine connection at once —
    what vLLM aborts a generation on — and free the request's slot.

    Observed with the engine frozen (SIGSTOP) from before the request until after the close:
    the engine can neither finish the request early nor hold its stream (docs/bench-serving.md,
    "held streams"), so the outcome is the gateway's alone, read from the kernel's socket table.
    The request is made larger than anything else the gateway sends the engine (health and
    metrics polls) to tell its connection apart.
    """
    port = vllm_engine.port
    prompt = "word " * 300  # 1.5 kB of JSON; ~300 tokens, so 1,000 more fit the context

    def request_connection() -> str | None:
        big = [peer for peer, sock in _engine_connections(port).items() if sock.unread > 1200]
        return big[0] if len(big) == 1 else None

    async def scenario() -> None:
        c = openai.AsyncOpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0)
        with vllm_engine.paused():
            request = asyncio.ensure_future(
                c.completions.create(model=MODEL, prompt=prompt, max_tokens=1000, stream=True)
            )
            # Dispatched and sent: the request lies unread in the frozen engine's socket.
            assert await until(lambda: request_connection() is not None)
            peer = request_connection()
            assert peer is not None
            assert engine_metric(gateway, "goodput_inflight_requests") == 1
            request.cancel()  # the client goes away before any token
            with contextlib.suppress(asyncio.CancelledError):
                await request
            assert await until(lambda: engine_metric(gateway, "goodput_inflight_requests") == 0)
            # Closed by the gateway: half-closed (FIN) or gone (reset) on the engine's side.
            assert await until(lambda: _closed_by_peer(_engine_connections(port).get(peer)))
        await c.close()

    asyncio.run(scenario())
    # Thawed, the engine finds its client gone and has nothing left running.
    assert wait_until(lambda: engine_metric(vllm_engine.url, "vllm:num_requests_running") == 0, 60)
    answer = client(gateway).completions.create(model=MODEL, prompt="x", max_tokens=3)
    assert answer.usage is not None and answer.usage.completion_tokens >= 1  # slot given back


async def until(check: Callable[[], bool], within_s: float = 30.0) -> bool:
    """``wait_until`` for coroutines: polls ``check()`` without blocking the event loop."""
    for _ in range(int(within_s / 0.05)):
        if check():
            return True
        await asyncio.sleep(0.05)  # polls another process: no event to wait on
    return check()


# Tests that need a request in flight freeze the engine (SIGSTOP) before sending it. The one
# that needs it mid-stream freezes the engine after the first token, and checks that rather than
# assuming it: vLLM's API server sometimes holds a whole stream until the request ends
# (docs/bench-serving.md, "held streams"), so a first token in hand does not mean the rest is
# still to come. With the engine frozen, a stream that then goes quiet has its rest inside the
# engine; one that finishes was held, and the scenario starts again (up to five tries; that
# engine runs without per-step statistics, which makes held streams rare for lone requests).


class Tap:
    """Reads a stream in the background, so that a test can wait for its chunks with a timeout
    without breaking the stream (a timed-out read of the stream itself would close it)."""

    END = object()

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.chunks: asyncio.Queue[Any] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for chunk in self.stream:
                await self.chunks.put(chunk)
            await self.chunks.put(Tap.END)
        except Exception as exc:  # handed to the test, which asserts on it
            await self.chunks.put(exc)

    async def rest(self, within_s: float = 120) -> list[Any]:
        """Every chunk to the end (or the error that ended the stream)."""
        out: list[Any] = []
        while (item := await asyncio.wait_for(self.chunks.get(), within_s)) is not Tap.END:
            out.append(item)
            if isinstance(item, Exception):
                break
        return out

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.stream.close()


@contextlib.asynccontextmanager
async def frozen_mid_request(
    engine: EngineProcess, start: Callable[[], Awaitable[Any]]
) -> AsyncIterator[Tap]:
    """Start a long stream and yield it with ``engine`` frozen while the request is running."""
    for _ in range(5):
        tap = Tap(await start())
        await asyncio.wait_for(tap.chunks.get(), 120)  # a first token
        with engine.paused():
            while True:
                try:
                    item = await asyncio.wait_for(tap.chunks.get(), 1.5)
                except TimeoutError:  # quiet: the rest is inside the frozen engine
                    yield tap
                    return
                if item is Tap.END or isinstance(item, Exception):
                    break  # the stream was held and has ended: try again
        await tap.close()
    pytest.fail("in five tries the engine held the whole stream until its end every time")


def long_completion(url: str) -> tuple[openai.AsyncOpenAI, Callable[[], Awaitable[Any]]]:
    c = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)

    async def start() -> Any:
        return await c.completions.create(
            model=MODEL, prompt="x", max_tokens=LONG, stream=True,
            extra_body={"ignore_eos": True},
        )  # fmt: skip

    return c, start


def test_overload_answers_429_with_retry_after(vllm_engine: EngineProcess, tmp_path: Path) -> None:
    """One request runs, one waits in a queue of one, the third is turned away with 429.

    The engine is frozen while the queue fills, so the running request cannot end early."""
    # A TTFT objective the queued request can meet however long the running one takes: this
    # tests the queue bound, not the SLO admission.
    slo = {"ttftMs": 600_000, "tpotMs": 1000}
    with serve(vllm_engine.url, tmp_path, maxConcurrency=1, maxQueueLength=1, slo=slo) as (url, _):

        async def scenario() -> None:
            c, start = long_completion(url)
            with vllm_engine.paused():
                running = asyncio.ensure_future(start())
                assert await until(lambda: engine_metric(url, "goodput_inflight_requests") == 1)
                waiting = asyncio.ensure_future(start())
                assert await until(lambda: engine_metric(url, QUEUE_DEPTH) == 1)
                assert not waiting.done()
                with pytest.raises(openai.RateLimitError) as limited:
                    await c.completions.create(model=MODEL, prompt="x", max_tokens=5)
                assert limited.value.code == "queue_full"
                assert int(limited.value.response.headers["retry-after"]) >= 1
                running.cancel()  # its client leaves: the slot goes to the queued request
                with contextlib.suppress(asyncio.CancelledError):
                    await running
            second = await asyncio.wait_for(waiting, 120)
            assert (await anext(aiter(second))).choices[0].text is not None
            await second.close()
            await c.close()

        asyncio.run(scenario())
        text = httpx.get(f"{url}/metrics").text
        assert re.search(r'goodput_rejections_total\{.*reason="queue_full"\} 1\.0', text)
        # The queued request was served, never turned away for its SLO.
        assert not re.search(r'goodput_rejections_total\{.*reason="slo_unattainable"\} [1-9]', text)


def test_sigterm_drains_in_flight_requests(vllm_engine: EngineProcess, tmp_path: Path) -> None:
    """SIGTERM: readiness goes false, new requests get 503, the in-flight one finishes, exit 0.

    The engine is frozen from before the request until the gateway is draining, so the request
    is provably in flight when the signal comes."""
    with serve(vllm_engine.url, tmp_path) as (url, process):

        async def scenario() -> list[Any]:
            c, start = long_completion(url)
            with vllm_engine.paused():
                in_flight = asyncio.ensure_future(start())
                assert await until(lambda: engine_metric(url, "goodput_inflight_requests") == 1)
                process.send_signal(signal.SIGTERM)
                assert await until(lambda: httpx.get(f"{url}/readyz").status_code == 503)
                with pytest.raises(openai.InternalServerError) as refused:
                    await c.completions.create(model=MODEL, prompt="x", max_tokens=2)
                assert refused.value.status_code == 503 and refused.value.code == "draining"
                assert process.poll() is None and not in_flight.done()
            chunks = [chunk async for chunk in await asyncio.wait_for(in_flight, 120)]
            await c.close()
            return chunks

        chunks = asyncio.run(scenario())
        assert chunks[-1].choices[0].finish_reason == "length"
        assert sum(len(chunk.choices) for chunk in chunks) >= 1
        assert process.wait(timeout=120) == 0
    records = [json.loads(line) for line in next(tmp_path.glob("requests-*.jsonl")).open()]
    assert [r["output_tokens"] for r in records] == [LONG]


def test_engine_death_mid_stream_ends_cleanly(
    engine_python: Path, tiny_model: Path, tmp_path: Path
) -> None:
    settings = EngineSettings(model=tiny_model, served_model_name=MODEL, log_stats=False)
    with (
        EngineProcess(settings, python=engine_python, log_path=tmp_path / "engine.log") as engine,
        serve(engine.url, tmp_path) as (url, _),
    ):

        async def scenario() -> None:
            c, start = long_completion(url)
            async with frozen_mid_request(engine, start) as in_flight:
                engine.stop(timeout=0)  # frozen mid-request, then killed
            started = time.monotonic()
            rest = await in_flight.rest(within_s=30)
            assert rest and isinstance(rest[-1], openai.APIError), rest[-1:]
            assert time.monotonic() - started < 30  # an error, not a hang
            with pytest.raises(openai.InternalServerError) as down:
                await c.completions.create(model=MODEL, prompt="x", max_tokens=2)
            assert down.value.status_code == 503
            await c.close()

        asyncio.run(scenario())


def test_a_frozen_engine_fails_requests_within_seconds(
    vllm_engine: EngineProcess, tmp_path: Path
) -> None:
    """The engine freezes (SIGSTOP) mid-stream: the stream ends with an error event within 10 s
    (it waited 600 s), new requests get 503 with ``Retry-After`` at once, readiness follows; the
    engine thawed, the gateway serves again."""
    with serve(vllm_engine.url, tmp_path) as (url, _):

        async def scenario() -> None:
            c, start = long_completion(url)
            async with frozen_mid_request(vllm_engine, start) as in_flight:
                frozen_at = time.monotonic()  # about: the stream has been quiet for 1.5 s
                rest = await in_flight.rest(within_s=30)
                failed_after = time.monotonic() - frozen_at + 1.5
                assert rest and isinstance(rest[-1], openai.APIError), rest[-1:]
                assert failed_after < 10, failed_after
                async with httpx.AsyncClient(base_url=url) as http:
                    asked = time.monotonic()
                    body = {"model": MODEL, "prompt": "x", "max_tokens": 2}
                    refused = await http.post("/v1/completions", json=body)
                    assert time.monotonic() - asked < 1.0  # answered at once, not queued
                    assert refused.status_code == 503
                    assert int(refused.headers["retry-after"]) >= 1
                    assert refused.json()["error"]["code"] == "engine_unavailable"
                    assert (await http.get("/readyz")).status_code == 503
            assert await until(lambda: httpx.get(f"{url}/readyz").status_code == 200, 60)
            answer = await c.completions.create(model=MODEL, prompt="x", max_tokens=2)
            assert answer.choices
            await c.close()

        asyncio.run(scenario())
        errors = metric_sum(httpx.get(f"{url}/metrics").text, "goodput_internal_errors_total")
        assert errors == 0
