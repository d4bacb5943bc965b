"""Fixtures for the gateway's HTTP tests: real uvicorn servers on 127.0.0.1, each in a thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import uvicorn

from goodput.api.gateway_config import GatewayConfig
from goodput.dev.processes import free_port
from goodput.serving.app import create_app
from goodput.serving.gateway import Gateway
from goodput.serving.http_guard import HttpLimits, server_config

from .fake_engine import FakeEngine


@contextmanager
def running_server(
    app: Any, limits: HttpLimits | None = None
) -> Iterator[tuple[str, uvicorn.Server]]:
    """``limits``: served as ``goodput serve`` serves the gateway (its guarded HTTP protocol)."""
    port = free_port()
    if limits is None:
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    else:
        config = server_config(app, host="127.0.0.1", port=port, limits=limits, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def fake_engine() -> Iterator[tuple[FakeEngine, str]]:
    engine = FakeEngine()
    with running_server(engine.app) as (url, _):
        yield engine, url


GatewayFactory = Callable[..., tuple[Gateway, str]]


def gateway_config(engine_url: str, **overrides: Any) -> GatewayConfig:
    """The tests' gateway config (SLO 2 s to first token, 200 ms per token), with overrides."""
    data: dict[str, Any] = {
        "deployment": "test",
        "servedModelName": "tiny",
        "engineUrl": engine_url,
        "slo": {"ttftMs": 2000, "tpotMs": 200},
        "policy": "slo",
    }
    return GatewayConfig.model_validate({**data, **overrides})


@pytest.fixture
def gateway_for(fake_engine: tuple[FakeEngine, str]) -> Iterator[GatewayFactory]:
    """Start a gateway in front of the fake engine; keyword arguments override the config
    (``limits``: the HTTP limits it is served with)."""
    _, engine_url = fake_engine
    stack: list[Any] = []

    def start(limits: HttpLimits | None = None, **overrides: Any) -> tuple[Gateway, str]:
        gateway = Gateway(
            gateway_config(engine_url, **overrides),
            engine_health_interval_s=0.2,
            engine_metrics_interval_s=0.2,
        )
        limits = limits or HttpLimits()
        cm = running_server(create_app(gateway, limits=limits), limits)
        url, _ = cm.__enter__()
        stack.append(cm)
        return gateway, url

    yield start
    for cm in reversed(stack):
        cm.__exit__(None, None, None)
