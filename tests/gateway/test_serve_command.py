"""``goodput serve`` as a real process: it serves, writes the request log (prompts left out,
readable by its owner only), and drains on SIGTERM (readiness false, new requests 503, the
in-flight stream finishes, then a clean exit); it speaks TLS and keeps its metrics on an admin
port when asked."""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from goodput.dev.pki import ClusterPKI
from goodput.dev.processes import free_port
from goodput.serving.auth import hash_key

from .fake_engine import FakeEngine


def test_serve_drains_on_sigterm(fake_engine: tuple[FakeEngine, str], tmp_path: Path) -> None:
    _, engine_url = fake_engine
    port = free_port()
    log_path = tmp_path / "requests.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "goodput", "serve",
            "--engine-url", engine_url, "--port", str(port),
            "--deployment", "d", "--served-model-name", "tiny",
            "--ttft-ms", "2000", "--tpot-ms", "200",
            "--request-log", str(log_path), "--drain-timeout", "20",
        ],
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "gateway did not start"
            time.sleep(0.1)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        stream = client.completions.create(model="tiny", prompt="x", max_tokens=400, stream=True)
        chunks = iter(stream)
        next(chunks)  # the request is in flight
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert httpx.get(f"{url}/readyz").status_code == 503
        refused = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "prompt": "x"})
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "draining"
        rest = list(chunks)  # the in-flight stream still completes
        assert rest[-1].choices[0].finish_reason == "length"
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert len(records) == 1
    assert records[0]["output_tokens"] == 400 and records[0]["max_tokens"] == 400
    assert records[0]["prompt"] == "" and records[0]["deployment"] == "d"  # not kept by default
    assert log_path.stat().st_mode & 0o777 == 0o600
    assert set(records[0]) == {
        "ts", "deployment", "model", "request_id", "prompt", "prompt_tokens", "max_tokens",
        "predicted_p50", "predicted_p90", "output_tokens", "finish_reason",
    }  # fmt: skip


def test_serve_speaks_tls_wants_keys_and_serves_metrics_keyless_on_the_admin_port(
    fake_engine: tuple[FakeEngine, str], tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    (keys / "team.yaml").write_text(json.dumps({"keys": [hash_key("k")]}))
    pki = ClusterPKI(tmp_path / "pki")
    pki.ensure()  # a CA and a server certificate for 127.0.0.1
    port, admin = free_port(), free_port()
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "goodput", "serve",
            "--engine-url", fake_engine[1], "--port", str(port), "--admin-port", str(admin),
            "--deployment", "d", "--served-model-name", "tiny",
            "--ttft-ms", "2000", "--tpot-ms", "200",
            "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key),
            "--keys-dir", str(keys), "--no-anonymous",
        ],
    )  # fmt: skip
    trust = ssl.create_default_context(cafile=str(pki.ca_cert))
    try:
        with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=trust) as api:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if api.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline and proc.poll() is None, "did not start"
                time.sleep(0.1)
            body = {"model": "tiny", "prompt": "x", "max_tokens": 2}
            assert api.post("/v1/completions", json=body).status_code == 401
            key = {"authorization": "Bearer k"}
            assert api.post("/v1/completions", json=body, headers=key).status_code == 200
            assert api.get("/metrics").status_code == 401  # on the API port: a key
            assert api.get("/metrics", headers=key).status_code == 200
        metrics = httpx.get(f"http://127.0.0.1:{admin}/metrics")
        assert metrics.status_code == 200 and "goodput_requests_total" in metrics.text
        assert httpx.get(f"http://127.0.0.1:{admin}/v1/goodput/load").json()["ready"] is True
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0


def _serve(engine_url: str, *args: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "goodput", "serve", "--engine-url", engine_url,
         "--port", str(port), "--deployment", "d", "--served-model-name", "tiny",
         "--ttft-ms", "2000", "--tpot-ms", "200", *args],
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/readyz").status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline and proc.poll() is None, "gateway did not start"
        time.sleep(0.1)


@pytest.mark.parametrize("signals", [1, 2])
def test_a_stream_past_the_drain_ends_with_an_error_event(
    fake_engine: tuple[FakeEngine, str], signals: int
) -> None:
    """Past the grace period (one signal) or at once (a second signal), a stream still running
    ends with an error event rather than a cut connection, and the gateway exits."""
    proc, url = _serve(fake_engine[1], "--drain-timeout", "1")
    try:
        body = {"model": "tiny", "prompt": "x", "max_tokens": 2000, "stream": True}
        with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as stream:
            events = stream.iter_lines()
            assert next(events).startswith("data: {")  # in flight, ~5 s of tokens to come
            proc.send_signal(signal.SIGTERM)
            if signals == 2:
                time.sleep(0.2)
                proc.send_signal(signal.SIGTERM)
            started = time.monotonic()
            rest = [line for line in events if line]
            ended_after = time.monotonic() - started
        assert rest[-1].startswith('data: {"error"') and '"draining"' in rest[-1]
        assert ended_after < (1.0 if signals == 2 else 3.0), ended_after
        # A forced exit reports the signal, as a process killed by it would.
        assert proc.wait(timeout=10) == (0 if signals == 1 else 128 + signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
