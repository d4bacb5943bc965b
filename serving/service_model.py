"""What the engine does with the requests it is given, learned online from finished requests.

A continuous-batching engine runs one decode step for every running request at once, so a
request's time per output token is the step time, and the step time grows with the batch:
``tpot(c) ≈ a + b·c`` for concurrency ``c`` (nearly flat on a GPU until memory bandwidth
saturates, nearly linear on a CPU). Fitting ``a`` and ``b`` from observed TPOTs tells the
scheduler the largest batch that still meets a TPOT objective — the engine, left alone, grows the
batch until every request misses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from goodput.serving.step_monitor import StepTimeMonitor


@dataclass(frozen=True, slots=True)
class LinearFit:
    intercept_s: float
    slope_s: float


class ConcurrencyLatencyModel:
    """Exponentially weighted least squares of a latency on concurrency: ``a + b·c``.

    Old samples fade (``decay`` per sample) so the fit follows changes in prompt mix. With too
    little spread in the observed concurrency the slope is not identifiable. With
    ``origin_fallback`` the model then assumes a line through the origin (the compute-bound
    assumption). Without it — the default — the model declines to answer until it has seen
    spread: a line through the origin blames every fixed cost (and, on a shared machine, every
    slowdown from other processes) on concurrency, which set the limit to one request in a
    benchmark here and kept it there, since at one request no spread is ever seen again.
    """

    def __init__(
        self, *, decay: float = 0.99, min_samples: int = 8, origin_fallback: bool = False
    ) -> None:
        self._decay = decay
        self._min_samples = min_samples
        self._origin_fallback = origin_fallback
        self._n = 0
        self._w = 0.0
        self._sx = 0.0
        self._sy = 0.0
        self._sxx = 0.0
        self._sxy = 0.0
        self._fit: LinearFit | None = None

    @property
    def samples(self) -> int:
        return self._n

    def observe(self, concurrency: float, latency_s: float) -> None:
        if not (concurrency > 0 and 0 < latency_s < math.inf):
            return
        d = self._decay
        self._w = self._w * d + 1.0
        self._sx = self._sx * d + concurrency
        self._sy = self._sy * d + latency_s
        self._sxx = self._sxx * d + concurrency * concurrency
        self._sxy = self._sxy * d + concurrency * latency_s
        self._n += 1
        self._fit = self._solve() if self._n >= self._min_samples else None

    def _solve(self) -> LinearFit | None:
        mean_x = self._sx / self._w
        mean_y = self._sy / self._w
        var_x = self._sxx / self._w - mean_x * mean_x
        if var_x > 0.25 * max(1.0, mean_x):  # concurrency varied enough to see the slope
            slope = (self._sxy / self._w - mean_x * mean_y) / var_x
            intercept = mean_y - slope * mean_x
            if slope > 0 and intercept >= 0:
                return LinearFit(intercept, slope)
            if slope > 0:  # a negative intercept is noise: keep the slope, pin a at zero
                return LinearFit(0.0, self._sxy / self._sxx)
            return LinearFit(mean_y, 0.0)  # latency does not grow with concurrency (yet)
        if not self._origin_fallback:
            return None
        return LinearFit(0.0, self._sxy / self._sxx)

    @property
    def fit(self) -> LinearFit | None:
        return self._fit

    def predict(self, concurrency: float) -> float | None:
        if self._fit is None:
            return None
        return self._fit.intercept_s + self._fit.slope_s * concurrency

    def max_concurrency(self, target_s: float, headroom: float) -> int | None:
        """The largest concurrency whose predicted latency is within ``headroom·target_s``.

        ``None`` — no limit — while the model does not know, when latency does not grow with
        concurrency, and when even one request at a time is predicted to miss: then holding
        requests back cannot meet the target and would only add queueing and rejections (on a
        shared CPU machine, noise from other processes did exactly this).
        """
        if self._fit is None or self._fit.slope_s <= 0:
            return None
        budget = target_s * headroom - self._fit.intercept_s
        limit = int(budget / self._fit.slope_s + 1e-9)
        return limit if limit >= 1 else None


class Ewma:
    """An exponentially weighted mean; ``None`` before the first sample."""

    def __init__(self, alpha: float) -> None:
        self._alpha = alpha
        self.value: float | None = None

    def observe(self, x: float) -> None:
        self.value = x if self.value is None else self.value + self._alpha * (x - self.value)


class ServiceModel:
    """The engine's learned behaviour: time per output token and time from dispatch to first
    token, each as a line in the concurrency, and how long a dispatched request holds its slot.

    Both latencies matter: a decode step slows as the batch grows, and so does a new request's
    first token (its prefill shares the steps, and a CPU-bound engine's front end slows too).
    """

    def __init__(self) -> None:
        self.step = ConcurrencyLatencyModel()
        self.first_token = ConcurrencyLatencyModel()
        # Dispatch to first token against the prompt tokens prefilling at once (its own and
        # those of requests dispatched before it that have no first token yet): an engine runs
        # the prefills of a burst together, so each new one delays every first token pending.
        self.prefill = ConcurrencyLatencyModel()
        self.service_s = Ewma(0.05)
        self.live = StepTimeMonitor()

    def step_time_s(self, concurrency: float, now: float) -> float | None:
        """Time per output token at ``concurrency``: measured live from streamed tokens, else
        the line through finished requests' TPOTs (non-streamed traffic); ``None`` if unknown."""
        live = self.live.estimate(concurrency, now)
        return live if live is not None else self.step.predict(concurrency)

    def knows_step_time(self, now: float) -> bool:
        """Whether any step time was measured yet (live or from finished requests)."""
        return bool(self.live.profile(now)) or self.step.fit is not None

    def tpot_limit(
        self, tpot_s: float, headroom: float, now: float, *, explore: bool = True
    ) -> int | None:
        """The largest batch that keeps time per token within ``headroom·tpot_s`` (with
        ``explore=False``, only where a measured level shows it; see ``StepTimeMonitor``)."""
        if self.live.profile(now):
            return self.live.max_concurrency(tpot_s, headroom, now, explore=explore)
        return self.step.max_concurrency(tpot_s, headroom)

    def predict_prefill_s(self, prompt_tokens: float) -> float | None:
        """Dispatch to first token with ``prompt_tokens`` prefilling at once; ``None``: unknown."""
        return self.prefill.predict(prompt_tokens)

    def predict_first_token_s(self, concurrency: float) -> float:
        """Dispatch to first token at ``concurrency``; 0 before anything is known."""
        return self.first_token.predict(concurrency) or 0.0

    def observe(
        self,
        *,
        concurrency: float,
        concurrency_at_dispatch: float,
        first_token_after_dispatch_s: float | None,
        tpot_s: float | None,
        service_s: float,
        prefill_tokens: float = 0.0,
    ) -> None:
        if first_token_after_dispatch_s is not None:
            self.first_token.observe(concurrency_at_dispatch, first_token_after_dispatch_s)
            self.prefill.observe(prefill_tokens, first_token_after_dispatch_s)
        if tpot_s is not None:
            self.step.observe(concurrency, tpot_s)
        self.service_s.observe(service_s)
