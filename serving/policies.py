"""Scheduling policies: small objects that judge which waiting request goes to the engine next
and how much the engine may be given at once. The ``Dispatcher`` is the mechanism; these are the
judgement, so policies can be swapped and compared on the same benchmark.

- ``fcfs``: pass-through — every request goes to the engine at once, as if there were no gateway.
  The baseline.
- ``slo``: hold requests in the gateway and dispatch the cheapest-with-least-slack first, only
  as many as keep the learned time per output token within the objective and the engine's KV
  cache within its capacity; requests that can no longer meet their TTFT are not sent at all.
- ``oracle``: ``slo`` with the true output length (header ``x-goodput-oracle-output-tokens``,
  supplied by a benchmark) instead of the prediction: the bound on what better prediction buys.
"""

from __future__ import annotations

from typing import Protocol

from goodput.api.gateway_config import PolicyName
from goodput.serving.job import Job
from goodput.serving.service_model import ServiceModel


class SchedulingPolicy(Protocol):
    name: str
    holds_requests: bool
    """False for a pass-through policy: nothing waits in the gateway, nothing is rejected early."""

    def expected_output_tokens(self, job: Job) -> float:
        """The output length the policy plans with."""
        ...

    def kv_tokens(self, job: Job) -> float:
        """KV-cache tokens to reserve for the job while it runs."""
        ...

    def order_key(self, job: Job) -> tuple[float, ...]:
        """Waiting jobs go to the engine in ascending key order. The key must not change while
        the job waits (the queue is a heap); it may use absolute times such as deadlines."""
        ...

    def remaining_tokens(self, job: Job) -> float:
        """Output tokens a running job is expected still to generate."""
        ...

    def concurrency_limit(
        self,
        tpot_s: float,
        ttft_s: float,
        service: ServiceModel,
        now: float,
        *,
        explore: bool = True,
        urgent: bool = False,
    ) -> int | None:
        """How many requests the engine may run at once, given the tightest TPOT and TTFT
        objectives among them; ``None`` for no limit. ``explore=False``: only a limit the
        measurements show, not one that is a step of learning (what admission judges by).
        ``urgent``: the limit for a request that would miss its TTFT if it waited for a slot
        (it may use the headroom kept for the TPOT objective)."""
        ...


def _remaining(job: Job, expected: float, pessimistic: float) -> float:
    """Tokens still to come: the expectation less what was generated; once a job has outlived
    its expected length, half the way to the pessimistic one (it is at least that long)."""
    done = job.generated_tokens
    if done < expected:
        return expected - done
    return max((pessimistic - done) / 2.0, 1.0)


class FcfsPolicy:
    """What the engine does by itself: first come, first served, no limit."""

    name = "fcfs"
    holds_requests = False

    def expected_output_tokens(self, job: Job) -> float:
        return job.prediction.p50

    def kv_tokens(self, job: Job) -> float:
        return job.prompt_tokens + job.prediction.p90

    def order_key(self, job: Job) -> tuple[float, ...]:
        return (job.arrival,)

    def remaining_tokens(self, job: Job) -> float:
        return _remaining(job, job.prediction.p50, job.prediction.p90)

    def concurrency_limit(
        self,
        tpot_s: float,
        ttft_s: float,
        service: ServiceModel,
        now: float,
        *,
        explore: bool = True,
        urgent: bool = False,
    ) -> int | None:
        return None


class SloPolicy:
    """Least (cost + slack) first, within a learned concurrency limit.

    The key is ``(best_effort, priority rank, cost + slack_weight·TTFT deadline)`` where cost is
    the request's service time at its objective's speed (expected tokens times the TPOT objective).
    Among requests of similar deadlines the shortest goes first — many short requests finish
    within their SLO in the time one long one takes, which is what goodput counts — while a
    request whose deadline comes much sooner still overtakes a somewhat shorter one. Because the
    cheapest requests are taken together, each dispatch wave is a group of similar predicted
    length, and a short request never waits behind a long one's whole generation.
    """

    name = "slo"
    holds_requests = True

    def __init__(
        self,
        *,
        slack_weight: float = 1.0,
        tpot_headroom: float = 0.9,
        urgent_tpot_headroom: float = 1.0,
        max_concurrency: int | None = None,
        initial_concurrency: int | None = None,
    ) -> None:
        self._slack_weight = slack_weight
        self._headroom = tpot_headroom
        self._urgent_headroom = urgent_tpot_headroom
        self._max_concurrency = max_concurrency
        self._initial = initial_concurrency

    def expected_output_tokens(self, job: Job) -> float:
        return job.prediction.p50

    def kv_tokens(self, job: Job) -> float:
        # Reserve for the pessimistic length: a preempted request costs more than a waiting one.
        return job.prompt_tokens + job.prediction.p90

    def order_key(self, job: Job) -> tuple[float, ...]:
        cost_s = self.expected_output_tokens(job) * job.slo.tpot_s
        return (
            1.0 if job.best_effort else 0.0,
            float(job.slo.rank),
            cost_s + self._slack_weight * job.ttft_deadline,
        )

    def remaining_tokens(self, job: Job) -> float:
        return _remaining(job, self.expected_output_tokens(job), job.prediction.p90)

    def concurrency_limit(
        self,
        tpot_s: float,
        ttft_s: float,
        service: ServiceModel,
        now: float,
        *,
        explore: bool = True,
        urgent: bool = False,
    ) -> int | None:
        # As many as keep decode steps within the TPOT objective (with headroom), measured live.
        # TTFT is not a batch limit: it is protected by ordering and admission, since a request's
        # first token comes one step after it is sent, and a step is within the TPOT objective.
        # Before anything is measured, dispatch starts from a small batch and explores upward:
        # a cold gateway that sent a whole burst at once had every request of it miss (a burst
        # of 307: goodput 0, where a warm gateway served 68 within the SLO). Admission, which
        # asks without exploring, is not held to that starting point.
        initial = self._initial
        if initial is not None and explore and not service.knows_step_time(now):
            return min(initial, self._max_concurrency or initial)
        limits = [
            limit
            for limit in (
                service.tpot_limit(
                    tpot_s,
                    self._urgent_headroom if urgent else self._headroom,
                    now,
                    explore=explore,
                ),
                self._max_concurrency,
            )
            if limit is not None
        ]
        return min(limits) if limits else None


class OraclePolicy(SloPolicy):
    """``slo`` planning with the true output length when the client supplies it."""

    name = "oracle"

    def expected_output_tokens(self, job: Job) -> float:
        if job.oracle_output_tokens is not None:
            return float(job.oracle_output_tokens)
        return job.prediction.p50

    def kv_tokens(self, job: Job) -> float:
        if job.oracle_output_tokens is not None:
            return float(job.prompt_tokens + job.oracle_output_tokens)
        return job.prompt_tokens + job.prediction.p90

    def remaining_tokens(self, job: Job) -> float:
        if job.oracle_output_tokens is not None:
            return max(job.oracle_output_tokens - job.generated_tokens, 1.0)
        return super().remaining_tokens(job)


def make_policy(
    name: PolicyName,
    *,
    max_concurrency: int | None = None,
    initial_concurrency: int | None = None,
) -> SchedulingPolicy:
    if name == "fcfs":
        return FcfsPolicy()
    policy = SloPolicy if name == "slo" else OraclePolicy
    return policy(max_concurrency=max_concurrency, initial_concurrency=initial_concurrency)
