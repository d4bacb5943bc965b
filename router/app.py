"""The router's HTTP surface: the OpenAI routes, health, readiness, metrics and its view of the
replicas; and the wiring of its parts from a ``RouterConfig``."""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp

from goodput.api.router_config import RouterConfig
from goodput.router.endpoints import EndpointTable, LoadPoller
from goodput.router.flow import FlowController
from goodput.router.hold import ReplicaHold
from goodput.router.metrics import RouterMetrics
from goodput.router.proxy import Router, status_body
from goodput.router.stages import RoutingPipeline
from goodput.router.upstream import Upstream
from goodput.serving.http_guard import HttpLimits, RequestGuard


def free_slots(table: EndpointTable) -> int:
    """Requests the replicas could take now without waiting (the flow controller's gate)."""
    return sum(e.free_slots() for e in table.eligible())


def build_router(
    config: RouterConfig,
    *,
    clock: Callable[[], float] = time.monotonic,
    rng: random.Random | None = None,
) -> tuple[Router, LoadPoller, CollectorRegistry]:
    table = EndpointTable(clock)
    if config.endpoints:
        table.replace((url, url.rstrip("/"), True, False) for url in config.endpoints)
    pipeline = RoutingPipeline.from_config(config, clock, rng)
    flow = FlowController(config.flow, lambda: free_slots(table), clock)
    hold = ReplicaHold(config.hold, clock)
    registry = CollectorRegistry(auto_describe=True)
    metrics = RouterMetrics(
        registry,
        router=config.name,
        endpoints=table.all,
        queue_depth=lambda: flow.depth,
        held=lambda: hold.held,
    )
    upstream = Upstream(config.upstream_tls)
    router = Router(config, table, pipeline, flow, metrics, upstream, clock, hold)
    poller = LoadPoller(table, upstream, config.poll_interval_s, on_report=router.capacity_changed)
    return router, poller, registry


def guarded(app: FastAPI, limits: HttpLimits) -> ASGIApp:
    """The gateway's bounded HTTP edge around the router: body size and time, and every
    unexpected exception a counted OpenAI-format 500 that keeps the connection."""
    router: Router = app.state.router
    counter = router.metrics.internal_errors.labels(router.label)
    return RequestGuard(app, limits, on_internal_error=counter.inc)


def create_app(config: RouterConfig) -> FastAPI:
    router, poller, registry = build_router(config)
    watcher = None
    if config.discovery is not None:
        # Imported only here: a router with static endpoints needs no Kubernetes client.
        from goodput.router.discovery import EndpointSliceWatcher

        scheme = "https" if config.upstream_tls is not None else "http"
        watcher = EndpointSliceWatcher(router.replace_endpoints, config.discovery, scheme=scheme)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if watcher is not None:
            await watcher.start()
        await poller.poll_once()
        poller.start()
        try:
            yield
        finally:
            await poller.stop()
            if watcher is not None:
                await watcher.stop()
            await router.upstream.aclose()

    app = FastAPI(
        title="Goodput router", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.router = router

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        return await router.handle(await request.body(), "chat", request.headers)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await router.handle(await request.body(), "completions", request.headers)

    @app.get("/v1/models")
    async def models() -> Response:
        return await router.models()

    @app.get("/healthz")
    async def healthz() -> Response:
        return JSONResponse({"status": "ok"})

    @app.get("/readyz")
    async def readyz() -> Response:
        if router.ready():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"status": "not ready", "reason": "no replica ready"}, 503)

    @app.get("/v1/goodput/endpoints")
    async def endpoints() -> Response:
        return JSONResponse(status_body(router))

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
