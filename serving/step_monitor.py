"""The engine's decode-step time at each batch size, measured live from the token stream.

Every streamed token the gateway relays is a sample of the engine's step time: the gap between
two token events of one stream, divided by the tokens they carried, is the time per output token
at the batch the engine was running. Kept per concurrency level, these samples answer the
question the scheduler asks — "how many requests can run at once and still meet the TPOT
objective?" — within seconds of start-up and without a model of the hardware, and they follow
the engine when its speed changes (another tenant on the machine, a longer prompt mix).

Why not a line fitted through per-request TPOTs (``service_model``): a finished request's TPOT
averages over the whole of its life, while the batch changed under it many times; and a request
reports once, seconds late. Here a second of traffic gives hundreds of samples, each at one
known batch size.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass


@dataclass(slots=True)
class _Level:
    samples: deque[tuple[float, float]]  # (time seen, seconds per token)

    def add(self, at: float, per_token_s: float) -> None:
        self.samples.append((at, per_token_s))

    def expire(self, before: float) -> None:
        while self.samples and self.samples[0][0] < before:
            self.samples.popleft()

    def typical_mean(self, spread: float) -> float:
        """Mean of the samples within ``spread``x of their median, either way.

        Two kinds of sample say nothing about the batch: a stall (the engine paused, swapped out
        or its API server fell behind, seconds per token) and the burst that follows it (tokens
        held back, then delivered together, microseconds apart). Each would drag a plain mean
        far off; the common slow steps a batch really causes (a prefill chunk riding along, a
        few times the usual step) stay within the band and count.
        """
        values = sorted(v for _, v in self.samples)
        median = values[len(values) // 2]
        kept = [v for v in values if median / spread <= v <= median * spread]
        return sum(kept) / len(kept)


class StepTimeMonitor:
    """Recent mean time per output token at each concurrency level, and the batch limit it
    implies for a TPOT objective.

    ``window`` samples per level, summarised by their mean (the objective is on each request's
    mean TPOT, so the slower steps a batch causes count) over those within ``spread``x of the
    median (a stall or a burst is not the batch's doing). Samples older than ``max_age_s`` are
    forgotten, so a level judged too slow once is tried again later. Levels with fewer than
    ``min_samples`` are unknown. The means are made non-decreasing in the batch size (a bigger
    batch is never faster; what looks faster is noise), and the limit may exceed the largest
    level known to be fast enough (up to twice it, along the measured trend): that is how the
    monitor learns the next levels.
    """

    def __init__(
        self,
        *,
        window: int = 256,
        min_samples: int = 24,
        max_age_s: float = 60.0,
        spread: float = 8.0,
    ) -> None:
        self._window = window
        self._spread = spread
        self._min_samples = min_samples
        self._max_age_s = max_age_s
        # Token gaps with no prefill in progress (decode steps alone), and with one (steps that
        # also carried another request's prompt), per batch size.
        self._levels: dict[int, _Level] = {}
        self._mixed: dict[int, _Level] = {}
        # One dispatch decision asks for the profile several times (limit, wait, admission):
        # it is recomputed only after new samples, once the oldest sample has aged out, or when
        # the prefill share has moved.
        self._version = 0
        self._cached: tuple[tuple[int, float], float, dict[int, float]] | None = None
        # Periods during which the engine had prefills to do, (start, end), within the last
        # max_age_s; their summed length; the start of the one in progress, if any.
        self._prefill_periods: deque[tuple[float, float]] = deque()
        self._prefill_busy_s = 0.0
        self._prefill_open_since: float | None = None
        self._started_at: float | None = None

    def prefill_started(self, now: float) -> None:
        """The engine has prompts to prefill (none had been pending)."""
        self._started_at = now if self._started_at is None else self._started_at
        self._prefill_open_since = now

    def prefill_ended(self, now: float) -> None:
        """Every pending prefill has produced its first token."""
        if self._prefill_open_since is not None:
            self._prefill_periods.append((self._prefill_open_since, now))
            self._prefill_busy_s += now - self._prefill_open_since
            self._prefill_open_since = None

    def prefill_share(self, now: float) -> float:
        """Fraction of the recent past (``max_age_s``, or since the first prefill) in which the
        engine had prefills to do: the part of every running request's time that went to
        other requests' prompts, on top of its decode steps."""
        if self._started_at is None:
            return 0.0
        horizon = now - self._max_age_s
        while self._prefill_periods and self._prefill_periods[0][1] < horizon:
            begin, end = self._prefill_periods.popleft()
            self._prefill_busy_s -= end - begin
        start = max(horizon, self._started_at)
        if now <= start:
            return 0.0
        # Kept as a running sum: this is asked on every dispatch decision.
        busy = self._prefill_busy_s
        if self._prefill_periods and self._prefill_periods[0][0] < start:
            busy -= start - self._prefill_periods[0][0]  # the part before the window
        if self._prefill_open_since is not None:
            busy += now - max(self._prefill_open_since, start)
        return max(0.0, min(1.0, busy / (now - start)))

    def observe(
        self, concurrency: int, per_token_s: float, now: float, *, during_prefill: bool = False
    ) -> None:
        """One stream's time per token since its previous event, with ``concurrency`` running;
        ``during_prefill`` if another request's prompt was being prefilled meanwhile."""
        if concurrency < 1 or not 0.0 < per_token_s < 60.0:
            return
        levels = self._mixed if during_prefill else self._levels
        level = levels.get(concurrency)
        if level is None:
            level = levels[concurrency] = _Level(deque(maxlen=self._window))
        level.add(now, per_token_s)
        self._version += 1

    def _means(self, levels: dict[int, _Level], horizon: float) -> dict[int, float]:
        known: dict[int, float] = {}
        for c in sorted(levels):
            level = levels[c]
            level.expire(horizon)
            if len(level.samples) >= self._min_samples:
                known[c] = level.typical_mean(self._spread)
        return known

    def _blend(self, now: float, share: float) -> dict[int, float]:
        """Per batch size, the time per token a request sees: decode steps for the part of the
        time without prefills, with-prefill steps for the ``share`` with them.

        Why two kinds: prefills come with arrivals, so a batch size that only bursts reach is
        seen mostly during the bursts' prefills; judged by those alone it looks slow and caps
        the batch too low (a fifth of the requests turned away at a rate plain vLLM served in
        time), while judged by decode steps alone it ignores what prefills cost every running
        request once arrivals are frequent. A level seen in one way only borrows the other from
        the median ratio of the levels seen both ways; with no such level yet, a decode-only
        level is charged the share as pure prefill time (at most half) and a with-prefill-only
        level is taken as it is.
        """
        horizon = now - self._max_age_s
        decode = self._means(self._levels, horizon)
        mixed = self._means(self._mixed, horizon)
        ratios = sorted(mixed[c] / decode[c] for c in decode.keys() & mixed.keys())
        ratio = ratios[len(ratios) // 2] if ratios else None
        known: dict[int, float] = {}
        for c in sorted(decode.keys() | mixed.keys()):
            d, m = decode.get(c), mixed.get(c)
            if d is not None and m is not None:
                known[c] = (1.0 - share) * d + share * m
            elif d is not None:
                known[c] = (
                    d / (1.0 - min(0.5, share))
                    if ratio is None
                    else (1.0 - share) * d + share * d * ratio
                )
            elif m is not None:
                known[c] = m if ratio is None else (1.0 - share) * m / ratio + share * m
        return known

    def profile(self, now: float) -> dict[int, float]:
        """Concurrency -> mean seconds per token, for the levels known now (non-decreasing)."""
        share = round(self.prefill_share(now), 2)
        if self._cached is not None:
            key, valid_until, cached = self._cached
            if key == (self._version, share) and now < valid_until:
                return cached
        known = self._blend(now, share)
        # Pool adjacent violators: the least-squares non-decreasing fit of the level means.
        blocks: list[tuple[float, int, list[int]]] = []  # (mean, weight, levels)
        for c, mean in known.items():
            blocks.append((mean, 1, [c]))
            while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
                (m2, w2, c2), (m1, w1, c1) = blocks.pop(), blocks.pop()
                blocks.append(((m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2, c1 + c2))
        profile = {c: mean for mean, _, levels in blocks for c in levels}
        oldest = min(
            (
                lv.samples[0][0]
                for lv in [*self._levels.values(), *self._mixed.values()]
                if lv.samples
            ),
            default=None,
        )
        valid_until = math.inf if oldest is None else oldest + self._max_age_s
        self._cached = ((self._version, share), valid_until, profile)
        return profile

    def estimate(self, concurrency: float, now: float) -> float | None:
        """Seconds per token at ``concurrency``: the known level, or a line through the nearest
        known ones (proportional to the batch below the smallest); ``None`` if none is known."""
        profile = self.profile(now)
        if not profile:
            return None
        levels = sorted(profile)
        if concurrency in profile:
            return profile[int(concurrency)]
        below = [c for c in levels if c < concurrency]
        above = [c for c in levels if c > concurrency]
        if not below:
            return profile[above[0]] * concurrency / above[0]
        lo = below[-1]
        if above:
            hi = above[0]
        elif len(below) > 1:
            lo, hi = below[-2], below[-1]
        else:
            return profile[lo] * concurrency / lo
        slope = (profile[hi] - profile[lo]) / (hi - lo)
        return profile[lo] + slope * (concurrency - lo)

    def max_concurrency(
        self, target_s: float, headroom: float, now: float, *, explore: bool = True
    ) -> int | None:
        """The largest batch expected to keep time per token within ``headroom·target_s``.

        With ``explore=False`` only a limit the measurements show is returned: ``None`` while
        every measured level is fast enough. Admission asks for that one — a request must not be
        turned away for a limit that is only a step of exploration (with two requests measured
        at a third of the objective, the third request of a burst was rejected at 1 req/s);
        dispatch uses the exploring one, so the queue waits at most until the next level is
        measured (a fraction of a second of traffic).

        ``None`` (no limit) while nothing is known, or when one request at a time is known to be
        too slow (holding requests back cannot help then). Between a fast-enough level and the
        next known slow one, the crossing is interpolated. Past the largest known level (all
        fast), the line through the two largest known levels is followed to its crossing, but
        at most to twice that level (at least one more): a batch limit that grew one request at
        a time made bursts wait at a low load — with 2 requests measured, the third of a burst
        was predicted to wait for a running one to end and was rejected, on an engine that runs
        twelve within the objective. Below the smallest known level, when even that one is
        slow, time per token is taken as proportional to the batch.
        """
        profile = self.profile(now)
        if not profile:
            return None
        budget = target_s * headroom
        fast = [c for c, mean in profile.items() if mean <= budget]
        if not fast:
            lowest = min(profile)
            if lowest == 1:
                return None
            return max(1, min(lowest - 1, int(lowest * budget / profile[lowest] + 1e-9)))
        best = max(fast)
        slower = [c for c in profile if c > best]
        if not slower:
            if not explore:
                return None
            return max(best + 1, min(2 * best, self._extrapolate(profile, best, budget)))
        slow = min(slower)
        rise = profile[slow] - profile[best]
        crossing = best + (budget - profile[best]) / rise * (slow - best) if rise > 0 else best
        return max(best, min(slow - 1, int(crossing)))

    @staticmethod
    def _extrapolate(profile: dict[int, float], top: int, budget: float) -> int:
        """Where the line through the two largest known levels reaches ``budget`` (through the
        origin with one level: time per token proportional to the batch, the pessimistic case)."""
        below = [c for c in profile if c < top]
        if below:
            low = max(below)
            slope = (profile[top] - profile[low]) / (top - low)
        else:
            slope = profile[top] / top
        if slope <= 0:
            return 2 * top
        return int(top + (budget - profile[top]) / slope + 1e-9)
