"""The gateway's answer to ``GET /v1/goodput/load``: its queue, in-flight requests, batch limit
and predicted wait, and the engine's KV and prefix-cache numbers from the last poll — what the
cluster router needs to pick a replica (``goodput.api.load_report``)."""

from __future__ import annotations

import math

from goodput.api.load_report import AdapterLoad, LoadReport
from goodput.serving.gateway import Gateway


def load_report(gateway: Gateway, sketch_since: int | None = None) -> LoadReport:
    """Built from state the gateway keeps anyway: no engine round trip; the prefix sketch is
    left out (its version only) when the caller holds it already."""
    slo = gateway.config.slo
    dispatcher = gateway.dispatcher
    tpot_s, ttft_s = slo.tpot_ms / 1000, slo.ttft_ms / 1000
    limit = gateway.policy.concurrency_limit(tpot_s, ttft_s, gateway.service, dispatcher.clock())
    wait = dispatcher.wait_behind_queue_s(tpot_s, ttft_s)
    concurrency = max(1, dispatcher.inflight + 1)
    if limit is not None:
        concurrency = min(concurrency, max(limit, 1))
    snapshot = gateway.budget.snapshot
    prefill = gateway.service.prefill.fit
    held = gateway.held_blocks
    sketch = None
    if held is not None:
        sketch = held.report(unchanged=held.version == sketch_since)
    return LoadReport(
        ready=gateway.ready,
        draining=gateway.draining,
        queue=dispatcher.queue_depth,
        inflight=dispatcher.inflight,
        limit=limit,
        predicted_wait_s=None if wait is None or not math.isfinite(wait) else max(0.0, wait),
        first_token_s=gateway.service.predict_first_token_s(concurrency),
        prefill_s_per_token=None if prefill is None else prefill.slope_s,
        prefix_sketch=sketch,
        kv_usage=snapshot.kv_usage,
        prefix_cache_queries=snapshot.prefix_cache_queries,
        prefix_cache_hits=snapshot.prefix_cache_hits,
        ttft_objective_s=ttft_s,
        requests=gateway.totals.requests,
        met_slo=gateway.totals.met_slo,
        finished=gateway.totals.finished,
        prompt_tokens=gateway.totals.prompt_tokens,
        output_tokens=gateway.totals.output_tokens,
        adapters=None
        if gateway.adapters is None
        else AdapterLoad(
            catalog=gateway.adapters.names,
            loaded=gateway.adapters.loaded,
            capacity=gateway.adapters.slots.capacity,
            cold_loads=dict(gateway.adapters.cold_loads),
        ),
    )
