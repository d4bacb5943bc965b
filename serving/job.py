"""A request as the scheduler sees it: its objective, its predicted size, and where it is."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field

from goodput.serving.length_estimate import LengthPrediction
from goodput.serving.slo import RequestSLO


class JobState(enum.Enum):
    NEW = "new"
    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"


@dataclass(eq=False, slots=True)
class Job:
    request_id: str
    arrival: float
    slo: RequestSLO
    prompt_tokens: int
    prediction: LengthPrediction
    max_tokens: int | None = None
    model: str | None = None
    """The adapter it asked for; None: the base model."""
    oracle_output_tokens: int | None = None
    best_effort: bool = False
    state: JobState = JobState.NEW
    # Filled in by the policy when the job is queued.
    expected_output_tokens: float = 0.0
    kv_tokens: float = 0.0
    # Filled in by the dispatcher.
    dispatched_at: float | None = None
    concurrency_at_dispatch: int = 0
    # Prompt tokens prefilled together with this one's: its own, those of requests dispatched
    # before it still awaiting their first token, and those dispatched after it until its own
    # first token came. What its first token waits for.
    prefill_tokens: float = 0.0
    prefill_work: float | None = None
    """Its prompt tokens not in the engine's prefix cache, as the gateway estimates them from
    what it sent there (``HeldBlocks``); None: all of them."""
    first_token_at: float | None = None
    last_token_at: float | None = None
    generated_tokens: int = 0
    heap_seq: int = -1
    waiter: asyncio.Future[None] | None = field(default=None, repr=False)
    concurrency_area_at_first_token: float = 0.0

    @property
    def work_tokens(self) -> float:
        """The prompt tokens its prefill computes: a cached prefix costs the engine nothing."""
        return self.prompt_tokens if self.prefill_work is None else self.prefill_work

    @property
    def ttft_deadline(self) -> float:
        return self.arrival + self.slo.ttft_s
