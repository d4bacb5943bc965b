"""Property-based fuzzing of the gateway's HTTP surface (issue 15): Hypothesis builds requests —
mostly OpenAI-shaped, with every field and header drawn from valid, edge and hostile values, and
some raw bytes — and sends them to a gateway in front of the fake engine (the real engine is too
slow for thousands). The property: every answer is below 500 (the fake engine never fails, so a
5xx could only be the gateway's own making), every error is in the OpenAI shape, every stream
ends, and nothing hangs (each request has a 10 s timeout).

``GOODPUT_FUZZ_EXAMPLES`` sets the number of requests (CI: 2,000); ``GOODPUT_FUZZ_REPORT`` names a
JSON file for the counts (``bench/serving/fuzz.py`` runs the long version).
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from goodput.serving.app import create_app
from goodput.serving.auth import hash_key
from goodput.serving.gateway import Gateway
from goodput.serving.http_guard import HttpLimits

from .conftest import gateway_config, running_server
from .fake_engine import FakeEngine

EXAMPLES = int(os.environ.get("GOODPUT_FUZZ_EXAMPLES", "2000"))
KEY = "fuzz-key"

# -- strategies ---------------------------------------------------------------------------------

_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["\ud800", "\x00", " " * 2000, "é" * 50, "word " * 200]),
)
_tokens = st.one_of(
    st.integers(min_value=1, max_value=8),  # mostly small: valid requests stay fast
    st.sampled_from([0, -1, 2**31, 10**6, 255, 256, 257]),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
    st.none(),
)
_message = st.one_of(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant"]), "content": _text}
    ),
    st.fixed_dictionaries(
        {
            "role": st.one_of(st.text(max_size=8), _json),
            "content": st.one_of(
                _json, st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": _text}))
            ),
        }
    ),
    _json,
)


def _optional(draw: st.DrawFn, body: dict[str, Any], name: str, values: Any) -> None:
    if draw(st.booleans()):
        body[name] = draw(values)


@st.composite
def _openai_body(draw: st.DrawFn, chat: bool) -> dict[str, Any]:
    body: dict[str, Any] = {}
    _optional(draw, body, "model", st.one_of(st.just("tiny"), st.just("tiny"), _json))
    if chat:
        _optional(draw, body, "messages", st.one_of(st.lists(_message, max_size=4), _json))
        _optional(draw, body, "max_completion_tokens", _tokens)
    else:
        prompt = st.one_of(
            _text,
            st.lists(st.integers(min_value=-5, max_value=50_000), max_size=300),
            st.lists(_text, max_size=3),
            st.lists(st.lists(st.integers(min_value=0, max_value=100), max_size=5), max_size=3),
            _json,
        )
        _optional(draw, body, "prompt", prompt)
    _optional(draw, body, "max_tokens", _tokens)
    _optional(draw, body, "stream", st.one_of(st.booleans(), _json))
    _optional(
        draw,
        body,
        "stream_options",
        st.one_of(st.fixed_dictionaries({"include_usage": st.booleans()}), _json),
    )
    _optional(draw, body, "temperature", _json)
    _optional(draw, body, draw(st.text(min_size=1, max_size=10)), _json)
    return body


_number_text = st.one_of(
    st.floats().map(repr),
    st.integers().map(str),
    st.sampled_from(["nan", "inf", "-inf", "1.79e308", "1e-320", "-0", "", "5 5", "0x10"]),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=12),
).map(str.strip)  # what HTTP allows in a header value: no surrounding whitespace
_header_text = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80
).map(str.strip)
_headers = st.fixed_dictionaries(
    {},
    optional={
        "authorization": st.one_of(
            st.just(f"Bearer {KEY}"), st.just("Bearer wrong"), st.just("Basic x"), _header_text
        ),
        "x-goodput-priority": st.one_of(st.sampled_from(["default", "bulk", ""]), _header_text),
        "x-goodput-slo-ttft-ms": _number_text,
        "x-goodput-slo-tpot-ms": _number_text,
        "x-goodput-slo-e2e-ms": _number_text,
        "x-goodput-oracle-output-tokens": _number_text,
        "x-request-id": _header_text,
        "content-type": st.sampled_from(["application/json", "text/plain", "a/b"]),
    },
)


_objective = st.floats(min_value=0.001, max_value=1e308).map(repr)
_benign_headers = st.fixed_dictionaries(
    {},
    optional={
        "authorization": st.just(f"Bearer {KEY}"),  # half the time; else anonymous
        "x-goodput-priority": st.just("default"),
        "x-goodput-slo-ttft-ms": _objective,
        "x-goodput-slo-tpot-ms": _objective,
        "x-goodput-slo-e2e-ms": _objective,
        "x-goodput-oracle-output-tokens": st.integers(0, 10**6).map(str),
        "x-request-id": st.from_regex(r"[A-Za-z0-9-]{1,40}", fullmatch=True),
    },
)


@st.composite
def _nearly_valid_body(draw: st.DrawFn, chat: bool) -> dict[str, Any]:
    """A request that should be served, with at most one field drawn from anything."""
    body: dict[str, Any] = {
        "model": "tiny",
        "max_tokens": draw(st.integers(min_value=1, max_value=8)),
        "stream": draw(st.booleans()),
    }
    if chat:
        body["messages"] = draw(st.lists(_message, min_size=1, max_size=3))
    else:
        body["prompt"] = draw(st.one_of(_text, st.lists(st.integers(0, 1000), min_size=1)))
    if draw(st.booleans()):
        body[draw(st.sampled_from(["stream_options", "temperature", "n", "stop", "seed"]))] = draw(
            _json
        )
    return body


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes | None]:
    """(method, path, headers, body): a (nearly) valid API call, a wild one, a raw one, or
    another route."""
    kind = draw(st.sampled_from(["valid", "valid", "valid", "chat", "text", "raw", "other"]))
    headers = draw(_headers)
    if kind == "valid":
        chat = draw(st.booleans())
        path = "/v1/chat/completions" if chat else "/v1/completions"
        return (
            "POST",
            path,
            draw(_benign_headers),
            json.dumps(draw(_nearly_valid_body(chat))).encode(),
        )
    if kind in ("chat", "text"):
        path = "/v1/chat/completions" if kind == "chat" else "/v1/completions"
        body = json.dumps(draw(_openai_body(kind == "chat")), default=str).encode()
        return "POST", path, headers, body
    if kind == "raw":
        raw = draw(
            st.one_of(
                st.binary(max_size=200),
                st.integers(min_value=1, max_value=3000).map(lambda n: b"[" * n + b"]" * n),
                st.integers(min_value=1, max_value=3000).map(lambda n: b'{"a":' * n + b"1"),
                st.just(b'{"model":"tiny","prompt":"x","max_tokens":1e999}'),
            )
        )
        return (
            "POST",
            draw(st.sampled_from(["/v1/chat/completions", "/v1/completions"])),
            headers,
            raw,
        )
    method = draw(st.sampled_from(["GET", "POST", "PUT", "DELETE"]))
    path = draw(
        st.one_of(
            st.sampled_from(["/v1/models", "/metrics", "/readyz", "/healthz", "/v1/goodput/load"]),
            st.text(alphabet="/abcv1%.?=&", max_size=20).map(lambda p: "/" + p),
        )
    )
    return method, path, headers, None


# -- the target ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    keys = tmp_path_factory.mktemp("keys")
    tenant = {"keys": [hash_key(KEY)], "priorities": ["default", "bulk"], "slo": {"minTpotMs": 5}}
    (keys / "fuzzer.yaml").write_text(json.dumps(tenant))
    engine = FakeEngine(step_base_s=0.0002, step_per_request_s=0.00005, max_model_len=256)
    with ExitStack() as stack:
        engine_url, _ = stack.enter_context(running_server(engine.app))
        config = gateway_config(
            engine_url,
            priorityClasses=[{"name": "default"}, {"name": "bulk", "rank": 1}],
            auth={"keysDir": str(keys), "anonymous": True},
        )
        gateway = Gateway(config, engine_health_interval_s=0.5, engine_metrics_interval_s=1.0)
        limits = HttpLimits(max_body_bytes=256 * 1024)
        url, _ = stack.enter_context(running_server(create_app(gateway, limits=limits), limits))
        yield url


def _judge(response: httpx.Response, body: bytes) -> str:
    """What went wrong with one answer, or '' if it is as the property wants."""
    if response.status_code >= 500:
        return f"{response.status_code}: {body[:300]!r}"
    if response.status_code >= 400 and response.headers.get("content-type", "").startswith(
        "application/json"
    ):
        error = json.loads(body).get("error")
        if not (isinstance(error, dict) and {"message", "type", "param", "code"} <= set(error)):
            return f"not the OpenAI error shape: {body[:300]!r}"
    elif response.status_code >= 400 and response.status_code not in (404, 405):
        return f"{response.status_code} not in JSON: {body[:300]!r}"
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        events = [e for e in body.split(b"\n\n") if e.strip()]
        if not events or events[-1] != b"data: [DONE]":
            return f"a stream that did not end with [DONE]: {body[-300:]!r}"
        if any(e.startswith(b'data: {"error"') for e in events):
            return f"an error event: {body[-300:]!r}"
    return ""


def test_fuzzed_requests_never_get_a_gateway_5xx_or_hang(fuzz_target: str) -> None:
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    hangs: list[str] = []
    started = time.monotonic()
    with httpx.Client(base_url=fuzz_target, timeout=10.0) as http:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(requests())
        def one(request: tuple[str, str, dict[str, str], bytes | None]) -> None:
            method, path, headers, body = request
            try:
                with http.stream(method, path, headers=headers, content=body) as response:
                    content = response.read()
            except httpx.TimeoutException:
                hangs.append(f"{method} {path} {headers} {body!r:.300}")
                return
            statuses[response.status_code] += 1
            verdict = _judge(response, content)
            if verdict:
                failures.append(f"{method} {path} {headers} {body!r:.300}: {verdict}")

        one()
    elapsed = time.monotonic() - started
    report = os.environ.get("GOODPUT_FUZZ_REPORT")
    if report:
        Path(report).write_text(
            json.dumps(
                {"requests": sum(statuses.values()) + len(hangs), "seconds": elapsed,
                 "statuses": dict(sorted(statuses.items())), "hangs": len(hangs),
                 "failures": (hangs + failures)[:50]},
                indent=2,
            )
        )  # fmt: skip
    metrics = httpx.get(f"{fuzz_target}/metrics", headers={"authorization": f"Bearer {KEY}"})
    internal = [
        line
        for line in metrics.text.splitlines()
        if line.startswith("goodput_internal_errors_total")
    ]
    assert sum(statuses.values()) + len(hangs) >= EXAMPLES
    assert not hangs, "no answer within 10 s:\n" + "\n".join(hangs[:10])
    assert not failures, "\n".join(failures[:10])
    assert internal and internal[0].endswith(" 0.0"), internal
