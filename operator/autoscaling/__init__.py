"""SLO-driven autoscaling: how many replicas each LLMDeployment needs, decided from what its pods
report and what the profiler predicts one replica serves (docs/autoscaling.md).

``signals`` turns the gateways' load reports into a per-tick ``LoadSample``; ``rule`` decides
(``Autoscaler.decide``: data in, ``ScaleDecision`` out); ``forecast`` and ``throughput`` are its
two pluggable judgements (the rate one cold start ahead; a replica's requests/s within the SLO).
"""

from goodput.operator.autoscaling.forecast import ArrivalForecast, TrendForecast
from goodput.operator.autoscaling.rule import (
    Autoscaler,
    AutoscalerState,
    AutoscalingPolicy,
    Bounds,
    ScaleDecision,
    Unplaceable,
)
from goodput.operator.autoscaling.signals import LoadSample, LoadWindow
from goodput.operator.autoscaling.throughput import ProfilerThroughput, ReplicaThroughput

__all__ = [
    "ArrivalForecast",
    "Autoscaler",
    "AutoscalerState",
    "AutoscalingPolicy",
    "Bounds",
    "LoadSample",
    "LoadWindow",
    "ProfilerThroughput",
    "ReplicaThroughput",
    "ScaleDecision",
    "TrendForecast",
    "Unplaceable",
]
