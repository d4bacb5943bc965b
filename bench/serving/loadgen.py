"""Open-loop replay of a request schedule against one OpenAI endpoint, timing every token.

Open loop: each request is sent at its arrival time whether or not earlier ones finished, as real
clients do; a closed loop would hide queueing. Bounded: a fixed list of requests, each with a
timeout, to 127.0.0.1 only.

Length enforcement: each request must generate exactly the replayed true length.
``max-tokens`` (the runner's default) sends ``max_tokens`` = true length with ``ignore_eos``: the
engine stops exactly there. It also tells a gateway that the answer has at most that many tokens,
and Goodput's gateway clips its length estimate to ``max_tokens`` - a real client's cap is looser,
so this favours the ``slo`` policy. ``client`` avoids that: no ``max_tokens``, ``ignore_eos``, the
client counts streamed tokens (vLLM's ``return_token_ids``) and closes the stream at the true
length, so the engine aborts the request - but aborts land late on a busy CPU and the engine keeps
generating meanwhile (the runner reports engine-side tokens against client tokens). The oracle
contender alone gets the true length, in ``x-goodput-oracle-output-tokens``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from workload import Request

HEADER_TTFT = "x-goodput-slo-ttft-ms"
HEADER_TPOT = "x-goodput-slo-tpot-ms"
HEADER_ORACLE = "x-goodput-oracle-output-tokens"
HEADER_SESSION = "x-session-id"
HEADER_REQUEST_ID = "x-request-id"


@dataclass(frozen=True)
class SLO:
    ttft_s: float
    tpot_s: float


@dataclass(frozen=True)
class Outcome:
    """What one request experienced, as the client saw it."""

    index: int
    target_tokens: int
    sent_at: float  # seconds from the start of the replay
    status: int  # HTTP status; 0 for a transport error or timeout
    tokens: int
    ttft_s: float | None
    tpot_s: float | None
    done_at: float
    error: str | None = None

    @property
    def held(self) -> bool:
        """Whether the engine held the whole stream and delivered it at once at the end (vLLM's
        API server does when it falls behind a fast engine): every token within 0.05 ms."""
        return self.tokens >= 8 and self.tpot_s is not None and self.tpot_s < 5e-5

    def met(self, slo: SLO) -> bool:
        if self.status != 200 or self.tokens < self.target_tokens or self.ttft_s is None:
            return False
        if self.ttft_s > slo.ttft_s:
            return False
        return self.tpot_s is None or self.tpot_s <= slo.tpot_s


def _tokens_in(chunk: dict[str, Any]) -> int:
    """Tokens carried by one streamed chunk (vLLM's ``token_ids``; else one per text delta)."""
    count = 0
    for choice in chunk.get("choices") or []:
        ids = choice.get("token_ids")
        if ids is not None:
            count += len(ids)
            continue
        delta = choice.get("delta") or {}
        if delta.get("content") or choice.get("text"):
            count += 1
    return count


async def _one(
    client: httpx.AsyncClient,
    url: str,
    model: str,
    request: Request,
    slo: SLO,
    *,
    send_at: float,
    t0: float,
    enforce: str,
    oracle: bool,
    timeout_s: float,
    request_id: str | None = None,
) -> Outcome:
    await asyncio.sleep(max(0.0, t0 + send_at - time.perf_counter()))
    body: dict[str, object] = {
        "model": model,
        "messages": [{"role": role, "content": text} for role, text in request.messages]
        or [{"role": "user", "content": request.prompt}],
        "stream": True,
        "ignore_eos": True,
        "return_token_ids": True,
    }
    if enforce == "max-tokens":
        body["max_tokens"] = request.output_tokens
    headers = {HEADER_TTFT: f"{slo.ttft_s * 1000:.1f}", HEADER_TPOT: f"{slo.tpot_s * 1000:.2f}"}
    if oracle:
        headers[HEADER_ORACLE] = str(request.output_tokens)
    if request.session is not None:
        headers[HEADER_SESSION] = request.session
    if request_id is not None:
        headers[HEADER_REQUEST_ID] = request_id
    start = time.perf_counter()
    first: float | None = None
    last = start
    tokens = 0
    status = 0
    error: str | None = None
    try:
        async with asyncio.timeout(timeout_s):
            async with client.stream("POST", url, json=body, headers=headers) as response:
                status = response.status_code
                if status != 200:
                    error = (await response.aread()).decode(errors="replace")[:300]
                else:
                    async for line in response.aiter_lines():
                        if not line.startswith("data: ") or line == "data: [DONE]":
                            continue
                        n = _tokens_in(json.loads(line[6:]))
                        if n == 0:
                            continue
                        now = time.perf_counter()
                        first = first if first is not None else now
                        last = now
                        tokens += n
                        if tokens >= request.output_tokens:
                            break  # leaving the block closes the stream: the engine aborts
    except (TimeoutError, httpx.HTTPError) as err:
        error = f"{type(err).__name__}: {err}"[:300]
        status = status if tokens else 0
    ttft = None if first is None else first - start
    tpot = (last - first) / (tokens - 1) if first is not None and tokens > 1 else None
    return Outcome(
        index=request.index,
        target_tokens=request.output_tokens,
        sent_at=start - t0,
        status=status,
        tokens=tokens,
        ttft_s=ttft,
        tpot_s=tpot,
        done_at=time.perf_counter() - t0,
        error=error,
    )


async def replay(
    base_url: str,
    model: str,
    requests: Sequence[Request],
    arrivals: Sequence[float],
    slo: SLO,
    *,
    enforce: str = "client",
    oracle: bool = False,
    timeout_s: float = 180.0,
    id_prefix: str | None = None,
) -> list[Outcome]:
    """Send ``requests[i]`` at ``arrivals[i]`` seconds; return every outcome. With
    ``id_prefix``, each request carries ``x-request-id: <id_prefix>-<index>``, which a router
    forwards and a gateway's request log keeps: where each request was served."""
    url = f"{base_url}/v1/chat/completions"
    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=len(requests))
    async with httpx.AsyncClient(timeout=httpx.Timeout(timeout_s), limits=limits) as client:
        t0 = time.perf_counter() + 0.05
        tasks = [
            _one(
                client,
                url,
                model,
                request,
                slo,
                send_at=float(at),
                t0=t0,
                enforce=enforce,
                oracle=oracle,
                timeout_s=timeout_s,
                request_id=None if id_prefix is None else f"{id_prefix}-{request.index}",
            )
            for request, at in zip(requests, arrivals, strict=True)
        ]
        return list(await asyncio.gather(*tasks))
