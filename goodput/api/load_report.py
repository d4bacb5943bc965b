"""What a pod's gateway tells the cluster router about its load: the contract between
``goodput.serving`` (which answers ``GET /v1/goodput/load``) and ``goodput.router`` (which polls
it), kept here so neither imports the other.

Cheap to produce (no engine round trip: the engine's numbers are those of the gateway's last
poll) so that routers may ask every few hundred milliseconds.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from goodput.api.prefix_blocks import SketchReport

LOAD_PATH = "/v1/goodput/load"
SKETCH_SINCE = "sketchSince"
"""Query parameter: the prefix sketch version the caller holds; an unchanged sketch is then
sent without its bits."""


class AdapterLoad(BaseModel):
    """The adapters a gateway's engine has loaded (``goodput.serving.adapters``)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    catalog: list[str] = Field(description="Adapters it may load: requests may name these.")
    loaded: list[str] = Field(description="Loaded now, most recently used first.")
    capacity: int = Field(ge=0, description="Most it keeps loaded; one more evicts one.")
    cold_loads: dict[str, int] = Field(
        default_factory=dict, alias="coldLoads", description="Loads so far, per adapter."
    )


class LoadReport(BaseModel):
    """One gateway's state at ``at`` (its monotonic clock is meaningless to others; the router
    stamps reports with its own receive time)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    ready: bool = Field(description="Engine up and not draining: new requests are welcome.")
    draining: bool = Field(default=False, description="Shutting down; finishes what it has.")
    queue: int = Field(ge=0, description="Requests waiting in the gateway's queue.")
    inflight: int = Field(ge=0, description="Requests dispatched to the engine, not finished.")
    limit: int | None = Field(
        default=None, ge=0, description="The batch limit for the deployment's SLO (None: none)."
    )
    predicted_wait_s: float | None = Field(
        default=None,
        ge=0,
        alias="predictedWaitS",
        description="Predicted queueing delay of a request arriving now behind every waiting one.",
    )
    first_token_s: float | None = Field(
        default=None,
        ge=0,
        alias="firstTokenS",
        description="Predicted dispatch-to-first-token time at the current batch size.",
    )
    prefill_s_per_token: float | None = Field(
        default=None,
        ge=0,
        alias="prefillSPerToken",
        description="Predicted first-token time added per prompt token to prefill (the slope "
        "of the gateway's prefill fit; cached tokens cost the engine almost nothing, so the "
        "router applies it to the tokens it believes are not cached there).",
    )
    prefix_sketch: SketchReport | None = Field(
        default=None,
        alias="prefixSketch",
        description="The prompt blocks the engine most likely holds (every router's traffic). "
        "Empty `bits`: unchanged since the version the caller named.",
    )
    kv_usage: float | None = Field(
        default=None, ge=0, alias="kvUsage", description="Engine KV-cache use, 0..1."
    )
    prefix_cache_queries: float | None = Field(
        default=None,
        ge=0,
        alias="prefixCacheQueries",
        description="Engine prompt tokens looked up in its prefix cache, since it started.",
    )
    prefix_cache_hits: float | None = Field(
        default=None,
        ge=0,
        alias="prefixCacheHits",
        description="Of those, tokens found cached (vLLM's own counters).",
    )
    ttft_objective_s: float | None = Field(
        default=None, gt=0, alias="ttftObjectiveS", description="The deployment's TTFT objective."
    )
    # Counters since the gateway started, for rates over any window (the autoscaler's inputs:
    # arrivals = requests + queue + inflight; attainment = metSlo / requests). 0 from gateways
    # that predate them.
    requests: int = Field(
        default=0, ge=0, description="Requests judged: finished, failed or rejected."
    )
    met_slo: int = Field(
        default=0, ge=0, alias="metSlo", description="Of those, requests that met their SLO."
    )
    prompt_tokens: int = Field(
        default=0, ge=0, alias="promptTokens", description="Prompt tokens of finished requests."
    )
    output_tokens: int = Field(
        default=0, ge=0, alias="outputTokens", description="Output tokens of finished requests."
    )
    finished: int = Field(default=0, ge=0, description="Requests that ran to completion.")
    adapters: AdapterLoad | None = Field(
        default=None, description="Adapters loaded in the engine; None: it serves no LoRA."
    )

    @property
    def saturated(self) -> bool:
        """Holding requests already, or every slot of a known limit taken: another request
        would wait here."""
        if self.queue > 0:
            return True
        return self.limit is not None and self.inflight >= self.limit
