"""The engine's state as the scheduler's budget: what vLLM's own ``/metrics`` says (KV-cache use,
running and waiting requests, KV capacity) plus what the gateway itself has committed.

The engine's numbers lag by up to one poll interval, so the gateway also counts the tokens it has
sent in itself (prompt + predicted output of every in-flight request) and checks new dispatches
against the KV capacity with that count: the engine's cache is never over-committed in the first
place, instead of being noticed full after the fact.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from goodput.serving.engine_client import EngineBroken, EngineClient, EngineReply, EngineUnreachable

log = logging.getLogger(__name__)

_RUNNING = "vllm:num_requests_running"
_WAITING = "vllm:num_requests_waiting"
_KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
_CACHE_INFO = "vllm:cache_config_info"
# Prompt tokens looked up in / found in the engine's prefix cache (counters, since start): what
# the cluster router's prefix-affinity achieves, as the engine itself counts it.
_PREFIX_QUERIES = "vllm:prefix_cache_queries_total"
_PREFIX_HITS = "vllm:prefix_cache_hits_total"
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True, slots=True)
class EngineSnapshot:
    up: bool
    running: float | None = None
    waiting: float | None = None
    kv_usage: float | None = None
    kv_capacity_tokens: int | None = None
    prefix_cache_queries: float | None = None
    prefix_cache_hits: float | None = None
    polled_at: float = 0.0


def parse_engine_metrics(text: str, *, now: float = 0.0) -> EngineSnapshot:
    """Read the few series the scheduler needs from vLLM's Prometheus text exposition.

    A line scan on known prefixes instead of a full exposition parser: the engine exposes
    hundreds of histogram lines and this runs on the gateway's event loop every poll.
    Series of one metric (one per engine core) are summed; KV usage is averaged.
    """
    running: float | None = None
    waiting: float | None = None
    kv: dict[str, list[float]] = {}
    capacity: int | None = None
    prefix: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        brace = line.find("{")
        space = line.find(" ")
        name_end = brace if 0 < brace < space or space < 0 else space
        name = line[:name_end]
        if (
            name not in (_RUNNING, _WAITING, _CACHE_INFO, _PREFIX_QUERIES, _PREFIX_HITS)
            and name not in _KV_USAGE
        ):
            continue
        rest = line[line.rindex("}") + 1 :] if brace > 0 else line[name_end:]
        try:
            value = float(rest.split()[0])
        except (IndexError, ValueError):
            continue
        if name == _RUNNING:
            running = (running or 0.0) + value
        elif name == _WAITING:
            waiting = (waiting or 0.0) + value
        elif name in _KV_USAGE:
            kv.setdefault(name, []).append(value)
        elif name in (_PREFIX_QUERIES, _PREFIX_HITS):
            prefix[name] = prefix.get(name, 0.0) + value
        else:
            labels = dict(_LABEL.findall(line))
            try:
                blocks = int(float(labels["num_gpu_blocks"]))
                block_size = int(float(labels["block_size"]))
            except (KeyError, ValueError):
                continue
            capacity = (capacity or 0) + blocks * block_size
    # The current name wins over its deprecated alias when an engine exposes both.
    kv_values = next((kv[name] for name in _KV_USAGE if name in kv), None)
    return EngineSnapshot(
        up=True,
        running=running,
        waiting=waiting,
        kv_usage=None if not kv_values else sum(kv_values) / len(kv_values),
        kv_capacity_tokens=capacity,
        prefix_cache_queries=prefix.get(_PREFIX_QUERIES),
        prefix_cache_hits=prefix.get(_PREFIX_HITS),
        polled_at=now,
    )


class EngineBudget:
    """What may still be sent to the engine: KV capacity minus the gateway's in-flight tokens."""

    def __init__(self, *, kv_headroom: float = 0.95, kv_capacity_tokens: int | None = None) -> None:
        self._headroom = kv_headroom
        self._configured_capacity = kv_capacity_tokens
        self.snapshot = EngineSnapshot(up=False)
        self.inflight_requests = 0
        self.inflight_tokens = 0.0

    def commit(self, tokens: float) -> None:
        self.inflight_requests += 1
        self.inflight_tokens += tokens

    def release(self, tokens: float) -> None:
        self.inflight_requests -= 1
        self.inflight_tokens = max(0.0, self.inflight_tokens - tokens)

    @property
    def capacity_tokens(self) -> int | None:
        """The engine's KV capacity: its reported figure, else the configured one."""
        return self.snapshot.kv_capacity_tokens or self._configured_capacity

    def kv_fits(self, tokens: float) -> bool:
        """Whether ``tokens`` more fit in the engine's KV cache (its reported capacity, else the
        configured one; unknown: no limit). An idle engine always takes a request: one too large
        for the cache is the engine's to reject, not the queue's to hold."""
        capacity = self.snapshot.kv_capacity_tokens or self._configured_capacity
        if capacity is None or self.inflight_requests == 0:
            return True
        return self.inflight_tokens + tokens <= capacity * self._headroom

    def oversized(self, tokens: float) -> bool:
        """Whether ``tokens`` fit the KV cache only with nothing else running."""
        capacity = self.snapshot.kv_capacity_tokens or self._configured_capacity
        return capacity is not None and tokens > capacity * self._headroom


class EngineMonitor:
    """Watches the engine: ``/health`` often (cheap: is it up?), ``/metrics`` seldom.

    Reading vLLM's ``/metrics`` is not free: the engine's API server renders a few hundred
    series on the same event loop that streams tokens, and on a CPU-bound engine a scrape per
    second measurably delays every stream. The scheduler does not need it often — KV capacity is
    static and the gateway counts its own in-flight tokens — so the default is one read at start
    and then every ``metrics_interval_s`` for the engine gauges.
    """

    def __init__(
        self,
        client: EngineClient,
        budget: EngineBudget,
        *,
        health_interval_s: float = 1.0,
        health_timeout_s: float = 3.0,
        metrics_interval_s: float = 10.0,
        on_poll: Callable[[EngineSnapshot], None] | None = None,
    ) -> None:
        self._client = client
        self._health_timeout = health_timeout_s
        self._problem: str | None = None
        self._budget = budget
        self._health_interval = health_interval_s
        self._metrics_interval = metrics_interval_s
        self._on_poll = on_poll
        self.max_model_len: int | None = None
        self.models: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._metrics_read_at = -math.inf

    @property
    def up(self) -> bool:
        return self._budget.snapshot.up

    async def poll_once(self) -> EngineSnapshot:
        """Check health; read the metrics too if they are due (or the engine just came up)."""
        now = time.monotonic()
        previous = self._budget.snapshot
        try:
            _ok(await self._client.get("/health", timeout_s=self._health_timeout))
            if not previous.up or now - self._metrics_read_at >= self._metrics_interval:
                metrics = _ok(await self._client.get("/metrics"))
                snapshot = parse_engine_metrics(metrics.decode(errors="replace"), now=now)
                self._metrics_read_at = now
                if not self.models:
                    await self._read_models()
            else:
                snapshot = previous
        except (EngineUnreachable, EngineBroken, ValueError) as exc:
            problem = str(exc)
            if previous.up or problem != self._problem:  # each new reason once, not every poll
                log.warning("engine is not ready: %s", problem)
            self._problem = problem
            snapshot = EngineSnapshot(up=False, polled_at=now)
        else:
            self._problem = None
        self._budget.snapshot = snapshot
        if self._on_poll is not None:
            self._on_poll(snapshot)
        return snapshot

    async def _read_models(self) -> None:
        listing = json.loads(_ok(await self._client.get("/v1/models")))
        cards = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(cards, list):
            raise ValueError("engine's /v1/models is not a model list")
        self.models = [str(card.get("id")) for card in cards if isinstance(card, dict)]
        lengths = [
            int(card["max_model_len"])
            for card in cards
            if isinstance(card, dict) and isinstance(card.get("max_model_len"), int)
        ]
        if lengths:
            self.max_model_len = min(lengths)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._health_interval)
            await self.poll_once()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="engine-monitor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _ok(reply: EngineReply) -> bytes:
    if reply.status == 401:
        raise ValueError(
            "engine answered HTTP 401: it requires an API key (give the gateway the engine's "
            "key: engineApiKeyFile) or the key the gateway sends is not the engine's"
        )
    if reply.status != 200:
        raise ValueError(f"engine answered HTTP {reply.status}")
    return reply.body
