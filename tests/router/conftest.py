"""Fixtures for the router's HTTP tests: replicas (a gateway before a fake engine, each a real
uvicorn server on 127.0.0.1) and a router in front of them."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from gateway.conftest import running_server
from gateway.fake_engine import FakeEngine

from goodput.api.gateway_config import GatewayConfig
from goodput.api.router_config import RouterConfig
from goodput.router.app import create_app as create_router
from goodput.serving.app import create_app as create_gateway
from goodput.serving.gateway import Gateway


@dataclass
class Replica:
    engine: FakeEngine
    gateway: Gateway
    url: str
    server: Any


API_KEY = "sk-router-test"


@pytest.fixture
def keys_dir(tmp_path: Path) -> str:
    """One tenant, ``team``, with the key ``API_KEY`` (hashed, as in the Secret)."""
    keys = tmp_path / "keys"
    keys.mkdir()
    digest = hashlib.sha256(API_KEY.encode()).hexdigest()
    (keys / "team.yaml").write_text(f'keys: ["sha256:{digest}"]\n')
    return str(keys)


@pytest.fixture
def replicas(keys_dir: str) -> Iterator[Callable[..., list[Replica]]]:
    """Gateways that know one tenant's key (``API_KEY``): the router passes the caller's key on
    and the gateway checks it."""
    keys = keys_dir
    with ExitStack() as stack:

        def start(n: int, model: str = "tiny", **gateway: Any) -> list[Replica]:
            out = []
            for _ in range(n):
                engine = FakeEngine(model=model)
                _, engine_url, *_ = (None, *stack.enter_context(running_server(engine.app)))
                data: dict[str, Any] = {
                    "deployment": "test",
                    "servedModelName": model,
                    "engineUrl": engine_url,
                    "slo": {"ttftMs": 60_000, "tpotMs": 1000},
                    "auth": {"keysDir": keys},
                }
                data.update(gateway)
                gw = Gateway(
                    GatewayConfig.model_validate(data),
                    engine_health_interval_s=0.2,
                    engine_metrics_interval_s=0.2,
                )
                url, server = stack.enter_context(running_server(create_gateway(gw)))
                out.append(Replica(engine, gw, url, server))
            return out

        yield start


@pytest.fixture
def router_for() -> Iterator[Callable[..., tuple[Any, str]]]:
    """A router over the given URLs; keyword arguments override its config."""
    with ExitStack() as stack:

        def start(urls: list[str], **overrides: Any) -> tuple[Any, str]:
            data: dict[str, Any] = {"endpoints": urls, "pollIntervalS": 0.1}
            data.update(overrides)
            app = create_router(RouterConfig.model_validate(data))
            url, _ = stack.enter_context(running_server(app))
            return app.state.router, url

        yield start
