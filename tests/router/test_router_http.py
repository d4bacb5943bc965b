"""The router over real gateways (before fake engines): OpenAI clients through it, retries
before the first byte, replicas that die or drain, and no replica at all."""

from __future__ import annotations

import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from goodput.api.load_report import LOAD_PATH, SKETCH_SINCE
from goodput.api.prefix_blocks import block_hashes
from goodput.api.router_config import RouterConfig
from goodput.dev.pki import ClusterPKI
from goodput.dev.processes import free_port
from goodput.router.prefix import rendezvous_rank
from goodput.router.stages import stable_hash

from .conftest import API_KEY, Replica

AUTH = {"authorization": f"Bearer {API_KEY}"}


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0)


def test_openai_clients_stream_and_complete_through_the_router(
    replicas: Callable[..., list[Replica]], router_for: Callable[..., tuple[Any, str]]
) -> None:
    reps = replicas(2)
    _, url = router_for([r.url for r in reps])
    c = client(url)
    text = "".join(
        chunk.choices[0].delta.content or ""
        for chunk in c.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=5, stream=True
        )
        if chunk.choices
    )
    assert text
    done = c.completions.create(model="tiny", prompt="hello", max_tokens=4)
    assert done.usage is not None and done.usage.completion_tokens == 4
    assert [m.id for m in c.models.list()] == ["tiny"]
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.create(model="tiny", messages=[], max_tokens=3)
    metrics = httpx.get(f"{url}/metrics").text
    assert 'goodput_router_requests_total{outcome="ok",router="router"} 2.0' in metrics
    assert 'goodput_router_requests_total{outcome="invalid",router="router"} 1.0' in metrics
    assert 'goodput_router_endpoints{router="router",state="ready"} 2.0' in metrics


def test_a_client_that_leaves_mid_stream_stops_the_engine_through_the_router(
    replicas: Callable[..., list[Replica]], router_for: Callable[..., tuple[Any, str]]
) -> None:
    (rep,) = replicas(1)
    router, url = router_for([rep.url])
    stream = client(url).completions.create(model="tiny", prompt="x", max_tokens=2000, stream=True)
    next(iter(stream))
    stream.close()
    deadline = time.monotonic() + 5
    while (rep.engine.aborted == 0 or router.table.all()[0].outstanding) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.02)
    # The router closed its relay at once: the gateway saw the disconnect and aborted the
    # engine's request, long before its 2,000 tokens; the router holds nothing there.
    assert rep.engine.aborted == 1
    assert rep.engine.completed == 0
    assert router.table.all()[0].outstanding == 0


def test_a_second_router_finds_a_prefix_where_the_first_sent_it(
    replicas: Callable[..., list[Replica]], router_for: Callable[..., tuple[Any, str]]
) -> None:
    """Routers agree without talking: the gateways report what their engines were sent (block
    sketches), so router B sends a prompt it never saw to the replica router A put it on —
    here, on purpose, not the prompt's home, where B alone would have sent it."""
    reps = replicas(2)
    urls = [r.url for r in reps]
    _, first_url = router_for(urls)
    second, second_url = router_for(urls)
    prompt = "You are a careful assistant. " * 12 + "Question: what is a prefix cache?"
    blocks = block_hashes(prompt, [], 64)
    affinity = RouterConfig.model_validate({"endpoints": urls}).prefix.affinity_blocks
    home = rendezvous_rank(blocks[min(len(blocks), affinity) - 1], urls)[0]
    session = next(
        f"s{i}" for i in range(100) if rendezvous_rank(stable_hash(f"s{i}"), urls)[0] != home
    )
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 2}
    httpx.post(
        f"{first_url}/v1/completions",
        json=body,
        timeout=30,
        headers={**AUTH, "x-session-id": session},
    ).raise_for_status()
    holder = next(i for i, r in enumerate(reps) if r.engine.received)
    assert urls[holder] != home
    deadline = time.monotonic() + 5  # the next poll of the holder's load report
    while not second.table.all()[holder].held_version and time.monotonic() < deadline:
        time.sleep(0.05)
    httpx.post(
        f"{second_url}/v1/completions",
        json={**body, "prompt": prompt + " And why does it matter?"},
        timeout=30,
        headers=AUTH,
    ).raise_for_status()
    assert [len(r.engine.received) for r in reps][holder] == 2
    # Unchanged sketches are not resent: the router names its version, the gateway omits bits.
    assert second.table.all()[holder].held_version is not None
    load = f"{urls[holder]}{LOAD_PATH}"
    current = httpx.get(load, headers=AUTH).json()["prefixSketch"]
    assert current["bits"] and current["version"] == 2
    same = httpx.get(f"{load}?{SKETCH_SINCE}=2", headers=AUTH).json()["prefixSketch"]
    assert same["bits"] == "" and same["version"] == 2
    assert httpx.get(f"{load}?{SKETCH_SINCE}=1", headers=AUTH).json()["prefixSketch"]["bits"]


def test_a_session_keeps_landing_on_one_replica(
    replicas: Callable[..., list[Replica]], router_for: Callable[..., tuple[Any, str]]
) -> None:
    reps = replicas(3)
    _, url = router_for([r.url for r in reps])
    for i in range(9):
        httpx.post(
            f"{url}/v1/completions",
            json={"model": "tiny", "prompt": f"turn {i}", "max_tokens": 2, "user": "alice"},
            timeout=30,
            headers=AUTH,
        ).raise_for_status()
    served = [len(r.engine.received) for r in reps]
    assert sorted(served) == [0, 0, 9], served


def test_a_replica_that_dies_loses_no_request(
    replicas: Callable[..., list[Replica]], router_for: Callable[..., tuple[Any, str]]
) -> None:
    doomed, alive = replicas(2)
    # Polled once at start (both ready), then not again during the test: the router learns of
    # the death only by connecting, as it would between two polls.
    _, url = router_for([doomed.url, alive.url], pollIntervalS=30)
    doomed.server.should_exit = True
    deadline = time.monotonic() + 10
    while True:
        try:
            httpx.get(f"{doomed.url}/healthz", timeout=1)
        except httpx.ConnectError:
            break
        except httpx.TransportError:  # reset while it shuts down: not gone yet
            pass
        assert time.monotonic() < deadline
        time.sleep(0.05)
    statuses = [
        httpx.post(
            f"{url}/v1/completions",
            json={"model": "tiny", "prompt": f"p{i}" * 40, "max_tokens": 2},
            timeout=30,
            headers=AUTH,
        ).status_code
        for i in range(12)
    ]
    assert statuses == [200] * 12
    assert len(alive.engine.received) == 12
    metrics = httpx.get(f"{url}/metrics").text
    assert 'goodput_router_retries_total{reason="unavailable",router="router"}' in metrics


def test_a_replica_answering_429_is_retried_elsewhere(
    replicas: Callable[..., list[Replica]], router_for: Callable[..., tuple[Any, str]]
) -> None:
    full, free = replicas(2, maxQueueLength=1, maxConcurrency=1)
    full.gateway.draining = True  # answers 503 draining to anything new
    _, url = router_for([full.url, free.url], pollIntervalS=30, filters=["slo-headroom"])
    for i in range(6):
        reply = httpx.post(
            f"{url}/v1/completions",
            json={"model": "tiny", "prompt": f"q{i}" * 30, "max_tokens": 2},
            timeout=30,
            headers=AUTH,
        )
        assert reply.status_code == 200, reply.text
    assert len(free.engine.received) == 6 and not full.engine.received


def test_a_draining_replica_gets_nothing_new_and_finishes_its_streams(
    replicas: Callable[..., list[Replica]], router_for: Callable[..., tuple[Any, str]]
) -> None:
    a, b = replicas(2)
    router, url = router_for([a.url, b.url])
    body = {"model": "tiny", "prompt": "long", "max_tokens": 300, "stream": True, "user": "s"}
    chunks: list[bytes] = []

    def stream() -> None:
        with httpx.stream(
            "POST", f"{url}/v1/completions", json=body, timeout=60, headers=AUTH
        ) as r:
            chunks.extend(r.iter_raw())

    t = threading.Thread(target=stream)
    t.start()
    deadline = time.monotonic() + 10
    while not (a.engine.running or b.engine.running):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    busy, other = (a, b) if a.engine.running else (b, a)
    # Discovery marks the busy replica terminating (what an EndpointSlice says of a deleted pod).
    router.replace_endpoints(
        [(busy.url, busy.url, False, True), (other.url, other.url, True, False)]
    )
    for i in range(5):
        httpx.post(
            f"{url}/v1/completions",
            json={"model": "tiny", "prompt": f"new {i}", "max_tokens": 2, "user": "s"},
            timeout=30,
            headers=AUTH,
        ).raise_for_status()
    t.join(60)
    assert b"[DONE]" in b"".join(chunks)
    assert len(busy.engine.received) == 1 and len(other.engine.received) == 5


def test_no_ready_replica_is_a_503_with_retry_after(
    router_for: Callable[..., tuple[Any, str]],
) -> None:
    _, url = router_for([f"http://127.0.0.1:{free_port()}"])
    reply = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "x"}, timeout=30)
    assert reply.status_code == 503
    assert reply.headers["retry-after"] == "1"
    assert reply.json()["error"]["code"] == "no_replica"
    assert httpx.get(f"{url}/readyz").status_code == 503


def test_a_bad_key_is_refused_by_the_router_before_it_queues(
    replicas: Callable[..., list[Replica]],
    router_for: Callable[..., tuple[Any, str]],
    keys_dir: str,
) -> None:
    (replica,) = replicas(1)
    _, url = router_for([replica.url], auth={"keysDir": keys_dir, "anonymous": False})
    body = {"model": "tiny", "prompt": "x", "max_tokens": 2}
    bad = httpx.post(
        f"{url}/v1/completions", json=body, headers={"authorization": "Bearer nope"}, timeout=30
    )
    assert bad.status_code == 401 and bad.json()["error"]["code"] == "invalid_api_key"
    assert httpx.post(f"{url}/v1/completions", json=body, timeout=30).status_code == 401
    good = httpx.post(f"{url}/v1/completions", json=body, headers=AUTH, timeout=30)
    assert good.status_code == 200
    assert len(replica.engine.received) == 1


def test_goodput_route_runs_as_a_command(
    replicas: Callable[..., list[Replica]], tmp_path: Path
) -> None:
    (replica,) = replicas(1)
    port = free_port()
    log = tmp_path / "router.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "goodput", "route", "--endpoint", replica.url,
             "--port", str(port), "--name", "cli"],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        reply = httpx.post(
            f"{url}/v1/completions",
            json={"model": "tiny", "prompt": "hi", "max_tokens": 3},
            headers=AUTH,
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
        huge = httpx.post(
            f"{url}/v1/completions", content=b"x" * (5 * 1024 * 1024), headers=AUTH, timeout=30
        )
        assert huge.status_code == 413
        metrics = httpx.get(f"{url}/metrics").text
        assert 'goodput_router_requests_total{outcome="ok",router="cli"} 1.0' in metrics
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_goodput_route_speaks_tls(replicas: Callable[..., list[Replica]], tmp_path: Path) -> None:
    (replica,) = replicas(1)
    pki = ClusterPKI(tmp_path / "pki")
    pki.ensure()  # a CA and a server certificate for 127.0.0.1
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "goodput", "route", "--endpoint", replica.url,
         "--port", str(port), "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key)],
        cwd=tmp_path,
    )  # fmt: skip
    trust = ssl.create_default_context(cafile=str(pki.ca_cert))
    try:
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=trust, timeout=30) as c:
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None
                try:
                    if c.get("/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline
                time.sleep(0.2)
            body = {"model": "tiny", "prompt": "hi", "max_tokens": 2}
            assert c.post("/v1/completions", json=body, headers=AUTH).status_code == 200
        with pytest.raises(httpx.HTTPError):  # plain HTTP is not served
            httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
    finally:
        process.terminate()
        process.wait(timeout=30)
