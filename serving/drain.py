"""Graceful drain on SIGTERM: readiness turns false and new requests get 503 at once (so the
Service stops routing here and clients retry elsewhere), requests already accepted — queued or
streaming — finish, bounded by a grace period; those still running then are ended with an OpenAI
error (an error event in a stream), not cut, and the server exits. A second signal exits at once.

The admin server (metrics, the router's load report), when there is one, runs in the same event
loop and stops with the API server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from types import FrameType

import uvicorn

from goodput.serving.gateway import Gateway

log = logging.getLogger(__name__)

#: After the grace period, how long the ended requests get to write their error.
_FAREWELL_S = 1.0


class AdminServer(uvicorn.Server):
    """A second server in the API server's loop: the API server owns the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class DrainingServer(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        gateway: Gateway,
        *,
        grace_s: float,
        admin: uvicorn.Config | None = None,
    ) -> None:
        super().__init__(config)
        self._gateway = gateway
        self._grace_s = grace_s
        self._admin = None if admin is None else AdminServer(admin)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        admin = None if self._admin is None else asyncio.create_task(self._admin.serve())
        try:
            await super().serve(sockets)  # type: ignore[arg-type]
        finally:
            if admin is not None and self._admin is not None:
                self._admin.should_exit = True
                await admin

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._gateway.draining or self._loop is None:
            # A second signal, or not yet serving: stop now, without waiting for connections.
            if self._gateway.draining and self._loop is not None:
                self.force_exit = True
                self._loop.call_soon_threadsafe(
                    self._gateway.abandon_all, "The server is shutting down now.", "draining"
                )
            super().handle_exit(sig, frame)
            return
        self._gateway.draining = True
        self._loop.call_soon_threadsafe(self._begin_drain)

    def _begin_drain(self) -> None:
        self._drain_task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        log.info(
            "draining: %d requests in flight, grace %.0f s",
            self._gateway.active_exchanges,
            self._grace_s,
        )
        if not await self._gateway.wait_idle(self._grace_s):
            log.warning(
                "grace period over with %d requests in flight", self._gateway.active_exchanges
            )
            self._gateway.abandon_all(
                "The server is shutting down and its drain period ended; retry the request.",
                "draining",
            )
            await self._gateway.wait_idle(_FAREWELL_S)
        self.should_exit = True
