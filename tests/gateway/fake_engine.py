"""A small stand-in for vLLM's OpenAI server, for the gateway's fast tests only: continuous
batching with a step time that grows with the batch, SSE streaming with usage, the ``/metrics``
series the gateway polls, and a count of requests aborted by a closed connection. The real
engine is exercised by the ``engine``-marked integration tests."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response, StreamingResponse


@dataclass
class _Running:
    remaining: int
    tokens: asyncio.Queue[int] = field(default_factory=asyncio.Queue)


class FakeEngine:
    def __init__(
        self,
        model: str = "tiny",
        *,
        step_base_s: float = 0.002,
        step_per_request_s: float = 0.0005,
        max_model_len: int = 2048,
        kv_blocks: int = 1024,
        fail_after_tokens: int | None = None,
        api_key: str | None = None,
        stream_error: bool = False,
    ) -> None:
        self.model = model
        self.step_base_s = step_base_s
        self.step_per_request_s = step_per_request_s
        self.max_model_len = max_model_len
        self.kv_blocks = kv_blocks
        self.fail_after_tokens = fail_after_tokens
        self.api_key = api_key
        # As vLLM does with parameters it validates only once generation starts: an error event
        # inside the stream, then [DONE].
        self.stream_error = stream_error
        self.running: list[_Running] = []
        self.completed = 0
        self.aborted = 0
        self.received: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self.app = self._build()

    async def _steps(self) -> None:
        while True:
            if not self.running:
                self._wake.clear()
                await self._wake.wait()
            await asyncio.sleep(self.step_base_s + self.step_per_request_s * len(self.running))
            for r in list(self.running):
                r.remaining -= 1
                r.tokens.put_nowait(r.remaining)
                if r.remaining <= 0:
                    self.running.remove(r)

    def _admit(self, tokens: int) -> _Running:
        r = _Running(remaining=tokens)
        self.running.append(r)
        self._wake.set()
        return r

    def _build(self) -> FastAPI:
        @asynccontextmanager
        async def lifespan(_: FastAPI) -> AsyncIterator[None]:
            stepper = asyncio.create_task(self._steps())
            yield
            stepper.cancel()

        app = FastAPI(lifespan=lifespan)

        @app.middleware("http")
        async def require_key(request: Request, call_next: Any) -> Response:
            # As vLLM's --api-key: every /v1 route wants the key; /health and /metrics do not.
            guarded = self.api_key and request.url.path.startswith("/v1")
            if guarded and request.headers.get("authorization") != f"Bearer {self.api_key}":
                return JSONResponse({"error": "Unauthorized"}, status_code=401)
            response: Response = await call_next(request)
            return response

        @app.get("/health")
        async def health() -> Response:
            return Response(status_code=200)

        @app.get("/v1/models")
        async def models() -> Response:
            card = {"id": self.model, "object": "model", "max_model_len": self.max_model_len}
            return JSONResponse({"object": "list", "data": [card]})

        @app.get("/metrics")
        async def metrics() -> Response:
            labels = f'model_name="{self.model}",engine="0"'
            text = (
                f"# HELP vllm:num_requests_running x\n"
                f"vllm:num_requests_running{{{labels}}} {len(self.running)}.0\n"
                f"vllm:num_requests_waiting{{{labels}}} 0.0\n"
                f"vllm:kv_cache_usage_perc{{{labels}}} 0.25\n"
                f'vllm:cache_config_info{{block_size="16",engine="0",'
                f'num_gpu_blocks="{self.kv_blocks}"}} 1.0\n'
            )
            return Response(text, media_type="text/plain")

        async def generate(request: Request, chat: bool) -> Response:
            body = await request.json()
            self.received.append(body)
            if body.get("model") != self.model:
                return JSONResponse(
                    {
                        "error": {
                            "message": "no such model",
                            "type": "NotFoundError",
                            "param": None,
                            "code": 404,
                        }
                    },
                    status_code=404,
                )
            n = int(body.get("max_tokens") or body.get("max_completion_tokens") or 16)
            if n > self.max_model_len:
                return JSONResponse(
                    {
                        "object": "error",
                        "message": "max_tokens too large",
                        "type": "BadRequestError",
                        "param": None,
                        "code": 400,
                    },
                    status_code=400,
                )
            rid = f"cmpl-{uuid.uuid4().hex}"
            kind = "chat.completion" if chat else "text_completion"
            running = self._admit(n)
            usage = {"prompt_tokens": 7, "completion_tokens": n, "total_tokens": 7 + n}

            def choice(text: str, finish: str | None) -> dict[str, Any]:
                if chat:
                    return {"index": 0, "delta": {"content": text}, "finish_reason": finish}
                return {"index": 0, "text": text, "finish_reason": finish}

            if not body.get("stream"):
                try:
                    for _ in range(n):
                        await running.tokens.get()
                except asyncio.CancelledError:
                    self.aborted += 1
                    raise
                self.completed += 1
                text = " tok" * n
                message = (
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "length",
                    }
                    if chat
                    else {"index": 0, "text": text, "finish_reason": "length"}
                )
                return JSONResponse(
                    {
                        "id": rid,
                        "object": kind,
                        "created": int(time.time()),
                        "model": self.model,
                        "choices": [message],
                        "usage": usage,
                    }
                )

            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            chunk_kind = f"{kind}.chunk" if chat else kind

            async def events() -> AsyncIterator[bytes]:
                if self.stream_error:
                    self.running.remove(running)
                    error = {"message": "bad parameter", "type": "BadRequestError", "code": 400}
                    yield f"data: {json.dumps({'error': error})}\n\n".encode()
                    yield b"data: [DONE]\n\n"
                    return
                finished = False
                try:
                    for i in range(n):
                        if self.fail_after_tokens is not None and i >= self.fail_after_tokens:
                            raise RuntimeError("fake engine died")
                        remaining = await running.tokens.get()
                        finish = "length" if remaining <= 0 else None
                        chunk = {
                            "id": rid,
                            "object": chunk_kind,
                            "created": 0,
                            "model": self.model,
                            "choices": [choice(" tok", finish)],
                        }
                        yield f"data: {json.dumps(chunk)}\n\n".encode()
                    if include_usage:
                        last = {
                            "id": rid,
                            "object": chunk_kind,
                            "created": 0,
                            "model": self.model,
                            "choices": [],
                            "usage": usage,
                        }
                        yield f"data: {json.dumps(last, separators=(',', ':'))}\n\n".encode()
                    yield b"data: [DONE]\n\n"
                    finished = True
                    self.completed += 1
                finally:
                    if not finished:
                        self.aborted += 1
                        if running in self.running:
                            self.running.remove(running)

            return StreamingResponse(events(), media_type="text/event-stream")

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            return await generate(request, chat=True)

        @app.post("/v1/completions")
        async def completions(request: Request) -> Response:
            return await generate(request, chat=False)

        return app
