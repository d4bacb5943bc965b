"""The replicas a router may send to, and what it knows of each: readiness from discovery,
load from the replica gateway's polled report, and its own requests in flight there.

Reports lag by up to one poll; the router adds the requests it sent since the last report, so
that a burst arriving between two polls does not all land on the replica that looked idlest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from pydantic import ValidationError

from goodput.api.load_report import LOAD_PATH, SKETCH_SINCE, LoadReport
from goodput.api.prefix_blocks import BlockSketch
from goodput.router.upstream import ERRORS, Upstream

log = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class Endpoint:
    """One replica's gateway."""

    name: str
    url: str
    load_url: str = ""
    """Where its load report is read: the gateway's keyless admin port when it has one (its API
    port answers the report only with a key); empty: ``url``."""
    ready: bool = True
    """Discovery says it may receive (EndpointSlice ``ready``; static endpoints: always)."""
    draining: bool = False
    """Terminating: finishes what it has, gets nothing new."""
    report: LoadReport | None = None
    reported_at: float = -math.inf
    outstanding: int = 0
    """This router's requests there that have not ended."""
    sent_since_report: int = 0
    ended_since_report: int = 0
    down_until: float = -math.inf
    """After a failed connection: skipped until then."""
    failures: int = field(default=0)
    held: BlockSketch | None = None
    """The prompt blocks its gateway reports its engine holds (every router's traffic)."""
    held_version: int | None = None
    group: str = ""
    """The model (cascade group) whose replica it is; empty outside a cascade."""

    def eligible(self, now: float) -> bool:
        """May get a new request: ready, not draining, not recently failed, and (once it has
        reported) reporting itself ready."""
        if not self.ready or self.draining or now < self.down_until:
            return False
        return self.report is None or (self.report.ready and not self.report.draining)

    @property
    def load(self) -> float:
        """Requests there now, as best known: the report's queue and in-flight plus what was
        sent since, or this router's own count if that is larger."""
        reported = 0.0
        if self.report is not None:
            reported = self.report.queue + self.report.inflight
        return max(reported + self.since_report, float(self.outstanding), 0.0)

    @property
    def since_report(self) -> int:
        """This router's requests there that started minus those that ended since the report:
        what to add to the reported count (negative when some it counted have ended)."""
        return self.sent_since_report - self.ended_since_report

    def inflight_now(self) -> int:
        """The report's in-flight count brought up to date with this router's own traffic."""
        reported = 0 if self.report is None else self.report.inflight
        return max(0, reported + self.since_report)

    def free_slots(self) -> int:
        """Requests it could take now without waiting: its free slots under a known limit; one
        if it reports no limit and holds nothing sent since its report (or has not reported);
        none while it holds requests."""
        report = self.report
        if report is None:
            return 1
        if report.queue > 0:
            return 0
        if report.limit is None:
            return 1 if self.since_report <= 0 else 0
        return max(0, report.limit - self.inflight_now())

    @property
    def saturated(self) -> bool:
        """Another request would wait here (the gateway holds requests or its limit is full);
        without a limit it never is."""
        report = self.report
        if report is None or (report.limit is None and report.queue == 0):
            return False
        return self.free_slots() == 0

    def predicted_ttft_s(self, uncached_tokens: float = 0.0) -> float | None:
        """Queueing plus first token for a request sent now, plus the prefill of its
        ``uncached_tokens`` at the replica's reported rate; ``None`` before any report."""
        report = self.report
        if report is None:
            return None
        wait = report.predicted_wait_s
        if wait is None:
            return None
        first = report.first_token_s or 0.0
        if self.since_report > 0 and report.limit:
            # Each request sent since the report takes a slot; past the limit each one waits
            # about a first-token time more.
            over = self.inflight_now() + report.queue - report.limit
            wait += max(0, over) * max(first, 0.001)
        return wait + first + (report.prefill_s_per_token or 0.0) * uncached_tokens

    def failed(self, now: float, backoff_s: float = 1.0) -> None:
        self.failures += 1
        self.down_until = now + min(backoff_s * 2 ** min(self.failures - 1, 5), 30.0)

    def succeeded(self) -> None:
        self.failures = 0
        self.down_until = -math.inf


class EndpointTable:
    """The current replicas by name; discovery replaces the set, the poller fills the reports."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._by_name: dict[str, Endpoint] = {}

    def all(self) -> list[Endpoint]:
        return list(self._by_name.values())

    def eligible(self) -> list[Endpoint]:
        now = self.clock()
        return [e for e in self._by_name.values() if e.eligible(now)]

    def replace(self, endpoints: Iterable[Sequence[str | bool]], group: str = "") -> list[str]:
        """Set the replicas of ``group`` to ``(name, url, ready, draining[, load_url])``; keep
        what is known of those that stay; return the names that left (the caller forgets their
        prefix state). Each group (a cascade's model) has its own discovery."""
        seen: set[str] = set()
        for entry in endpoints:
            name, url, ready, draining = (
                str(entry[0]),
                str(entry[1]),
                bool(entry[2]),
                bool(entry[3]),
            )
            load_url = str(entry[4]) if len(entry) > 4 else ""
            seen.add(name)
            current = self._by_name.get(name)
            if (
                current is None
                or current.url != url
                or current.load_url != load_url
                or current.group != group
            ):
                self._by_name[name] = Endpoint(
                    name, url, load_url=load_url, ready=ready, draining=draining, group=group
                )
            else:
                current.ready, current.draining = ready, draining
        gone = [n for n, e in self._by_name.items() if e.group == group and n not in seen]
        for name in gone:
            del self._by_name[name]
        return gone


class LoadPoller:
    """Reads every replica's ``/v1/goodput/load`` each ``interval_s`` (concurrently)."""

    def __init__(
        self,
        table: EndpointTable,
        upstream: Upstream,
        interval_s: float,
        on_report: Callable[[], None] = lambda: None,
        block_chars: int | None = None,
    ) -> None:
        self.table = table
        self.upstream = upstream
        self.interval_s = interval_s
        self.on_report = on_report
        self.block_chars = block_chars
        """The router's prefix block size: a sketch cut otherwise is not read (and said once)."""
        self._mismatch_said = False
        self._task: asyncio.Task[None] | None = None

    async def poll_once(self) -> None:
        await asyncio.gather(*(self._poll(e) for e in self.table.all()))
        self.on_report()

    async def _poll(self, endpoint: Endpoint) -> None:
        url = (endpoint.load_url or endpoint.url) + LOAD_PATH
        if endpoint.held is not None:
            url += f"?{SKETCH_SINCE}={endpoint.held_version}"
        try:
            status, content = await self.upstream.get(url, timeout_s=max(self.interval_s * 4, 1.0))
            report = LoadReport.model_validate_json(content) if status == 200 else None
        except (*ERRORS, ValueError, ValidationError) as exc:
            log.debug("load report of %s failed: %s", endpoint.name, exc)
            report = None
        if report is None:
            # Unreachable or not a gateway: treat as not ready until it answers again.
            endpoint.report = LoadReport(ready=False, queue=0, inflight=0)
        else:
            endpoint.report = report
            self._take_sketch(endpoint, report)
        endpoint.reported_at = self.table.clock()
        endpoint.sent_since_report = endpoint.ended_since_report = 0

    def _take_sketch(self, endpoint: Endpoint, report: LoadReport) -> None:
        sketch = report.prefix_sketch
        if sketch is None or self.block_chars is None:
            endpoint.held = endpoint.held_version = None
        elif sketch.block_chars != self.block_chars:
            endpoint.held = endpoint.held_version = None
            if not self._mismatch_said:
                self._mismatch_said = True
                log.warning(
                    "%s cuts prompts into %d-character blocks, this router into %d: its "
                    "prefix sketch is not used (set the gateways' prefixBlockChars alike)",
                    endpoint.name, sketch.block_chars, self.block_chars,
                )  # fmt: skip
        elif sketch.bits:
            endpoint.held = BlockSketch.decode(sketch)
            endpoint.held_version = sketch.version
        elif sketch.version != endpoint.held_version:  # bits left out, yet not ours: ask again
            endpoint.held = endpoint.held_version = None

    async def _run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except Exception:  # a bug here must not stop the polling that routing relies on
                log.exception("polling the replicas' load failed")
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="router-load-poller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
