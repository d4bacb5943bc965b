"""TLS end to end, as the operator wires it: `goodput serve` and `goodput route` processes
serving HTTPS with one certificate for a Service's name (`llama.ml.svc`, from a CA made here),
the router dialling the gateways by IP and verifying them by that name."""

from __future__ import annotations

import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import httpx
import openai
import pytest
from gateway.conftest import running_server
from gateway.fake_engine import FakeEngine

from goodput.api.router_config import RouterConfig
from goodput.dev.pki import ClusterPKI
from goodput.dev.processes import free_port
from goodput.router.app import create_app as create_router

SERVICE = "llama.ml.svc"  # made up: nothing resolves it, certificates name it


def _in_cluster(request: httpx.Request) -> None:
    """Dial by IP, check the certificate for the Service's name: what a client that resolved
    llama.ml.svc to this address would do."""
    request.extensions.setdefault("sni_hostname", SERVICE)


@contextmanager
def served(
    argv: list[str], port: int, log: Path, trust: ssl.SSLContext, name: str = SERVICE
) -> Iterator[str]:
    """A `python -m goodput ...` HTTPS server on ``port``, once its /healthz answers (to a
    client checking for ``name``)."""
    url = f"https://127.0.0.1:{port}"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "goodput", *argv, "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        with httpx.Client(verify=trust) as c:
            deadline = time.monotonic() + 60
            while True:
                assert process.poll() is None, log.read_text()
                try:
                    reply = c.get(f"{url}/healthz", timeout=2, extensions={"sni_hostname": name})
                    if reply.status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def pki(tmp_path: Path) -> ClusterPKI:
    """A CA, a certificate for the Service's name (no IP address in it) and one for another."""
    pki = ClusterPKI(tmp_path / "pki")
    pki.ensure()
    pki.ensure_serving("llama", SERVICE, (), (SERVICE,))
    pki.ensure_serving("other", "other.ml.svc", (), ("other.ml.svc",))
    return pki


def _tls(pki: ClusterPKI, stem: str) -> list[str]:
    cert, key = pki.directory / f"{stem}.crt", pki.directory / f"{stem}.key"
    return ["--tls-cert", str(cert), "--tls-key", str(key)]


def _gateway(engine_url: str, pki: ClusterPKI, stem: str) -> list[str]:
    return [
        "serve", "--engine-url", engine_url, "--deployment", "llama", "--served-model-name",
        "tiny", "--ttft-ms", "60000", "--tpot-ms", "1000", "--admin-port", str(free_port()),
        *_tls(pki, stem),
    ]  # fmt: skip


def test_a_chat_completion_goes_through_router_and_gateway_over_verified_https(
    pki: ClusterPKI, tmp_path: Path
) -> None:
    trust = ssl.create_default_context(cafile=str(pki.ca_cert))
    with ExitStack() as stack:
        good_engine, bad_engine = FakeEngine(), FakeEngine()
        good_engine_url, _ = stack.enter_context(running_server(good_engine.app))
        bad_engine_url, _ = stack.enter_context(running_server(bad_engine.app))
        good = stack.enter_context(
            served(_gateway(good_engine_url, pki, "llama"), free_port(), tmp_path / "gw1", trust)
        )
        # A gateway of the same CA whose certificate names another Service.
        bad_port = free_port()
        bad_argv = _gateway(bad_engine_url, pki, "other")
        stack.enter_context(served(bad_argv, bad_port, tmp_path / "gw2", trust, "other.ml.svc"))
        router = stack.enter_context(
            served(
                [
                    "route", "--name", "tls", "--endpoint", good, "--endpoint",
                    f"https://127.0.0.1:{bad_port}", "--upstream-ca", str(pki.ca_cert),
                    "--upstream-server-name", SERVICE, *_tls(pki, "llama"),
                ],
                free_port(),
                tmp_path / "router",
                trust,
            )
        )  # fmt: skip
        http = stack.enter_context(
            httpx.Client(verify=trust, event_hooks={"request": [_in_cluster]}, timeout=30)
        )
        client = openai.OpenAI(
            base_url=f"{router}/v1", api_key="unused", http_client=http, max_retries=0
        )
        for i in range(6):
            answer = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": f"hi {i}"}], max_tokens=3
            )
            assert answer.choices[0].message.content
        streamed = client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "go"}], max_tokens=3, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        # Every request reached the gateway whose certificate names the Service; the one whose
        # certificate does not was never sent one, though it serves (to a client asking for
        # its own name).
        assert len(good_engine.received) == 7 and not bad_engine.received
        view = http.get(f"{router}/v1/goodput/endpoints").json()["endpoints"]
        assert {e["url"]: e["report"]["ready"] for e in view} == {
            good: True,
            f"https://127.0.0.1:{bad_port}": False,
        }
        other = {"sni_hostname": "other.ml.svc"}
        reply = http.get(f"https://127.0.0.1:{bad_port}/readyz", extensions=other)
        assert reply.status_code == 200
        # A client that does not trust the CA is refused, as is plain HTTP.
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            httpx.get(f"{router}/healthz", timeout=5)
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://{router.removeprefix('https://')}/healthz", timeout=5)
        # A client checking for another name is refused too: the certificate is the Service's.
        fresh = stack.enter_context(httpx.Client(verify=trust))  # no pooled connection
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            fresh.get(f"{router}/healthz", extensions=other)


@pytest.mark.parametrize("ca_file", ["missing", "ours"])
def test_without_the_secrets_ca_the_router_trusts_only_the_systems_store(
    pki: ClusterPKI, tmp_path: Path, ca_file: str
) -> None:
    """``caFile`` names a Secret's ``ca.crt``, which a Secret may lack: then the system's store
    decides, which does not know this test's CA, so the gateway is refused."""
    trust = ssl.create_default_context(cafile=str(pki.ca_cert))
    with ExitStack() as stack:
        engine = FakeEngine()
        engine_url, _ = stack.enter_context(running_server(engine.app))
        gateway = stack.enter_context(
            served(_gateway(engine_url, pki, "llama"), free_port(), tmp_path / "gw", trust)
        )
        ca = str(pki.ca_cert) if ca_file == "ours" else str(tmp_path / "absent" / "ca.crt")
        config = RouterConfig.model_validate(
            {
                "endpoints": [gateway],
                "pollIntervalS": 0.1,
                "upstreamTls": {"caFile": ca, "serverName": SERVICE},
            }
        )
        url, _ = stack.enter_context(running_server(create_router(config)))
        reply = httpx.post(
            f"{url}/v1/completions",
            json={"model": "tiny", "prompt": "hi", "max_tokens": 2},
            timeout=30,
        )
        if ca_file == "ours":
            assert reply.status_code == 200, reply.text
        else:
            assert reply.status_code == 503 and not engine.received
