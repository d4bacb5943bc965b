"""Learning output lengths from a deployment's own traffic: the gateway's request log.

Two speeds, because they cost differently:

* every finished request updates its model's calibration, verbosity and per-model correction (a
  rank-one Bayesian update; with the prompt's features, about 0.6 ms of CPU): an unseen model is
  calibrated within a few dozen requests;
* every ``refit_every`` usable requests, the prompt model is refitted on the recent window,
  shrunk toward the current one (``warm_start``), so the deployment's own users' prompts shape it
  without a small log undoing what the shipped model learned.

A response cut off by ``max_tokens`` (``finish_reason == "length"``) only says the true length is
at least that: it is neither a calibration sample nor a training row, and is counted apart.

The log is JSON Lines, one object per finished request, written by the gateway (the schema is in
the project's common contract): ``ts, deployment, model, request_id, prompt, prompt_tokens,
max_tokens, predicted_p50, predicted_p90, output_tokens, finish_reason``.
"""

from __future__ import annotations

import copy
import json
import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from goodput.profiler.length_predictor import LengthPredictor

__all__ = [
    "LoggedRequest",
    "OnlineLengthLearner",
    "OnlineSummary",
    "parse_request_line",
    "read_request_log",
    "refitted",
]


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    """The fields of a request-log line that learning needs."""

    model: str
    prompt: str
    output_tokens: int
    finish_reason: str
    predicted_p50: float | None = None
    ts: float = 0.0

    @property
    def truncated(self) -> bool:
        """The engine stopped at ``max_tokens``: the true length is only bounded below."""
        return self.finish_reason == "length"


def parse_request_line(line: str) -> LoggedRequest | None:
    """One request-log line as a record; None when it is not a valid one."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict):
        return None
    model, prompt, tokens = obj.get("model"), obj.get("prompt"), obj.get("output_tokens")
    if not isinstance(model, str) or not isinstance(prompt, str):
        return None
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
        return None
    p50 = obj.get("predicted_p50")
    ts = obj.get("ts")
    return LoggedRequest(
        model=model,
        prompt=prompt,
        output_tokens=tokens,
        finish_reason=str(obj.get("finish_reason", "")),
        predicted_p50=float(p50) if isinstance(p50, int | float) else None,
        ts=float(ts) if isinstance(ts, int | float) else 0.0,
    )


def read_request_log(*paths: str | Path) -> Iterator[LoggedRequest | None]:
    """Records of the given log files in order; ``None`` for a line that is not a valid record.

    Pass the rotated file first (``log.1`` then ``log``) to read in time order. Missing files
    are skipped: a fresh deployment has no log yet.
    """
    for path in paths:
        p = Path(path)
        if not p.exists():
            continue
        with p.open(encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.strip():
                    yield parse_request_line(line)


@dataclass
class OnlineSummary:
    """What a pass over a log did, and how good the predictions in it were."""

    used: int = 0
    truncated: int = 0
    malformed: int = 0
    refits: int = 0
    # Logged prediction vs actual, on usable requests: |p50 - actual| / max(actual, 1).
    logged_errors: list[float] = field(default_factory=list, repr=False)

    @property
    def median_logged_error(self) -> float | None:
        if not self.logged_errors:
            return None
        ordered = sorted(self.logged_errors)
        return ordered[len(ordered) // 2]


class OnlineLengthLearner:
    """Keeps a ``LengthPredictor`` tuned to the traffic it sees.

    ``predictor`` is the live model; a refit builds a new one on a copy and swaps it in whole, so a
    reader holding the old one never sees a half-updated model.
    """

    def __init__(
        self,
        predictor: LengthPredictor,
        *,
        refit_every: int = 2000,
        window: int = 20000,
        min_prompts: int = 200,
    ) -> None:
        self.predictor = predictor
        self.refit_every = refit_every
        self.min_prompts = min_prompts
        self._window: deque[tuple[str, str, int]] = deque(maxlen=window)
        self._since_refit = 0

    def observe(self, record: LoggedRequest, summary: OnlineSummary | None = None) -> None:
        """Learn from one finished request (calibration now, prompt model at the next refit)."""
        stats = summary if summary is not None else OnlineSummary()
        if record.truncated:
            stats.truncated += 1
            return
        stats.used += 1
        if record.predicted_p50 is not None and math.isfinite(record.predicted_p50):
            stats.logged_errors.append(
                abs(record.predicted_p50 - record.output_tokens) / max(record.output_tokens, 1)
            )
        self.predictor.observe_request(record.prompt, record.model, record.output_tokens)
        self._window.append((record.prompt, record.model, record.output_tokens))
        self._since_refit += 1
        if self._since_refit >= self.refit_every and self.refit():
            stats.refits += 1

    def remember(self, record: LoggedRequest) -> bool:
        """Window a finished request for the next refit without calibrating on it, for a caller
        that calibrates as each answer arrives (the gateway); False for a truncated one."""
        if record.truncated:
            return False
        self._window.append((record.prompt, record.model, record.output_tokens))
        self._since_refit += 1
        return True

    @property
    def due(self) -> bool:
        """``refit_every`` usable requests arrived since the last refit, and the window holds
        enough distinct prompts to refit on."""
        return self._since_refit >= self.refit_every and self._enough_prompts()

    def _enough_prompts(self) -> bool:
        return len({p for p, _, _ in self._window}) >= self.min_prompts

    def training_set(self) -> tuple[list[tuple[str, str]], list[int]]:
        """The window as a refit's inputs: ``(prompt, model)`` pairs and their output lengths."""
        return [(p, m) for p, m, _ in self._window], [y for _, _, y in self._window]

    def adopt(self, model: LengthPredictor) -> None:
        """Make a model refitted on ``training_set`` (elsewhere) the current one."""
        self.predictor = model
        self._since_refit = 0

    def refit(self) -> bool:
        """Refit the prompt model on the window, warm-started; False if too few distinct prompts."""
        if not self._enough_prompts():
            return False
        self.adopt(refitted(copy.deepcopy(self.predictor), *self.training_set()))
        return True

    def consume(self, records: Iterable[LoggedRequest | None]) -> OnlineSummary:
        """Learn from a stream of log records (``None`` marks a malformed line)."""
        summary = OnlineSummary()
        for record in records:
            if record is None:
                summary.malformed += 1
                continue
            self.observe(record, summary)
        return summary


def refitted(
    candidate: LengthPredictor, prompts: list[tuple[str, str]], output_tokens: list[int]
) -> LengthPredictor:
    """``candidate`` (a copy of the live model, which it changes) refitted on a window of
    ``(prompt, model)`` pairs, shrunk toward its current self (``warm_start``). A module-level
    function, so it can run in another process."""
    candidate.set_params(warm_start=True)
    return candidate.fit(prompts, output_tokens)
