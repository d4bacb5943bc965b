"""Each request's latency objective: the deployment's SLO scaled by the request's priority class,
optionally overridden per request by headers; and the verdict on whether a finished request met it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from goodput.api.gateway_config import GatewayConfig
from goodput.serving.openai_errors import invalid_request

HEADER_TTFT = "x-goodput-slo-ttft-ms"
HEADER_TPOT = "x-goodput-slo-tpot-ms"
HEADER_E2E = "x-goodput-slo-e2e-ms"
HEADER_PRIORITY = "x-goodput-priority"


@dataclass(frozen=True, slots=True)
class RequestSLO:
    """Objectives in seconds; ``rank`` orders priority classes (lower is served first)."""

    ttft_s: float
    tpot_s: float
    e2e_s: float | None
    priority: str
    rank: int

    def e2e_budget_s(self, output_tokens: float) -> float:
        """The end-to-end time this request may take for ``output_tokens`` tokens."""
        implied = self.ttft_s + self.tpot_s * max(output_tokens - 1.0, 0.0)
        return implied if self.e2e_s is None else min(implied, self.e2e_s)


class SLOResolver:
    """Turns the config and a request's headers into its ``RequestSLO``."""

    def __init__(self, config: GatewayConfig) -> None:
        self._slo = config.slo
        self._classes = {pc.name: pc for pc in config.priority_classes}
        self._default = config.default_priority

    def resolve(self, headers: Mapping[str, str]) -> RequestSLO:
        priority = headers.get(HEADER_PRIORITY) or self._default
        cls = self._classes.get(priority)
        if cls is None:
            raise invalid_request(
                f"Unknown priority class {priority!r} in header {HEADER_PRIORITY}; "
                f"known: {sorted(self._classes)}.",
                param=HEADER_PRIORITY,
            )
        scale = cls.slo_scale
        e2e_default = float("inf") if self._slo.e2e_ms is None else self._slo.e2e_ms * scale
        e2e_ms = _header_ms(headers, HEADER_E2E, e2e_default)
        return RequestSLO(
            ttft_s=_header_ms(headers, HEADER_TTFT, self._slo.ttft_ms * scale) / 1000.0,
            tpot_s=_header_ms(headers, HEADER_TPOT, self._slo.tpot_ms * scale) / 1000.0,
            e2e_s=None if e2e_ms == float("inf") else e2e_ms / 1000.0,
            priority=priority,
            rank=cls.rank,
        )


def _header_ms(headers: Mapping[str, str], name: str, default: float) -> float:
    raw = headers.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise invalid_request(
            f"Header {name} must be a positive number of milliseconds.", param=name
        )
    return value


def met_slo(
    slo: RequestSLO,
    *,
    streamed: bool,
    ttft_s: float | None,
    tpot_s: float | None,
    e2e_s: float,
    output_tokens: int,
) -> bool:
    """Whether a finished request met its objectives.

    A streamed request is judged on what its client saw: first token, mean time per later token,
    and the end-to-end bound if one is set. A non-streamed client sees only the whole answer, so
    it is judged on end-to-end time against the budget its TTFT and TPOT objectives imply.
    """
    if streamed and ttft_s is not None:
        if ttft_s > slo.ttft_s:
            return False
        if tpot_s is not None and output_tokens > 1 and tpot_s > slo.tpot_s:
            return False
        return slo.e2e_s is None or e2e_s <= slo.e2e_s
    return e2e_s <= slo.e2e_budget_s(output_tokens)
