"""The dispatcher: the mechanism that holds requests in the gateway and releases them to the
engine when the policy's budget allows — a bounded priority queue, the in-flight set, and the
bookkeeping that lets the service model learn from every finished request.

It never touches the network: the app awaits ``job.waiter`` (resolved when the job may go to the
engine, or failed with a ``Rejection``) and calls ``release`` when the request ends for any
reason, which frees the slot and wakes the next job. A clock is injected so tests are exact.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import Callable

from goodput.serving.admission import AdmissionController, QueueView, Rejection, Verdict
from goodput.serving.engine_state import EngineBudget
from goodput.serving.job import Job, JobState
from goodput.serving.policies import SchedulingPolicy
from goodput.serving.service_model import ServiceModel

#: Oversized jobs one dispatch pass looks past (each pass is on the event loop).
_MAX_PASSED = 64


class Dispatcher:
    def __init__(
        self,
        policy: SchedulingPolicy,
        admission: AdmissionController,
        service: ServiceModel,
        budget: EngineBudget,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.admission = admission
        self.service = service
        self.budget = budget
        self.clock = clock
        self._heap: list[tuple[tuple[float, ...], int, Job]] = []
        self._seq = itertools.count()
        self._waiting = 0
        self._running: set[Job] = set()
        # Dispatched, no first token yet: the prefills the engine is working through.
        self._prefilling: set[Job] = set()
        self._prefill_ended_at = -float("inf")
        # Integral of the in-flight count over time: the mean batch a request decoded in.
        self._area = 0.0
        self._area_t = clock()
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def queue_depth(self) -> int:
        return self._waiting

    @property
    def inflight(self) -> int:
        return len(self._running)

    def concurrency_limit(
        self, job: Job | None = None, *, explore: bool = True, urgent: bool = False
    ) -> int | None:
        """The policy's limit for the running set plus ``job``, under their tightest class
        objectives — never a per-request header's, which would let one client shrink the batch
        for all (``explore=False``: only what the measurements show; see the policy)."""
        slos = [j.slo for j in self._running]
        if job is not None:
            slos.append(job.slo)
        if not slos:
            return None
        return self.policy.concurrency_limit(
            min(s.batch_limit_tpot_s for s in slos),
            min(s.ttft_s for s in slos),
            self.service,
            self.clock(),
            explore=explore,
            urgent=urgent,
        )

    # -- arrival -------------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        """Queue ``job`` (or start it at once); raise ``Rejection`` if it is turned away."""
        now = self.clock()
        job.expected_output_tokens = self.policy.expected_output_tokens(job)
        job.kv_tokens = self.policy.kv_tokens(job)
        job.waiter = asyncio.get_running_loop().create_future()
        if not self.policy.holds_requests:
            self._start(job, now)
            return
        if self.admission.on_arrival(job, self._view(job), now) is Verdict.DEMOTE:
            job.best_effort = True
        self._push(job)
        self._pump(now)

    def _view(self, job: Job) -> QueueView:
        key = self.policy.order_key(job)
        ahead = sum(1 for k, seq, j in self._heap if k < key and self._valid(seq, j))
        # Judged by the measured limit only: a request is not turned away for a limit that is
        # a step of exploration; it waits instead, until the next level is measured. And by the
        # limit it may use once its TTFT comes due (see ``_pump``).
        limit = self.concurrency_limit(job, explore=False, urgent=True)
        free = None if limit is None else max(0, limit - len(self._running))
        return QueueView(
            queue_length=self._waiting,
            ahead=ahead,
            inflight=len(self._running),
            free_slots=free,
            limit=limit,
            slots_free_in_s=self._slots_free_in_s(job.slo.tpot_s),
        )

    def wait_behind_queue_s(self, tpot_s: float, ttft_s: float) -> float | None:
        """Predicted wait of a request arriving now behind every waiting one, under the given
        objectives (what the cluster router compares replicas by; ``None``: not yet known)."""
        limit = self.policy.concurrency_limit(
            tpot_s, ttft_s, self.service, self.clock(), explore=False, urgent=True
        )
        view = QueueView(
            queue_length=self._waiting,
            ahead=self._waiting,
            inflight=len(self._running),
            free_slots=None if limit is None else max(0, limit - len(self._running)),
            limit=limit,
            slots_free_in_s=self._slots_free_in_s(tpot_s),
        )
        return self.admission.predicted_wait_s(view)

    def _slots_free_in_s(self, default_step_s: float) -> tuple[float, ...]:
        """When each running request is expected to end, soonest first: its expected remaining
        tokens at the current step time (the TPOT objective until a step time is known)."""
        if not self._running:
            return ()
        step = self.service.step_time_s(len(self._running), self.clock()) or default_step_s
        return tuple(sorted(self.policy.remaining_tokens(j) * step for j in self._running))

    @staticmethod
    def _valid(seq: int, job: Job) -> bool:
        return job.state is JobState.WAITING and job.heap_seq == seq

    def _push(self, job: Job) -> None:
        if job.state is not JobState.WAITING:
            job.state = JobState.WAITING
            self._waiting += 1
        job.heap_seq = next(self._seq)
        heapq.heappush(self._heap, (self.policy.order_key(job), job.heap_seq, job))

    # -- dispatch ------------------------------------------------------------------------------

    def _pump(self, now: float) -> None:
        """Start waiting jobs in key order while the budget allows.

        A job too large for the KV cache beside any other (``EngineBudget.oversized``) goes
        alone, when the engine is idle; until then the jobs behind it are not held up by it —
        one such prompt used to stop all dispatch for seconds. If no idle moment comes within
        its TTFT objective, it is turned away like any request that cannot meet it.
        """
        passed: list[tuple[tuple[float, ...], int, Job]] = []
        while self._heap:
            _, seq, job = self._heap[0]
            if not self._valid(seq, job):
                heapq.heappop(self._heap)
                continue
            if not self._still_wanted(job, now):
                continue
            limit = self.concurrency_limit(job)
            if limit is not None and len(self._running) >= limit:
                if not self._due(job, now):
                    break
                stretched = self.concurrency_limit(job, urgent=True)
                if stretched is not None and len(self._running) >= stretched:
                    break
            if not self.budget.kv_fits(job.kv_tokens):
                if self.budget.oversized(job.kv_tokens) and len(passed) < _MAX_PASSED:
                    passed.append(heapq.heappop(self._heap))
                    continue
                break
            if not self._prefill_fits(job, now):
                break
            heapq.heappop(self._heap)
            self._waiting -= 1
            self._start(job, now)
        for entry in passed:
            heapq.heappush(self._heap, entry)

    def _due(self, job: Job, now: float) -> bool:
        """Whether ``job`` would miss its TTFT waiting for the next slot to free.

        Such a request may go past the limit, up to the batch whose step time reaches the TPOT
        objective itself rather than 90% of it: the objective is on each request's mean TPOT
        over its life, and a burst's peak is short, while a missed first token is certain. (At
        4 req/s the limit with headroom alone made the gateway turn away 22% of the requests
        that plain vLLM served all within the SLO.)
        """
        if job.best_effort:
            return False
        ends = self._slots_free_in_s(job.slo.tpot_s)
        soonest = ends[0] if ends else 0.0
        first_token = self.admission.first_token_s(job, len(self._running) + 1)
        return now + soonest + first_token > job.ttft_deadline

    def _prefill_fits(self, job: Job, now: float) -> bool:
        """Whether ``job``'s prefill can join those in progress without making a request that
        would otherwise get its first token in time miss it.

        An engine prefills a burst of new requests together, so each one added delays every
        first token still pending: nine ~100-token prompts sent at once all got their first
        token after one 360 ms step on the benchmark's CPU engine (objective 307 ms), where in
        smaller groups most would have made it. Requests held back here go out as the pending
        first tokens arrive. Always true for a pass-through policy, when nothing is prefilling,
        and while the prefill time is not yet learned.
        """
        if not self.policy.holds_requests or not self._prefilling:
            return True
        predict = self.service.predict_prefill_s
        for pending in self._prefilling:
            if pending.best_effort or pending.dispatched_at is None:
                continue
            alone = predict(pending.prefill_tokens)
            joined = predict(pending.prefill_tokens + job.work_tokens)
            if alone is None or joined is None:
                return True
            start, deadline = pending.dispatched_at, pending.ttft_deadline
            if start + alone <= deadline < start + joined:
                return False
        return True

    def _still_wanted(self, job: Job, now: float) -> bool:
        """Apply the waiting-time verdict; False if the job left the head of the queue."""
        try:
            verdict = self.admission.check_waiting(job, now, len(self._running) + 1)
        except Rejection as rejection:
            self._drop(job, rejection)
            return False
        if verdict is Verdict.DEMOTE and not job.best_effort:
            job.best_effort = True
            self._push(job)  # re-keyed behind every SLO request; the old entry goes stale
            return False
        return True

    def _drop(self, job: Job, rejection: Rejection) -> None:
        job.state = JobState.DONE
        self._waiting -= 1
        if job.waiter is not None and not job.waiter.done():
            job.waiter.set_exception(rejection)

    def _start(self, job: Job, now: float) -> None:
        self._advance_area(now)
        job.state = JobState.RUNNING
        job.dispatched_at = now
        self._running.add(job)
        job.concurrency_at_dispatch = len(self._running)
        job.prefill_tokens = job.work_tokens
        for pending in self._prefilling:
            pending.prefill_tokens += job.work_tokens
            job.prefill_tokens += pending.work_tokens
        if not self._prefilling:
            self.service.live.prefill_started(now)
        self._prefilling.add(job)
        self.budget.commit(job.kv_tokens)
        if job.waiter is not None and not job.waiter.done():
            job.waiter.set_result(None)

    def sweep(self) -> None:
        """Re-judge every waiting job (deadlines pass while they wait), then dispatch."""
        now = self.clock()
        for _, seq, job in list(self._heap):
            if self._valid(seq, job):
                self._still_wanted(job, now)
        self._pump(now)

    # -- completion ----------------------------------------------------------------------------

    def mark_first_token(self, job: Job) -> None:
        now = self.clock()
        job.first_token_at = now
        job.last_token_at = now
        self._advance_area(now)
        job.concurrency_area_at_first_token = self._area
        if self._prefilled(job) and self._waiting:
            self._pump(now)  # a prefill finished: a request held back for it may go now

    def _prefilled(self, job: Job) -> bool:
        """Take ``job`` off the prefilling set; True if it was on it."""
        if job not in self._prefilling:
            return False
        self._prefilling.discard(job)
        if not self._prefilling:
            self._prefill_ended_at = self.clock()
            self.service.live.prefill_ended(self._prefill_ended_at)
        return True

    def on_tokens(self, job: Job, count: int) -> None:
        """``count`` output tokens of ``job`` were just relayed: the first marks its first
        token; after it, the time since the previous ones is a live sample of the step time at
        the current batch — a decode step's, or, if another request's prompt was prefilled
        meanwhile, a step that carried a prefill too (the monitor keeps them apart)."""
        if count <= 0:
            return
        if job.first_token_at is None:
            self.mark_first_token(job)
            job.generated_tokens += count
            return
        now = self.clock()
        last = job.last_token_at
        if last is not None and job.state is JobState.RUNNING:
            during_prefill = bool(self._prefilling) or self._prefill_ended_at > last
            self.service.live.observe(
                len(self._running), (now - last) / count, now, during_prefill=during_prefill
            )
        job.last_token_at = now
        job.generated_tokens += count

    def release(
        self,
        job: Job,
        *,
        completed: bool = False,
        output_tokens: int = 0,
        streamed: bool = False,
        end: float | None = None,
    ) -> None:
        """The request ended (finished, failed or abandoned): free its place, learn, dispatch.
        ``end`` is when its last token was delivered, if earlier than now."""
        now = self.clock()
        if job.state is JobState.WAITING:
            job.state = JobState.DONE
            self._waiting -= 1
            return
        if job.state is not JobState.RUNNING:
            job.state = JobState.DONE
            return
        self._advance_area(now)
        job.state = JobState.DONE
        self._running.discard(job)
        self._prefilled(job)
        self.budget.release(job.kv_tokens)
        if completed and job.dispatched_at is not None:
            last = now if end is None else min(end, now)
            self._learn(job, now, last, output_tokens, streamed)
        self._pump(now)

    def _learn(
        self, job: Job, now: float, last_token: float, output_tokens: int, streamed: bool
    ) -> None:
        assert job.dispatched_at is not None
        first = job.first_token_at
        tpot: float | None = None
        concurrency = float(len(self._running) + 1)
        if streamed and first is not None and output_tokens > 1 and last_token > first:
            tpot = (last_token - first) / (output_tokens - 1)
            concurrency = (self._area - job.concurrency_area_at_first_token) / (now - first)
        elif not streamed and output_tokens > 1:
            # Only the whole answer was seen: charge the usual time to first token, the rest
            # to the tokens after it.
            ttft = self.service.predict_first_token_s(job.concurrency_at_dispatch)
            decode = now - job.dispatched_at - ttft
            if decode > 0:
                tpot = decode / (output_tokens - 1)
        self.service.observe(
            concurrency=concurrency,
            concurrency_at_dispatch=job.concurrency_at_dispatch,
            first_token_after_dispatch_s=None if first is None else first - job.dispatched_at,
            tpot_s=tpot,
            service_s=now - job.dispatched_at,
            prefill_tokens=job.prefill_tokens,
        )

    def _advance_area(self, now: float) -> None:
        self._area += len(self._running) * (now - self._area_t)
        self._area_t = now

    # -- background ----------------------------------------------------------------------------

    async def _sweep_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            if self._waiting:
                self.sweep()

    def start(self, interval_s: float = 0.05) -> None:
        self._sweeper = asyncio.create_task(self._sweep_forever(interval_s), name="sweeper")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
