"""The router's hold while no replica is ready (scale from zero): requests wait in arrival order
and go on when a replica turns ready; past the bounds they get 503 + Retry-After."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from .conftest import API_KEY, Replica

AUTH = {"authorization": f"Bearer {API_KEY}"}


def _until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def _held(url: str) -> int:
    held: int = httpx.get(f"{url}/v1/goodput/endpoints", timeout=5).json()["held"]
    return held


def test_held_requests_go_on_in_arrival_order_once_a_replica_is_ready(
    replicas: Callable[..., list[Replica]], router_for: Callable[..., tuple[Any, str]]
) -> None:
    (replica,) = replicas(1)
    replica.gateway.draining = True  # reports itself not ready, as a replica still loading
    router, url = router_for([replica.url], hold={"maxQueue": 8, "maxWaitS": 30})
    _until(lambda: not router.table.eligible())
    assert httpx.get(f"{url}/readyz").status_code == 200  # reachable, so that it can hold

    answers: dict[int, httpx.Response] = {}

    def send(i: int) -> None:
        answers[i] = httpx.post(
            f"{url}/v1/completions",
            json={"model": "tiny", "prompt": f"request {i}", "max_tokens": 2},
            headers=AUTH,
            timeout=60,
        )

    threads = []
    for i in range(3):
        threads.append(threading.Thread(target=send, args=(i,)))
        threads[-1].start()
        _until(lambda n=i + 1: _held(url) == n)  # type: ignore[misc]
    metrics = httpx.get(f"{url}/metrics").text
    assert 'goodput_router_held_requests{router="router"} 3.0' in metrics
    assert replica.engine.received == []

    released = time.monotonic()
    replica.gateway.draining = False  # ready: the next load report releases them
    for t in threads:
        t.join(30)
    assert [answers[i].status_code for i in range(3)] == [200, 200, 200]
    assert time.monotonic() - released < 5
    assert [r["prompt"] for r in replica.engine.received] == [f"request {i}" for i in range(3)]
    assert _held(url) == 0
    metrics = httpx.get(f"{url}/metrics").text
    assert 'goodput_router_hold_wait_seconds_count{router="router"} 3.0' in metrics


def test_past_the_holds_bounds_a_request_gets_503_with_retry_after(
    replicas: Callable[..., list[Replica]], router_for: Callable[..., tuple[Any, str]]
) -> None:
    (replica,) = replicas(1)
    replica.gateway.draining = True
    router, url = router_for([replica.url], hold={"maxQueue": 1, "maxWaitS": 1.5})
    _until(lambda: not router.table.eligible())
    body = {"model": "tiny", "prompt": "x", "max_tokens": 2}
    first: dict[str, Any] = {}

    def send() -> None:
        started = time.monotonic()
        first["reply"] = httpx.post(f"{url}/v1/completions", json=body, headers=AUTH, timeout=30)
        first["waited"] = time.monotonic() - started

    t = threading.Thread(target=send)
    t.start()
    _until(lambda: _held(url) == 1)
    full = httpx.post(f"{url}/v1/completions", json=body, headers=AUTH, timeout=30)
    assert full.status_code == 503 and full.headers["retry-after"] == "1"
    assert full.json()["error"]["code"] == "no_replica"
    t.join(30)
    reply = first["reply"]
    assert reply.status_code == 503, reply.text
    assert reply.json()["error"]["code"] == "no_replica_in_time"
    assert int(reply.headers["retry-after"]) >= 1
    assert 1.4 < first["waited"] < 5
    assert replica.engine.received == []
