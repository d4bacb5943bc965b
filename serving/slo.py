"""Each request's latency objective: the deployment's SLO scaled by the request's priority class,
optionally overridden per request by headers within what the caller's key allows; and the verdict
on whether a finished request met it.

The header contract (docs/serving.md, "Headers"): ``x-goodput-priority`` must name a configured
class the tenant may use (400 unknown, 403 not allowed). ``x-goodput-slo-{ttft,tpot,e2e}-ms`` are
positive numbers of milliseconds (400 otherwise), clamped to ``[floor, MAX_OBJECTIVE_MS]`` where
the floor is the tenant's ``slo.min*Ms`` or, if it has none, the class's own objective: a caller
may always loosen its objective, and tighten it only as far as its key allows.

A header objective shapes only its own request — its admission, its place in the queue, the
verdict on it. The batch limit, which every running request shares, is set by the class
objectives (``batch_tpot_s``), never by a header: one client asking for 45 ms per token must not
shrink the batch for everyone else (docs/serving.md, "Who steers the scheduler").
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from goodput.api.gateway_config import AdapterEntry, GatewayConfig, PriorityClass
from goodput.serving.auth import AccessDenied, SLOFloor, Tenant
from goodput.serving.openai_errors import invalid_request

HEADER_TTFT = "x-goodput-slo-ttft-ms"
HEADER_TPOT = "x-goodput-slo-tpot-ms"
HEADER_E2E = "x-goodput-slo-e2e-ms"
HEADER_PRIORITY = "x-goodput-priority"
#: No objective is looser than an hour: past that a number only overflows the arithmetic.
MAX_OBJECTIVE_MS = 3_600_000.0
#: Longer header values are refused before they are parsed.
MAX_HEADER_VALUE_CHARS = 64


@dataclass(frozen=True, slots=True)
class RequestSLO:
    """Objectives in seconds; ``rank`` orders priority classes (lower is served first)."""

    ttft_s: float
    tpot_s: float
    e2e_s: float | None
    priority: str
    rank: int
    batch_tpot_s: float | None = None
    """The objective this request lets the shared batch limit use: its class's, never a header
    override (``None``: ``tpot_s``)."""

    @property
    def batch_limit_tpot_s(self) -> float:
        return self.tpot_s if self.batch_tpot_s is None else self.batch_tpot_s

    def e2e_budget_s(self, output_tokens: float) -> float:
        """The end-to-end time this request may take for ``output_tokens`` tokens."""
        implied = self.ttft_s + self.tpot_s * max(output_tokens - 1.0, 0.0)
        return implied if self.e2e_s is None else min(implied, self.e2e_s)


class SLOResolver:
    """Turns the config, a request's headers and its tenant into its ``RequestSLO``."""

    def __init__(self, config: GatewayConfig) -> None:
        self._slo = config.slo
        self._classes = {pc.name: pc for pc in config.priority_classes}
        self._default = config.default_priority

    def resolve(
        self,
        headers: Mapping[str, str],
        tenant: Tenant | None = None,
        adapter: AdapterEntry | None = None,
    ) -> RequestSLO:
        """Raise ``OpenAIError`` (400) for a malformed header, ``AccessDenied`` (403) for a class
        the tenant may not use. A request for an adapter is judged against the adapter's own
        objectives and, naming no class, is in the adapter's class (where its tenant may use
        it)."""
        requested = _header(headers, HEADER_PRIORITY)
        default = (tenant.default_priority if tenant else None) or self._default
        own = adapter.priority if adapter is not None else None
        if own is not None and (tenant is None or tenant.may_use(own)):
            default = own
        priority = requested or default
        cls = self._classes.get(priority)
        if cls is None:
            raise invalid_request(
                f"Unknown priority class {priority!r} in header {HEADER_PRIORITY}; "
                f"known: {sorted(self._classes)}.",
                param=HEADER_PRIORITY,
            )
        if tenant is not None and not tenant.may_use(priority):
            raise AccessDenied(
                403,
                f"Tenant {tenant.name!r} may not use priority class {priority!r}; "
                f"allowed: {list(tenant.priorities or ())}.",
                "priority_not_allowed",
            )
        floor = tenant.slo_floor if tenant is not None else SLOFloor()
        ttft_ms, tpot_ms, e2e_ms = self._class_objectives_ms(cls, adapter)
        ttft = _clamped(headers, HEADER_TTFT, ttft_ms, floor.min_ttft_ms)
        tpot = _clamped(headers, HEADER_TPOT, tpot_ms, floor.min_tpot_ms)
        e2e = _clamped(
            headers, HEADER_E2E, math.inf if e2e_ms is None else e2e_ms, floor.min_e2e_ms
        )
        return RequestSLO(
            ttft_s=ttft / 1000.0,
            tpot_s=tpot / 1000.0,
            e2e_s=None if e2e == math.inf else e2e / 1000.0,
            priority=priority,
            rank=cls.rank,
            batch_tpot_s=tpot_ms / 1000.0,
        )

    def _class_objectives_ms(
        self, cls: PriorityClass, adapter: AdapterEntry | None = None
    ) -> tuple[float, float, float | None]:
        scale = cls.slo_scale
        e2e = None if self._slo.e2e_ms is None else self._slo.e2e_ms * scale
        own = adapter.slo if adapter is not None else None
        ttft = (own.ttft_ms if own and own.ttft_ms else None) or self._slo.ttft_ms
        tpot = (own.tpot_ms if own and own.tpot_ms else None) or self._slo.tpot_ms
        return ttft * scale, tpot * scale, e2e


def _header(headers: Mapping[str, str], name: str) -> str | None:
    raw = headers.get(name)
    if raw is not None and len(raw) > MAX_HEADER_VALUE_CHARS:
        raise invalid_request(
            f"Header {name} is longer than {MAX_HEADER_VALUE_CHARS} characters.", param=name
        )
    return raw or None


def _clamped(
    headers: Mapping[str, str], name: str, default: float, tenant_floor: float | None
) -> float:
    """The header's objective within ``[floor, MAX_OBJECTIVE_MS]``; ``default`` without one.
    Without a floor of its own, a tenant may not go below the class objective (nor add an
    end-to-end objective to a class without one: its default is infinite)."""
    raw = _header(headers, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0:  # NaN and non-positive
        raise invalid_request(
            f"Header {name} must be a positive number of milliseconds.", param=name
        )
    floor = tenant_floor if tenant_floor is not None else default
    return max(floor, min(value, MAX_OBJECTIVE_MS))


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
