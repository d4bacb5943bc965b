"""The arrival rate a replica started now would meet: the autoscaler's look-ahead.

A replica asked for now serves only after its cold start (``goodput.profiler.cold_start``), so a
rule that follows the current rate is one cold start late on every ramp. The forecast stage
judges what the rate will be then.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class ArrivalForecast(Protocol):
    def rate_at(self, history: Sequence[tuple[float, float]], lead_s: float) -> float:
        """Requests/s expected ``lead_s`` after the last of ``history`` ((at_s, rps) ticks,
        oldest first, at least one)."""
        ...


@dataclass(frozen=True)
class TrendForecast:
    """The last ``level_s`` seconds' mean rate plus the trend of the last ``window_s`` seconds
    over the lead.

    The level is short (bursts within a minute are what the headroom absorbs), the trend long
    and robust: a Theil-Sen slope (the median of the slopes between every two ticks), which a
    diurnal ramp sets exactly and a burst or a step barely moves, where a least-squares line
    would extrapolate either into replicas that arrive after it ended. ``damping`` scales the
    slope (1: trusted fully); the forecast never drops below zero.
    """

    window_s: float = 600.0
    level_s: float = 60.0
    damping: float = 1.0

    def rate_at(self, history: Sequence[tuple[float, float]], lead_s: float) -> float:
        now = history[-1][0]
        level = [r for t, r in history if t > now - self.level_s] or [history[-1][1]]
        rate = sum(level) / len(level)
        points = [(t, r) for t, r in history if t > now - self.window_s]
        if len(points) < 4 or now - points[0][0] < self.window_s / 4:
            return rate  # too short a history for a slope
        slopes = sorted(
            (r2 - r1) / (t2 - t1)
            for i, (t1, r1) in enumerate(points)
            for t2, r2 in points[i + 1 :]
            if t2 > t1
        )
        mid = len(slopes) // 2
        slope = slopes[mid] if len(slopes) % 2 else (slopes[mid - 1] + slopes[mid]) / 2
        return max(0.0, rate + self.damping * slope * lead_s)
