"""The gateway's HTTP surface: the OpenAI routes, health, readiness and metrics."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response

from goodput.api.load_report import LOAD_PATH
from goodput.serving.admission import RejectReason
from goodput.serving.engine_client import EngineBroken, EngineUnreachable
from goodput.serving.gateway import Gateway
from goodput.serving.job import Job
from goodput.serving.load_report import load_report
from goodput.serving.openai_errors import (
    OpenAIError,
    draining,
    engine_unavailable,
    error_body,
    invalid_request,
    normalize_engine_error,
)
from goodput.serving.openai_request import Endpoint, parse_request
from goodput.serving.proxy import ProxyExchange

HEADER_ORACLE_TOKENS = "x-goodput-oracle-output-tokens"
_FORWARDED_HEADERS = ("authorization",)


def create_app(gateway: Gateway) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await gateway.start()
        try:
            yield
        finally:
            await gateway.stop()

    app = FastAPI(
        title="Goodput gateway", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.gateway = gateway

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> Response:
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(
            error_body(str(exc.detail), type_), status_code=exc.status_code, headers=exc.headers
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _accept(gateway, request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _accept(gateway, request, "completions")

    @app.get("/v1/models")
    async def models() -> Response:
        try:
            upstream = await gateway.client.get("/v1/models")
        except (EngineUnreachable, EngineBroken) as exc:
            return engine_unavailable(str(exc)).response()
        if upstream.status != 200:
            body = normalize_engine_error(upstream.status, upstream.body)
            return JSONResponse(body, status_code=upstream.status)
        return Response(upstream.body, media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        if gateway.ready:
            return JSONResponse({"status": "ready"})
        reason = "draining" if gateway.draining else "engine not ready"
        return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)

    @app.get(LOAD_PATH)
    async def load() -> Response:
        """For the cluster router: cheap, polled every few hundred milliseconds."""
        return JSONResponse(load_report(gateway).model_dump(by_alias=True))

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(gateway.registry), media_type=CONTENT_TYPE_LATEST)

    return app


async def _accept(gateway: Gateway, request: Request, endpoint: Endpoint) -> Response:
    """Validate and classify a request, then hand it to a ``ProxyExchange`` to queue and serve."""
    arrival = gateway.dispatcher.clock()
    default_priority = gateway.config.default_priority
    if gateway.draining:
        gateway.rejected(RejectReason.DRAINING, default_priority)
        return draining().response()
    headers = request.headers
    try:
        parsed = parse_request(
            await request.body(), endpoint, gateway.known_models, gateway.max_model_len
        )
        slo = gateway.resolver.resolve(headers)
        oracle = _oracle_tokens(headers.get(HEADER_ORACLE_TOKENS))
    except OpenAIError as error:
        gateway.rejected(RejectReason.INVALID, default_priority)
        return error.response()
    request_id = headers.get("x-request-id") or uuid.uuid4().hex
    job = Job(
        request_id=request_id,
        arrival=arrival,
        slo=slo,
        prompt_tokens=parsed.prompt_tokens_estimate,
        prediction=gateway.predictor.predict(
            parsed.prompt_text, parsed.prompt_tokens_estimate, parsed.max_tokens
        ),
        max_tokens=parsed.max_tokens,
        oracle_output_tokens=oracle,
    )
    forward = {"x-request-id": request_id}
    for name in _FORWARDED_HEADERS:
        if name in headers:
            forward[name] = headers[name]
    return ProxyExchange(gateway, parsed, job, forward)


def _oracle_tokens(raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise invalid_request(
            f"Header {HEADER_ORACLE_TOKENS} must be a non-negative integer.",
            param=HEADER_ORACLE_TOKENS,
        )
    return value
