"""The gateway's HTTP surface: the OpenAI routes behind the API-key check, health and
readiness for the kubelet, and the admin routes (metrics, the router's load report) — behind the
same key check on the API port, and without one on the admin port when one is configured (for
Prometheus and the router, which a NetworkPolicy lets reach it)."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp

from goodput.api.gateway_config import AdapterEntry
from goodput.api.load_report import LOAD_PATH, SKETCH_SINCE
from goodput.serving.admission import RejectReason
from goodput.serving.auth import AccessDenied, Tenant
from goodput.serving.engine_client import EngineBroken, EngineUnreachable
from goodput.serving.gateway import Gateway
from goodput.serving.http_guard import HttpLimits, RequestGuard
from goodput.serving.job import Job
from goodput.serving.load_report import load_report
from goodput.serving.openai_errors import (
    OpenAIError,
    access_denied,
    draining,
    engine_unavailable,
    error_body,
    internal_error,
    invalid_request,
    normalize_engine_error,
)
from goodput.serving.openai_request import Endpoint, parse_request
from goodput.serving.proxy import ProxyExchange

HEADER_ORACLE_TOKENS = "x-goodput-oracle-output-tokens"
#: A client's request id is echoed and forwarded only if it is short and plain.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
#: While the engine is down, clients are told to come back after this many seconds.
_ENGINE_DOWN_RETRY_S = 2


def create_app(gateway: Gateway, *, limits: HttpLimits | None = None) -> ASGIApp:
    """The API app; ``create_admin_app`` serves the admin routes without a key."""

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
    _common_routes(app, gateway)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await _accept(gateway, request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _accept(gateway, request, "completions")

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        try:
            gateway.keys.authenticate(request.headers)
        except AccessDenied as denied:
            return _refused(gateway, denied)
        try:
            upstream = await gateway.client.get("/v1/models")
        except (EngineUnreachable, EngineBroken) as exc:
            return engine_unavailable(str(exc)).response()
        if upstream.status != 200:
            body = normalize_engine_error(upstream.status, upstream.body)
            return JSONResponse(body, status_code=upstream.status)
        return Response(upstream.body, media_type="application/json")

    _admin_routes(app, gateway, guarded=True)
    return RequestGuard(
        app, limits or HttpLimits(), on_internal_error=gateway.metrics.internal_errors.inc
    )


def create_admin_app(gateway: Gateway) -> ASGIApp:
    """Metrics and the load report, for Prometheus and the router only (the chart's
    NetworkPolicy lets nothing else reach this port), plus health and readiness."""
    app = FastAPI(title="Goodput gateway admin", docs_url=None, redoc_url=None, openapi_url=None)
    _common_routes(app, gateway)
    _admin_routes(app, gateway, guarded=False)
    return RequestGuard(app, HttpLimits(), on_internal_error=gateway.metrics.internal_errors.inc)


def _common_routes(app: FastAPI, gateway: Gateway) -> None:
    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> Response:
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return JSONResponse(
            error_body(str(exc.detail), type_), status_code=exc.status_code, headers=exc.headers
        )

    @app.exception_handler(Exception)
    async def unexpected(_: Request, exc: Exception) -> Response:
        # Starlette answers with this, then re-raises to the guard, which logs and counts it.
        return internal_error().response()

    @app.get("/healthz")
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        if gateway.ready:
            return JSONResponse({"status": "ready"})
        reason = "draining" if gateway.draining else "engine not ready"
        return JSONResponse({"status": "not ready", "reason": reason}, status_code=503)


def _admin_routes(app: FastAPI, gateway: Gateway, *, guarded: bool) -> None:
    def route(answer: Callable[[Request], Response]) -> Callable[[Request], Awaitable[Response]]:
        async def handler(request: Request) -> Response:
            if guarded:
                try:
                    gateway.keys.authenticate(request.headers)
                except AccessDenied as denied:
                    return _refused(gateway, denied)
            return answer(request)

        return handler

    def load(request: Request) -> Response:
        since = request.query_params.get(SKETCH_SINCE, "")
        report = load_report(gateway, int(since) if since.isdecimal() and len(since) < 19 else None)
        return JSONResponse(report.model_dump(by_alias=True))

    app.add_api_route(LOAD_PATH, route(load), methods=["GET"])
    app.add_api_route(
        "/metrics",
        route(
            lambda _: Response(generate_latest(gateway.registry), media_type=CONTENT_TYPE_LATEST)
        ),
        methods=["GET"],
    )


def _refused(gateway: Gateway, denied: AccessDenied) -> Response:
    reason = {401: "unauthorized", 403: "forbidden"}.get(denied.status, "quota")
    gateway.metrics.refusals.labels(**gateway.metrics.base_labels, reason=reason).inc()
    return access_denied(denied).response()


async def _accept(gateway: Gateway, request: Request, endpoint: Endpoint) -> Response:
    """Authenticate, validate and classify a request, then hand it to a ``ProxyExchange`` to
    queue and serve. Everything cheap is checked before anything costly: the key and quota
    before the body is parsed, the body before the length predictor runs."""
    arrival = gateway.dispatcher.clock()
    default_priority = gateway.config.default_priority
    if gateway.draining:
        gateway.rejected(RejectReason.DRAINING, default_priority)
        return draining().response()
    headers = request.headers
    try:
        tenant: Tenant = gateway.keys.authenticate(headers)
        gateway.quotas.admit(tenant)
    except AccessDenied as denied:
        return _refused(gateway, denied)
    if not gateway.monitor.up:
        gateway.rejected(RejectReason.ENGINE_UNAVAILABLE, default_priority)
        error = engine_unavailable("it does not answer its health check; retry shortly")
        error.headers["Retry-After"] = str(_ENGINE_DOWN_RETRY_S)
        return error.response()
    adapter_quota: Tenant | None = None
    try:
        parsed = parse_request(
            await request.body(), endpoint, gateway.known_models, gateway.max_model_len
        )
        adapter = gateway.adapter_of(parsed.model)
        entry = (
            None if adapter is None or gateway.adapters is None else gateway.adapters.entry(adapter)
        )
        slo = gateway.resolver.resolve(headers, tenant, entry)
        oracle = _oracle_tokens(headers.get(HEADER_ORACLE_TOKENS))
        if entry is not None:
            adapter_quota = _adapter_quota(entry)
            gateway.quotas.admit(adapter_quota)
    except AccessDenied as denied:
        return _refused(gateway, denied)
    except OpenAIError as error:
        gateway.rejected(RejectReason.INVALID, default_priority)
        return error.response()
    given_id = headers.get("x-request-id")
    request_id = given_id if given_id and _REQUEST_ID.fullmatch(given_id) else uuid.uuid4().hex
    job = Job(
        request_id=request_id,
        arrival=arrival,
        slo=slo,
        prompt_tokens=parsed.prompt_tokens_estimate,
        prediction=gateway.predictor_for(adapter).predict(
            parsed.prompt_text, parsed.prompt_tokens_estimate, parsed.max_tokens
        ),
        max_tokens=parsed.max_tokens,
        model=adapter,
        oracle_output_tokens=oracle,
        prefill_work=gateway.uncached_tokens(parsed),
    )
    return ProxyExchange(
        gateway,
        parsed,
        job,
        {"x-request-id": request_id},
        tenant,
        gateway.quotas,
        adapter_quota=adapter_quota,
    )


def _adapter_quota(entry: AdapterEntry) -> Tenant:
    """An adapter's quota as a tenant of its own for the rate and token buckets (``adapter:``
    cannot begin a tenant's file name, so the buckets never mix)."""
    return Tenant(
        name=f"adapter:{entry.name}",
        requests_per_second=entry.requests_per_second,
        burst=entry.burst,
        tokens_per_minute=entry.tokens_per_minute,
    )


def _oracle_tokens(raw: str | None) -> int | None:
    if raw is None:
        return None
    try:
        value = int(raw) if len(raw) <= 9 else -1
    except ValueError:
        value = -1
    if value < 0:
        raise invalid_request(
            f"Header {HEADER_ORACLE_TOKENS} must be a non-negative integer.",
            param=HEADER_ORACLE_TOKENS,
        )
    return value
