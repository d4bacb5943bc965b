"""A day of traffic, compressed: the Azure conversation trace's requests on a diurnal envelope.

The shared Azure trace (``../shared/data/traces/azure_llm_2023_conv.csv``) covers one hour
(2023-11-16, 18:15-19:14, 19,366 requests): it has real burstiness, a real 2.6x swing between
its quietest and busiest minute, and real prompt and output lengths, but no day. The day's shape
is therefore an envelope written here (``DAY``: relative rate per hour, a trough at 04:00 of 0.2
of the 14:00 peak, the shape of an interactive service in one region; not measured). The day
(86,400 s) is compressed into ``day_s`` simulated seconds; the trace is not: copies of it, at
its own time scale, are superposed to reach the rate and thinned to the envelope
(``compressed_day``). So the day's ramps are ``86400 / day_s`` times steeper than a real day's
while cold starts and the trace's minute-to-minute swings keep their real length, which makes
every autoscaler's job harder than in production, not easier.

``BUSINESS_DAY`` is a second envelope, an internal service idle from 21:00 to 07:00, for scale
to zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from goodput.profiler.datasets import load_azure_trace

# Relative arrival rate at each hour 00:00..23:00 (piecewise linear between them, cyclic).
DAY = (0.45, 0.35, 0.28, 0.23, 0.20, 0.23, 0.32, 0.47, 0.65, 0.81, 0.91, 0.96,
       0.94, 0.97, 1.00, 0.98, 0.93, 0.85, 0.78, 0.74, 0.71, 0.67, 0.59, 0.52)  # fmt: skip
BUSINESS_DAY = (0, 0, 0, 0, 0, 0, 0, 0.30, 0.70, 0.90, 1.00, 0.95,
                0.80, 0.95, 1.00, 0.95, 0.85, 0.65, 0.40, 0.20, 0.08, 0, 0, 0)  # fmt: skip


@dataclass(frozen=True)
class Workload:
    """Requests of one simulated day, in arrival order."""

    name: str
    arrival_s: NDArray[np.float64]
    prompt_tokens: NDArray[np.int64]
    output_tokens: NDArray[np.int64]
    day_s: float
    envelope: tuple[float, ...]

    def __len__(self) -> int:
        return len(self.arrival_s)

    def rate(self, bin_s: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """(bin starts, requests/s in each bin)."""
        bins = int(np.ceil(self.day_s / bin_s))
        counts = np.bincount((self.arrival_s // bin_s).astype(np.int64), minlength=bins)[:bins]
        return np.arange(bins) * bin_s, counts / bin_s


def envelope_at(envelope: tuple[float, ...], hour: NDArray[np.float64]) -> NDArray[np.float64]:
    """The envelope at fractional hours of the day (linear between the hourly points)."""
    points = np.append(np.asarray(envelope, dtype=np.float64), envelope[0])
    result: NDArray[np.float64] = np.interp(hour % 24.0, np.arange(25.0), points)
    return result


def compressed_day(
    name: str,
    envelope: tuple[float, ...],
    *,
    day_s: float,
    mean_rps: float,
    seed: int = 0,
) -> Workload:
    """The Azure conversation trace on ``envelope`` over ``day_s`` seconds, at a mean of
    ``mean_rps`` requests/s over the day.

    The trace keeps its own time scale (its minutes stay minutes: a swing of its rate that lasts
    twenty minutes is not made shorter). The rate is raised by superposing copies of the trace
    shifted evenly through its hour, as a larger service aggregates more users, and shaped by
    thinning: a request at ``t`` is kept with probability proportional to the envelope there.
    """
    trace = load_azure_trace("conv")
    # Whole minutes only: the trace's last minute is cut short.
    period = float(np.floor(trace.arrival_s[-1] / 60.0) * 60.0)
    keep = trace.arrival_s < period
    t_trace = trace.arrival_s[keep]
    prompts, outputs = trace.context_tokens[keep], np.maximum(trace.generated_tokens[keep], 1)
    trace_rps = len(t_trace) / period

    hours = np.linspace(0.0, 24.0, 24 * 60 + 1)
    shape = envelope_at(envelope, hours)
    exact = mean_rps * float(shape.max()) / (trace_rps * float(shape.mean()))
    copies = math.ceil(exact)
    loops = math.ceil(day_s / period) + 1
    times, index = [], []
    for j in range(copies):
        offset = j * period / copies
        for m in range(loops):
            t = t_trace + m * period - offset
            inside = (t >= 0) & (t < day_s)
            times.append(t[inside])
            index.append(np.flatnonzero(inside))
    t_all, i_all = np.concatenate(times), np.concatenate(index)
    keep_p = envelope_at(envelope, t_all / day_s * 24.0) / float(shape.max()) * (exact / copies)
    kept = np.random.default_rng(seed).random(len(t_all)) < keep_p
    order = np.argsort(t_all[kept], kind="stable")
    rows = i_all[kept][order]
    return Workload(
        name=name,
        arrival_s=t_all[kept][order],
        prompt_tokens=prompts[rows].astype(np.int64),
        output_tokens=outputs[rows].astype(np.int64),
        day_s=day_s,
        envelope=envelope,
    )
