"""Admission: answer early the requests that cannot meet their SLO, instead of letting them wait
and then take engine time from requests that still can.

On arrival, a request whose predicted wait plus time to first token already exceeds its TTFT
objective is rejected (429, ``Retry-After`` = predicted wait) or, with ``overload: best-effort``,
demoted to best effort: served after every SLO request, when capacity is left over. While it
waits, a request whose TTFT can no longer be met is treated the same way. Nothing waits forever:
the queue is bounded, and best-effort requests give up after a bounded wait.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from goodput.api.gateway_config import OverloadAction
from goodput.serving.job import Job
from goodput.serving.service_model import ServiceModel


class RejectReason(enum.Enum):
    SLO_UNATTAINABLE = "slo_unattainable"
    QUEUE_FULL = "queue_full"
    DRAINING = "draining"
    INVALID = "invalid"
    ENGINE_UNAVAILABLE = "engine_unavailable"


class Rejection(Exception):
    """Raised when a request is turned away; carries what the 429 (or 503) answer needs."""

    def __init__(self, reason: RejectReason, retry_after_s: float, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after_s = retry_after_s
        self.message = message


class Verdict(enum.Enum):
    ADMIT = "admit"
    DEMOTE = "demote"


@dataclass(frozen=True, slots=True)
class QueueView:
    """What an arriving request would face: waiting requests ahead of it in policy order, free
    engine slots now, and the concurrency limit (``None``: unlimited or not yet learned)."""

    queue_length: int
    ahead: int
    inflight: int
    free_slots: int | None
    limit: int | None
    slots_free_in_s: tuple[float, ...] = ()
    """When each running request is expected to end, soonest first."""


class AdmissionController:
    def __init__(
        self,
        service: ServiceModel,
        *,
        overload: OverloadAction,
        max_queue_length: int,
        max_queue_delay_s: float | None,
        best_effort_max_wait_s: float = 60.0,
        first_token_share: float = 0.5,
    ) -> None:
        self._service = service
        self._overload = overload
        self._max_queue = max_queue_length
        self._max_delay = max_queue_delay_s
        self._first_token_share = first_token_share
        self._best_effort_wait = (
            best_effort_max_wait_s if max_queue_delay_s is None else max_queue_delay_s
        )

    def predicted_wait_s(self, view: QueueView) -> float | None:
        """Time until a slot frees for a request with ``view.ahead`` requests ahead of it.

        The k-th slot to free (k = requests ahead + 1 - free slots, counting slots taken beyond
        a lowered limit as negative) frees when the k-th running request ends; past the running
        ones, slots free at ``limit / mean service time`` per second. ``None``: unknown.
        """
        if view.limit is None:
            return 0.0 if view.free_slots is None else None
        k = view.ahead + 1 - (view.limit - view.inflight)
        if k <= 0:
            return 0.0
        ends = view.slots_free_in_s
        if k <= len(ends):
            return ends[k - 1]
        service_s = self._service.service_s.value
        if service_s is None:
            return None
        return (ends[-1] if ends else 0.0) + (k - len(ends)) * service_s / view.limit

    def on_arrival(self, job: Job, view: QueueView, now: float) -> Verdict:
        """Admit, demote, or raise ``Rejection``."""
        if view.queue_length >= self._max_queue:
            wait = self.predicted_wait_s(view)
            raise Rejection(
                RejectReason.QUEUE_FULL,
                wait if wait is not None else 1.0,
                f"The request queue is full ({self._max_queue} waiting); retry later.",
            )
        wait = self.predicted_wait_s(view)
        if wait is None:
            return Verdict.ADMIT
        concurrency = min(view.limit or view.inflight + 1, view.inflight + 1)
        first_token = now + wait + self.first_token_s(job, concurrency)
        late = first_token > job.ttft_deadline
        if not late and job.slo.e2e_s is not None:
            tpot = self._service.step.predict(concurrency) or job.slo.tpot_s
            finish = first_token + tpot * max(job.expected_output_tokens - 1.0, 0.0)
            late = finish > job.arrival + job.slo.e2e_s
        if not late:
            return Verdict.ADMIT
        return self._overloaded(wait)

    def first_token_s(self, job: Job, concurrency: float) -> float:
        """Predicted dispatch-to-first-token time, capped at its share of the TTFT objective.

        The cap bounds the cost of a wrong model: a request is declared doomed only once its
        own queueing has used up the rest of its budget, never by the first-token model alone
        (which on a busy machine once predicted every first token late and rejected requests
        arriving at an idle gateway).
        """
        predicted = self._service.predict_first_token_s(concurrency)
        return min(predicted, self._first_token_share * job.slo.ttft_s)

    def _overloaded(self, wait_s: float) -> Verdict:
        if self._overload == "best-effort":
            return Verdict.DEMOTE
        raise Rejection(
            RejectReason.SLO_UNATTAINABLE,
            wait_s,
            "The server cannot answer this request within its latency objective now; retry later.",
        )

    def check_waiting(self, job: Job, now: float, concurrency: float) -> Verdict:
        """For a request still waiting (which would run at ``concurrency`` if sent now): keep
        it, demote it, or raise ``Rejection``."""
        waited = now - job.arrival
        if job.best_effort:
            if waited > self._best_effort_wait:
                raise Rejection(
                    RejectReason.SLO_UNATTAINABLE,
                    1.0,
                    f"No capacity was free for this best-effort request within {waited:.0f} s.",
                )
            return Verdict.ADMIT
        if self._max_delay is not None and waited > self._max_delay:
            raise Rejection(
                RejectReason.SLO_UNATTAINABLE,
                1.0,
                f"The request waited {waited:.1f} s, longer than the deployment's maximum "
                "queue delay.",
            )
        if now + self.first_token_s(job, concurrency) > job.ttft_deadline:
            return self._overloaded(waited)
        return Verdict.ADMIT
