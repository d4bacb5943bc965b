"""One request's exchange, as an ASGI response: wait for the dispatcher, forward to the engine,
relay the answer (streamed or not), and account for how it ended.

It is a raw ASGI callable rather than a ``StreamingResponse`` because it must notice a client
that leaves at any point — while queued, before the engine's first byte, mid-stream — and then
cancel the upstream request, which closes the engine connection so vLLM aborts the generation
and the dispatcher frees the slot. The gateway may end it the same way (``abandon``): an engine
gone silent, a drain past its grace period; the client then gets an OpenAI error (an error event
if the stream had started) rather than a cut connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from goodput.api.prefix_blocks import prompt_token_ids
from goodput.serving.adapters import AdapterLoadError
from goodput.serving.admission import Rejection, RejectReason
from goodput.serving.auth import Quotas, Tenant
from goodput.serving.engine_client import EngineBroken, EngineStream, EngineUnreachable
from goodput.serving.gateway import Gateway
from goodput.serving.job import Job
from goodput.serving.openai_errors import (
    OpenAIError,
    adapter_unavailable,
    engine_failed,
    engine_unavailable,
    normalize_engine_error,
    rate_limited,
)
from goodput.serving.openai_request import ParsedRequest, upstream_body

log = logging.getLogger(__name__)

_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
#: Token counts above this are not believed from any engine.
_MAX_PLAUSIBLE_TOKENS = 10_000_000
_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class ProxyExchange(Response):
    def __init__(
        self,
        gateway: Gateway,
        request: ParsedRequest,
        job: Job,
        headers: dict[str, str],
        tenant: Tenant,
        quotas: Quotas,
        *,
        adapter_quota: Tenant | None = None,
    ) -> None:
        # Response.__init__ is not called: this object writes its own ASGI messages.
        self.gateway = gateway
        self.request = request
        self.job = job
        self.forward_headers = headers
        self.tenant = tenant
        self.quotas = quotas
        self.adapter_quota = adapter_quota
        self.background = None
        self._started = False
        self._completed = False
        self._output_tokens = 0
        self._end: float | None = None
        self._engine_byte_at: float | None = None
        self._abandoned = asyncio.Event()
        self._abandon_error: OpenAIError | None = None

    def engine_idle_since(self) -> float | None:
        return self._engine_byte_at

    def abandon(self, message: str, code: str) -> None:
        self._abandon_error = OpenAIError(
            503, message, "server_error", code=code, headers={"Retry-After": "1"}
        )
        self._abandoned.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gw = self.gateway
        gw.exchange_started(self)
        work = asyncio.ensure_future(self._serve(send))
        watcher = asyncio.ensure_future(_client_gone(receive))
        abandoned = asyncio.ensure_future(self._abandoned.wait())
        try:
            done, _ = await asyncio.wait(
                {work, watcher, abandoned}, return_when=asyncio.FIRST_COMPLETED
            )
            if work in done:
                work.result()
            else:  # the client left, or the gateway gave up: abort everything it started
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
                if watcher in done:
                    log.debug("client disconnected: %s", self.job.request_id)
                else:
                    assert self._abandon_error is not None
                    log.warning("request %s ended: %s", self.job.request_id, self._abandon_error)
                    gw.failed(self.job)
                    with contextlib.suppress(OSError, RuntimeError):
                        await self._send_error(send, self._abandon_error)
        finally:
            for task in (work, watcher, abandoned):
                task.cancel()
            gw.exchange_ended(self)

    async def _serve(self, send: Send) -> None:
        gw, job = self.gateway, self.job
        adapters = gw.adapters if job.model is not None else None
        if adapters is not None and job.model is not None:
            # Loaded (cold, if it was not) before the request queues, and kept loaded until it
            # ends: the load counts against its first token, as the client sees it.
            try:
                await adapters.acquire(job.model)
            except (AdapterLoadError, EngineUnreachable, EngineBroken) as exc:
                gw.failed(job)
                await self._send_error(send, adapter_unavailable(job.model, str(exc)))
                return
        try:
            await self._dispatched(send)
        finally:
            if adapters is not None and job.model is not None:
                await adapters.release(job.model)

    async def _dispatched(self, send: Send) -> None:
        gw, job = self.gateway, self.job
        try:
            try:
                gw.dispatcher.submit(job)
                assert job.waiter is not None
                await job.waiter
            except Rejection as rejection:
                gw.rejected(rejection.reason, job.slo.priority, job.model)
                await self._send_error(
                    send,
                    rate_limited(
                        rejection.message,
                        reason=rejection.reason.value,
                        retry_after_s=rejection.retry_after_s,
                    ),
                )
                return
            assert job.dispatched_at is not None
            if gw.held_blocks is not None:  # the engine is about to cache this prompt
                request = self.request
                gw.held_blocks.record(
                    request.prompt_text, prompt_token_ids(request.endpoint, request.body)
                )
            gw.metrics.queue_wait.labels(**gw.metrics.labels(job.slo.priority, job.model)).observe(
                job.dispatched_at - job.arrival
            )
            self._engine_byte_at = time.monotonic()
            await self._exchange(send)
        finally:
            self._engine_byte_at = None
            if job.dispatched_at is not None:
                used = job.prompt_tokens + self._output_tokens
                self.quotas.charge(self.tenant, used)
                if self.adapter_quota is not None:
                    self.quotas.charge(self.adapter_quota, used)
            # Whatever happened (done, rejected, failed, cancelled by a departed client), the
            # job's place in the queue or the engine is given back here.
            gw.dispatcher.release(
                job,
                completed=self._completed,
                output_tokens=self._output_tokens,
                streamed=self.request.stream,
                end=self._end,
            )

    # -- upstream ----------------------------------------------------------------------------------

    async def _engine_refused(self, send: Send, upstream: EngineStream) -> None:
        """Pass an engine's error answer on, in the OpenAI shape, with its status."""
        payload = await upstream.read()
        body = normalize_engine_error(upstream.status, payload)
        if upstream.status < 500:
            self.gateway.rejected(RejectReason.INVALID, self.job.slo.priority, self.job.model)
        else:
            self.gateway.failed(self.job)
        await self._send_json(send, upstream.status, json.dumps(body).encode())

    async def _exchange(self, send: Send) -> None:
        """Send the request to the engine and relay its answer; engine failures become OpenAI
        errors (503 if it could not be reached, 502 or an SSE error event if it broke)."""
        gw = self.gateway
        headers = {"content-type": "application/json", **self.forward_headers}
        try:
            async with gw.client.post(
                _PATHS[self.request.endpoint], upstream_body(self.request), headers
            ) as upstream:
                if upstream.status != 200:
                    await self._engine_refused(send, upstream)
                elif self.request.stream:
                    await self._relay_stream(send, upstream)
                else:
                    await self._relay_unary(send, upstream)
        except EngineUnreachable as exc:
            gw.failed(self.job)
            await self._send_error(send, engine_unavailable(str(exc)))
        except EngineBroken as exc:
            gw.failed(self.job)
            await self._send_error(send, engine_failed(str(exc)))

    async def _relay_unary(self, send: Send, upstream: EngineStream) -> None:
        payload = await upstream.read()
        end = self.gateway.dispatcher.clock()
        usage, finish_reason = _usage_and_finish(payload)
        await self._send_json(send, 200, payload)
        self._account(0, end, usage, finish_reason, streamed=False)

    async def _relay_stream(self, send: Send, upstream: EngineStream) -> None:
        """Relay server-sent events as they arrive, without parsing the token events.

        A client may end a stream early by closing it (a user pressing stop, or a client that
        enforces its own length). The tokens it received are still real service: the request is
        judged and learned from on what was delivered, logged with finish reason ``cancelled``.
        """
        gw, job = self.gateway, self.job
        usage: dict[str, Any] = {}
        finish_reason = "unknown"
        error: dict[str, Any] | None = None
        tokens = 0
        last_token_at = 0.0
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        self._started = True
        pending = b""
        fresh = 0
        try:
            async for chunk in upstream.chunks():
                self._engine_byte_at = time.monotonic()
                pending += chunk
                out: list[bytes] = []
                while (cut := pending.find(b"\n\n")) >= 0:
                    event, pending = pending[: cut + 2], pending[cut + 2 :]
                    if event.startswith(b'data: {"error"'):
                        # The engine refused the request inside the stream (vLLM validates
                        # some parameters only once generation starts): relayed as it is.
                        error = _event_json(event).get("error") or {}
                    # Only the rare events that may carry usage or a finish reason are parsed.
                    elif _may_carry_usage_or_finish(event):
                        parsed = _event_json(event)
                        if isinstance(parsed.get("usage"), dict) and not parsed.get("choices"):
                            usage = parsed["usage"]
                            if not self.request.client_wants_usage:
                                continue
                        finish_reason = _finish_reason(parsed) or finish_reason
                    if _is_token_event(event):
                        fresh += 1
                    out.append(event)
                if fresh:
                    # Once per chunk, not per event: the events of one read arrived together.
                    gw.dispatcher.on_tokens(job, fresh)
                    tokens += fresh
                    fresh = 0
                    last_token_at = job.last_token_at or gw.dispatcher.clock()
                if out:
                    await send(
                        {"type": "http.response.body", "body": b"".join(out), "more_body": True}
                    )
        except asyncio.CancelledError:
            if tokens and not self._abandoned.is_set():
                self._account(tokens, last_token_at, {}, "cancelled", streamed=True)
            raise
        end = gw.dispatcher.clock()
        if pending:
            await send({"type": "http.response.body", "body": pending, "more_body": True})
        if error is not None and not usage and finish_reason == "unknown":
            # Already told to the client, with the engine's own [DONE]: only counted here.
            if _error_status(error) < 500:
                gw.rejected(RejectReason.INVALID, job.slo.priority, job.model)
            else:
                gw.failed(job)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if not usage and finish_reason == "unknown":
            raise EngineBroken("the engine closed the stream before it finished")
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        self._account(tokens, end, usage, finish_reason, streamed=True)

    def _account(
        self,
        tokens: int,
        end: float,
        usage: dict[str, Any],
        finish_reason: str,
        *,
        streamed: bool,
    ) -> None:
        """Record a request that delivered its answer (all of it, or until the client left).

        The engine's usage numbers are taken only if they are plausible — whole numbers within
        the request's bounds — since they feed the scheduler's models and the tenant's quota;
        otherwise what the gateway counted itself stands."""
        bound = self.job.max_tokens or self.gateway.max_model_len or _MAX_PLAUSIBLE_TOKENS
        reported = _count(usage.get("completion_tokens"), bound)
        self._output_tokens = reported if reported is not None else min(tokens, bound)
        self._completed = True
        self._end = end
        self.gateway.finished(
            self.job,
            prompt=self.request.prompt_text,
            streamed=streamed,
            end=end,
            output_tokens=self._output_tokens,
            prompt_tokens=_count(
                usage.get("prompt_tokens"), self.gateway.max_model_len or _MAX_PLAUSIBLE_TOKENS
            ),
            finish_reason=finish_reason,
        )

    # -- answers -----------------------------------------------------------------------------------

    async def _send_error(self, send: Send, error: OpenAIError) -> None:
        if self._started:
            await send(
                {"type": "http.response.body", "body": error.sse_event(), "more_body": False}
            )
            return
        headers = [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
        await self._send_json(send, error.status, json.dumps(error.body()).encode(), headers)

    async def _send_json(
        self,
        send: Send,
        status: int,
        body: bytes,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", self.job.request_id.encode()),
            *(extra_headers or []),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        self._started = True
        await send({"type": "http.response.body", "body": body, "more_body": False})


async def _client_gone(receive: Receive) -> None:
    """Return when the client disconnects (the request body was already read)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def _is_token_event(event: bytes) -> bool:
    """Whether an event carries generated text: not ``[DONE]``, not the usage-only event, not
    the opening chat event that only announces the assistant's role."""
    if not event.startswith(b"data: {"):
        return False
    if b'"choices":[]' in event:
        return False
    return not (b'"role":"assistant"' in event and b'"content":""' in event)


def _may_carry_usage_or_finish(event: bytes) -> bool:
    """Cheap byte test before parsing: vLLM writes ``"finish_reason":null`` (and, with
    continuous usage off, no usage) in every token event but the last ones."""
    if b'"usage"' in event and b'"usage":null' not in event and b'"usage": null' not in event:
        return True
    return (
        b'"finish_reason"' in event
        and b'"finish_reason":null' not in event
        and b'"finish_reason": null' not in event
    )


def _event_json(event: bytes) -> dict[str, Any]:
    data = event.strip()
    if data.startswith(b"data:"):
        data = data[5:].strip()
    try:
        parsed = json.loads(data)
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _finish_reason(event: dict[str, Any]) -> str | None:
    for choice in event.get("choices") or []:
        if isinstance(choice, dict) and choice.get("finish_reason"):
            return str(choice["finish_reason"])
    return None


def _usage_and_finish(payload: bytes) -> tuple[dict[str, Any], str]:
    try:
        body = json.loads(payload)
    except ValueError:
        return {}, "unknown"
    if not isinstance(body, dict):
        return {}, "unknown"
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    finish = "unknown"
    for choice in body.get("choices") or []:
        if isinstance(choice, dict) and choice.get("finish_reason"):
            finish = str(choice["finish_reason"])
            break
    return usage or {}, finish


def _count(value: Any, bound: int) -> int | None:
    """A token count from the engine if it is a whole number in ``[0, bound]``, else ``None``."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= bound:
        return value
    return None


def _error_status(error: Any) -> int:
    """The HTTP status an engine's in-stream error stands for (vLLM puts it in ``code``)."""
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, int) and 400 <= code < 600 else 500
