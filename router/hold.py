"""Holding requests while no replica is ready: what makes scale-from-zero invisible to clients
but for the wait.

A deployment scaled to zero has a router and no replica. A request then waits here (a bounded
FIFO, a bounded wait), and the count of waiting requests is the router's signal to the operator
(``held`` in ``GET /v1/goodput/endpoints``, which the autoscaler reads: docs/autoscaling.md). When
discovery or a load report makes a replica eligible, every held request is released in arrival
order and goes on to flow control and routing as any other; past the bound it gets 503 with
``Retry-After``. Separate from ``flow`` on purpose: flow control waits for capacity on replicas
that exist and answers 429; this waits for a replica to exist.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable

from goodput.api.router_config import HoldConfig
from goodput.serving.openai_errors import OpenAIError


def unavailable(message: str, code: str, retry_after_s: float) -> OpenAIError:
    return OpenAIError(
        503,
        message,
        "service_unavailable",
        code=code,
        headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))},
    )


class ReplicaHold:
    """FIFO of requests waiting for any ready replica."""

    def __init__(self, config: HoldConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.clock = clock
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def held(self) -> int:
        """Requests waiting now."""
        return len(self._waiters)

    @property
    def enabled(self) -> bool:
        return self.config.max_queue > 0

    async def wait(self) -> float:
        """Return once a replica is ready (``release``), the seconds waited; raise a 503
        ``OpenAIError`` when the hold is full or the wait ran past ``maxWaitS``."""
        if len(self._waiters) >= self.config.max_queue:
            raise unavailable(
                f"No replica of this model is ready and {self.config.max_queue} requests wait "
                "for one already; retry shortly.",
                "no_replica",
                1.0,
            )
        start = self.clock()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        try:
            await asyncio.wait_for(asyncio.shield(future), self.config.max_wait_s)
        except TimeoutError:
            raise unavailable(
                f"No replica of this model became ready within {self.config.max_wait_s:.0f} s; "
                "retry shortly.",
                "no_replica_in_time",
                min(self.config.max_wait_s, 30.0),
            ) from None
        finally:
            if not future.done():
                future.cancel()
            if future in self._waiters:
                self._waiters.remove(future)
        return self.clock() - start

    def release(self) -> int:
        """A replica became ready: let every held request go, oldest first (each is resumed in
        this order by the event loop). Returns how many."""
        released = 0
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(None)
                released += 1
        return released
