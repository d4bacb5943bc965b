"""The gateway's connection to its engine on localhost: one pooled aiohttp session.

aiohttp rather than httpx on this path because every output token of every stream passes
through it: measured here, aiohttp's C HTTP parser spends about 35 µs of CPU per streamed event
against about 110 µs for httpx's pure-Python one (40 streams of 200 tokens from a local server),
and beside a CPU-bound engine the gateway's CPU is the engine's loss.

Failures are reported as two exceptions the proxy understands, independent of the library:
``EngineUnreachable`` (nothing answered: connection refused or timed out — 503) and
``EngineBroken`` (it answered, then failed: reset, truncated stream, read timeout — 502).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp


class EngineUnreachable(Exception):
    """The engine did not accept the connection."""


class EngineBroken(Exception):
    """The engine accepted the request but the exchange failed."""


@dataclass(frozen=True, slots=True)
class EngineReply:
    status: int
    body: bytes


class EngineStream:
    """An open response from the engine whose body is read as it arrives."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise EngineBroken(_describe(exc)) from exc

    async def chunks(self) -> AsyncIterator[bytes]:
        """Bytes as they arrive; raises ``EngineBroken`` if the stream ends abnormally."""
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise EngineBroken(_describe(exc)) from exc


class EngineClient:
    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 600.0,
        api_key: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        # The engine's own key (vLLM --api-key), sent on every request; a client's key is the
        # gateway's to check and never reaches the engine.
        self._auth = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout_s, sock_read=read_timeout_s
        )
        self._session: aiohttp.ClientSession | None = None

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # No connection limit: how many requests reach the engine is the dispatcher's call.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
                timeout=self._timeout,
                auto_decompress=False,
            )
        return self._session

    async def get(self, path: str, *, timeout_s: float = 5.0) -> EngineReply:
        return await self._whole("GET", path, None, timeout_s)

    async def post_json(self, path: str, body: bytes, *, timeout_s: float = 60.0) -> EngineReply:
        """A short control call (loading an adapter): the whole answer within ``timeout_s``."""
        return await self._whole("POST", path, body, timeout_s)

    async def _whole(
        self, method: str, path: str, body: bytes | None, timeout_s: float
    ) -> EngineReply:
        session = self._open_session()
        headers = self._auth if body is None else {"content-type": "application/json", **self._auth}
        try:
            async with session.request(
                method,
                self.base_url + path,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
            ) as response:
                return EngineReply(response.status, await response.read())
        except (TimeoutError, aiohttp.ClientConnectorError) as exc:
            raise EngineUnreachable(_describe(exc)) from exc
        except aiohttp.ClientError as exc:
            raise EngineBroken(_describe(exc)) from exc

    @asynccontextmanager
    async def post(
        self, path: str, body: bytes, headers: Mapping[str, str]
    ) -> AsyncIterator[EngineStream]:
        """POST and yield the response once its headers arrived. Leaving the block early (an
        exception, a cancelled task) closes the connection, which makes vLLM abort the request."""
        session = self._open_session()
        try:
            response = await session.post(
                self.base_url + path, data=body, headers={**headers, **self._auth}
            )
        except (TimeoutError, aiohttp.ClientConnectorError) as exc:
            raise EngineUnreachable(_describe(exc)) from exc
        except aiohttp.ClientError as exc:
            raise EngineBroken(_describe(exc)) from exc
        finished = False
        try:
            yield EngineStream(response)
            finished = True
        finally:
            if finished and response.content.at_eof():
                response.release()  # back to the pool for the next request
            else:
                response.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
