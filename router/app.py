"""The router's HTTP surface: the OpenAI routes, health, readiness, metrics and its view of the
replicas; and the wiring of its parts from a ``RouterConfig``."""

from __future__ import annotations

import functools
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.datastructures import Headers, State
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from goodput.api.router_config import RouterConfig
from goodput.router.adapters import AdapterColdLoads
from goodput.router.endpoints import EndpointTable, LoadPoller
from goodput.router.flow import FlowController
from goodput.router.hold import ReplicaHold
from goodput.router.metrics import RouterMetrics
from goodput.router.proxy import Router, status_body
from goodput.router.stages import RoutingPipeline
from goodput.router.upstream import Upstream
from goodput.serving.http_guard import HttpLimits, RequestGuard
from goodput.serving.openai_request import Endpoint as Route

_ROUTES: dict[str, Route] = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}


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
    for model in config.cascade.models if config.cascade is not None else ():
        table.replace(((url, url.rstrip("/"), True, False) for url in model.endpoints), model.name)
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
    registry.register(AdapterColdLoads(config.name, lambda: [s for s, _ in pipeline.scorers]))
    upstream = Upstream(config.upstream_tls)
    router = Router(config, table, pipeline, flow, metrics, upstream, clock, hold)
    poller = LoadPoller(
        table,
        upstream,
        config.poll_interval_s,
        on_report=router.capacity_changed,
        block_chars=config.prefix.block_chars,
    )
    return router, poller, registry


class RouterApp:
    """The router's ASGI app: the two routes every routed request takes are answered straight
    from ASGI, the rest by a FastAPI app. FastAPI's routing and request layers cost most of a
    millisecond per request here (docs/router.md, "Cost"), which is what the router may add."""

    def __init__(self, app: FastAPI, router: Router) -> None:
        self.app = app
        self.router = router

    @property
    def state(self) -> State:
        return self.app.state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = _ROUTES.get(scope["path"]) if scope["type"] == "http" else None
        if route is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = bytearray()
        while True:  # the guard outside has bounded it already
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        response = await self.router.handle(bytes(body), route, Headers(scope=scope))
        await response(scope, receive, send)


def guarded(app: RouterApp, limits: HttpLimits) -> ASGIApp:
    """The gateway's bounded HTTP edge around the router: body size and time, and every
    unexpected exception a counted OpenAI-format 500 that keeps the connection."""
    counter = app.router.metrics.internal_errors.labels(app.router.label)
    return RequestGuard(app, limits, on_internal_error=counter.inc)


def create_app(config: RouterConfig) -> RouterApp:
    router, poller, registry = build_router(config)
    sources = [("", config.discovery)] + [
        (m.name, m.discovery) for m in (config.cascade.models if config.cascade else ())
    ]
    watchers = []
    if any(spec is not None for _, spec in sources):
        # Imported only here: a router with static endpoints needs no Kubernetes client.
        from goodput.router.discovery import EndpointSliceWatcher

        scheme = "https" if config.upstream_tls is not None else "http"
        watchers = [
            EndpointSliceWatcher(
                functools.partial(router.replace_endpoints, group=group), spec, scheme=scheme
            )
            for group, spec in sources
            if spec is not None
        ]

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        for watcher in watchers:  # one per Service: a cascade's models each have theirs
            await watcher.start()
        await poller.poll_once()
        poller.start()
        try:
            yield
        finally:
            await poller.stop()
            for watcher in watchers:
                await watcher.stop()
            await router.upstream.aclose()

    app = FastAPI(
        title="Goodput router", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
    )
    app.state.router = router

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

    return RouterApp(app, router)
