"""Graceful drain on SIGTERM: readiness turns false and new requests get 503 at once (so the
Service stops routing here and clients retry elsewhere), requests already accepted — queued or
streaming — finish, bounded by a grace period, and then the server exits. A second signal exits
at once."""

from __future__ import annotations

import asyncio
import logging
from types import FrameType

import uvicorn

from goodput.serving.gateway import Gateway

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, gateway: Gateway, *, grace_s: float) -> None:
        super().__init__(config)
        self._gateway = gateway
        self._grace_s = grace_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None

    async def serve(self, sockets: list[object] | None = None) -> None:  # type: ignore[override]
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)  # type: ignore[arg-type]

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._gateway.draining or self._loop is None:
            super().handle_exit(sig, frame)  # second signal, or not yet serving: stop now
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
        self.should_exit = True
