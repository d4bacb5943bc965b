"""The gateway's HTTP edge, bounded: what a client may cost before any request handling runs.

- **Headers**: a connection must deliver a request's complete headers within
  ``header_timeout_s`` of connecting (or of starting the request), and at most
  ``max_header_bytes`` of them; a slow or endless header stream (slowloris) is closed, not held.
  uvicorn's own timeout covers only idle keep-alive connections, so this is its HTTP protocol
  with a deadline and a byte count added.
- **Body**: at most ``max_body_bytes`` (413, by ``Content-Length`` before a byte is read, or
  as it arrives), within ``body_timeout_s`` (408); read here once and handed on, so the app
  never holds more than the limit.
- **Unexpected exceptions**: whatever escapes the app is logged, counted and, if nothing was
  sent yet, answered with an OpenAI-format 500 — and never re-raised, because uvicorn closes a
  keep-alive connection on an exception and the client's next request on it would fail.
- **Connections**: at most ``max_connections`` open; a request on one past the cap is answered
  503 (OpenAI format, ``Retry-After``) and its connection closed — uvicorn's own cap answers in
  plain text. Idle keep-alive connections close after ``keep_alive_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import uvicorn
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from goodput.serving.openai_errors import OpenAIError, internal_error

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Defaults sized for chat traffic: a 128k-token context is about 0.5 MB of text."""

    max_body_bytes: int = 4 * 1024 * 1024
    body_timeout_s: float = 30.0
    max_header_bytes: int = 32 * 1024
    header_timeout_s: float = 10.0
    max_connections: int = 2048
    keep_alive_s: int = 30


class _TooLarge(Exception):
    pass


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for, and a cap on, each request's headers."""

    limits = HttpLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limit_concurrency = None  # the cap is kept below, with an OpenAI-format answer
        self._header_deadline: asyncio.TimerHandle | None = None
        self._header_bytes = 0

    def _arm(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(
                self.limits.header_timeout_s, self._headers_too_slow
            )

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            log.debug("closing a connection that sent no complete headers in time")
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        self._header_bytes = 0
        self._arm()
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.limits.max_header_bytes:
            # Raised inside the parser's callback, it surfaces as a parser error: uvicorn
            # answers 400 and closes the connection.
            raise _TooLarge("request headers too large")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        cap = self.limits.max_connections
        if len(self.connections) <= cap and len(self.tasks) < cap:
            super().on_headers_complete()
            return
        log.warning("%d connections open: a request refused", len(self.connections))
        app, self.app = self.app, _over_capacity  # uvicorn starts the request with self.app
        try:
            super().on_headers_complete()
        finally:
            self.app = app


def server_config(
    app: ASGIApp, *, host: str, port: int, limits: HttpLimits, **kwargs: Any
) -> uvicorn.Config:
    """A uvicorn config with the guarded protocol and the connection limits."""
    protocol = type("GatewayHttpProtocol", (GuardedHttpProtocol,), {"limits": limits})
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        timeout_keep_alive=limits.keep_alive_s,
        **kwargs,
    )


class RequestGuard:
    """ASGI wrapper: the body limit and timeout, and the last line against exceptions."""

    def __init__(
        self, app: ASGIApp, limits: HttpLimits, *, on_internal_error: Callable[[], None]
    ) -> None:
        self.app = app
        self.limits = limits
        self.on_internal_error = on_internal_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            if scope["method"] in ("POST", "PUT", "PATCH"):
                refusal, receive = await self._read_body(scope, receive)
                if refusal is not None:
                    await _send_error(send, refusal, close=True)
                    return
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unexpected error answering %s %s", scope["method"], scope["path"])
            self.on_internal_error()
            if not started:
                with contextlib.suppress(Exception):
                    await _send_error(send, internal_error())

    async def _read_body(
        self, scope: Scope, receive: Receive
    ) -> tuple[OpenAIError | None, Receive]:
        """The whole body, bounded, and a ``receive`` that hands it to the app; or why not."""
        limit = self.limits.max_body_bytes
        too_large = OpenAIError(
            413,
            f"The request body is larger than {limit} bytes.",
            "invalid_request_error",
            code="request_too_large",
        )
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    return too_large, receive
        chunks: list[bytes] = []
        size = 0
        disconnected = False
        try:
            async with asyncio.timeout(self.limits.body_timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        disconnected = True
                        break
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        return too_large, receive
                    chunks.append(chunk)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            late = OpenAIError(
                408,
                f"The request body did not arrive within {self.limits.body_timeout_s:g} s.",
                "invalid_request_error",
                code="request_timeout",
            )
            return late, receive
        body = b"".join(chunks)
        delivered = disconnected

        async def replay() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            if disconnected:
                return {"type": "http.disconnect"}
            return await receive()

        return None, replay


async def _over_capacity(scope: Scope, receive: Receive, send: Send) -> None:
    error = OpenAIError(
        503,
        "The server has too many open connections; retry shortly.",
        "server_error",
        code="too_many_connections",
        headers={"Retry-After": "1"},
    )
    await _send_error(send, error, close=True)


async def _send_error(send: Send, error: OpenAIError, *, close: bool = False) -> None:
    payload = json.dumps(error.body()).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
        *((k.lower().encode(), v.encode()) for k, v in error.headers.items()),
    ]
    if close:  # the rest of the body is not read: the connection cannot carry another request
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})
