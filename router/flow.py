"""Flow control across replicas: the router holds requests only while every ready replica
reports itself saturated, and releases them as capacity appears — lower priority bands first,
and within a band one tenant at a time in turn, so that under saturation each tenant with
waiting requests gets an equal share of what frees up.

Division of labour with the per-pod gateway: the router never judges deadlines. It only avoids
sending a request where it would wait anyway, and bounds its own queue (429 + ``Retry-After``
when full or after ``maxWaitS``). Once sent, the gateway's admission decides as it always does
— a request is counted in one queue at a time, never in both.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from goodput.api.router_config import FlowConfig
from goodput.serving.openai_errors import OpenAIError, rate_limited


class FlowController:
    """Per band, per tenant FIFO queues; ``release`` grants as many waiters as there are free
    slots (``free_slots``), minus grants not yet dispatched."""

    def __init__(
        self,
        config: FlowConfig,
        free_slots: Callable[[], int],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.free_slots = free_slots
        self.clock = clock
        # band -> tenant -> waiters; OrderedDict order is the tenants' turn order.
        self._bands: dict[int, OrderedDict[str, deque[asyncio.Future[None]]]] = {}
        self._size = 0
        self._granted = 0

    @property
    def depth(self) -> int:
        return self._size

    def band(self, priority: str) -> int:
        bands = self.config.priority_bands
        return bands.get(priority, max(bands.values(), default=0))

    async def admit(self, tenant: str, priority: str) -> float:
        """Return once the request may go to a replica (the seconds it waited), or raise a 429
        ``OpenAIError`` when the queue is full or the wait too long."""
        if self._size == 0 and self.free_slots() - self._granted > 0:
            self._granted += 1
            return 0.0
        if self._size >= self.config.max_queue:
            raise rate_limited(
                f"Every replica is saturated and the router's queue is full "
                f"({self.config.max_queue} waiting); retry later.",
                reason="router_queue_full",
                retry_after_s=1.0,
            )
        start = self.clock()
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        band = self._bands.setdefault(self.band(priority), OrderedDict())
        band.setdefault(tenant, deque()).append(future)
        self._size += 1
        self.release()
        try:
            await asyncio.wait_for(asyncio.shield(future), self.config.max_wait_s)
        except TimeoutError:
            if not future.done():
                self._remove(future)
                future.cancel()
                raise self._timed_out() from None
        except asyncio.CancelledError:  # the client went away while waiting
            if future.done() and not future.cancelled():
                self._granted -= 1  # granted but never dispatched
            else:
                self._remove(future)
                future.cancel()
            raise
        return self.clock() - start

    def _timed_out(self) -> OpenAIError:
        return rate_limited(
            f"Every replica stayed saturated for {self.config.max_wait_s:.0f} s; retry later.",
            reason="router_queue_timeout",
            retry_after_s=1.0,
        )

    def dispatched(self) -> None:
        """A granted request was sent: its slot is now in the replica's load."""
        self._granted = max(0, self._granted - 1)

    def release(self) -> None:
        """Grant waiters while slots are free: call when capacity may have appeared (a load
        report arrived, a request ended)."""
        while self._size and self.free_slots() - self._granted > 0:
            future = self._next()
            if future is None:
                return
            future.set_result(None)
            self._granted += 1

    def _next(self) -> asyncio.Future[None] | None:
        for band_id in sorted(self._bands):
            tenants = self._bands[band_id]
            while tenants:
                tenant, waiters = next(iter(tenants.items()))
                future = waiters.popleft()
                if waiters:
                    tenants.move_to_end(tenant)  # its turn is over
                else:
                    del tenants[tenant]
                self._size -= 1
                if not future.done():
                    return future
        return None

    def _remove(self, future: asyncio.Future[None]) -> None:
        for tenants in self._bands.values():
            for tenant, waiters in list(tenants.items()):
                if future in waiters:
                    waiters.remove(future)
                    self._size -= 1
                    if not waiters:
                        del tenants[tenant]
                    return
