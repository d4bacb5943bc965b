"""The cluster router's configuration: the contract between the operator (which writes it into a
ConfigMap from ``spec.routing``) and ``goodput route`` (which reads it). Kept here so neither
imports the other.

The routing decision is composed from named stages, as data: filters drop replicas that must not
get the request, scorers rate the rest in [0, 1], and the picker takes the best weighted sum.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from goodput.api.gateway_config import AuthConfig

FilterName = Literal["ready", "model-modality", "model-cascade", "slo-headroom"]
ScorerName = Literal[
    "prefix-cache", "session-affinity", "slo-headroom", "least-load", "random", "adapter-affinity"
]
PickerName = Literal["max-score", "round-robin"]
DEFAULT_FILTERS: tuple[FilterName, ...] = ("ready", "slo-headroom")


class ScorerConfig(BaseModel):
    """One scorer and its weight in the picker's sum."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: ScorerName
    weight: float = Field(default=1.0, gt=0, le=100)


class PrefixConfig(BaseModel):
    """How prompts are cut into blocks for prefix affinity.

    The router does not tokenize: a block is ``blockChars`` characters of the prompt text (chat
    messages rendered as ``role: content`` lines), about ``blockChars / 4`` tokens of English.
    Identical text prefixes tokenize to identical token prefixes, so a match is never a false
    positive at block granularity; the matched length is off by at most one engine block.
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    block_chars: int = Field(default=64, ge=8, le=65536, alias="blockChars")
    affinity_blocks: int = Field(
        default=4,
        ge=1,
        le=1024,
        alias="affinityBlocks",
        description="Blocks hashed into a prompt's home replica (rendezvous hashing): prompts "
        "sharing this many leading blocks go to the same replica from every router.",
    )
    index_blocks: int = Field(
        default=50_000,
        gt=0,
        alias="indexBlocks",
        description="Block hashes remembered per replica (least recently used first out).",
    )


class FlowConfig(BaseModel):
    """The router's own queue, used only while every replica reports itself saturated."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    max_queue: int = Field(default=256, ge=0, alias="maxQueue")
    max_wait_s: float = Field(default=30.0, gt=0, alias="maxWaitS")
    priority_bands: dict[str, int] = Field(
        default_factory=lambda: {"interactive": 0, "default": 1, "batch": 2},
        alias="priorityBands",
        description="Priority class (x-goodput-priority) to band; lower bands leave first.",
    )


class HoldConfig(BaseModel):
    """Requests that arrive while no replica is ready (a deployment scaled to zero, or one whose
    replicas all restart) wait here, in arrival order, for the first ready replica; the operator
    reads how many wait (``held`` of ``GET /v1/goodput/endpoints``) and scales up from zero."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    max_queue: int = Field(
        default=0,
        ge=0,
        alias="maxQueue",
        description="Most requests held; 0 (the default of `goodput route`): none, a request "
        "with no replica ready gets 503 at once and the router reports not ready. The operator "
        "turns it on for the routers it deploys.",
    )
    max_wait_s: float = Field(
        default=300.0,
        gt=0,
        alias="maxWaitS",
        description="Longest a request is held before it gets 503 + Retry-After: at least a "
        "replica's cold start.",
    )


class ServiceDiscovery(BaseModel):
    """Replicas from the EndpointSlices of a Service (ready ones receive, terminating ones
    drain)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    namespace: str = Field(min_length=1, max_length=63)
    service: str = Field(min_length=1, max_length=63)
    port_name: str = Field(default="http", alias="portName")
    load_port_name: str = Field(
        default="admin",
        alias="loadPortName",
        description="The port whose load report needs no key (the gateway's admin port), where "
        "the Service has one; else the load report is read on `portName`.",
    )


class UpstreamTLS(BaseModel):
    """The replicas' gateways serve HTTPS: whom the router trusts to be one."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    ca_file: str | None = Field(
        default=None,
        alias="caFile",
        description="PEM bundle the gateways' certificates must chain to (a TLS Secret's "
        "`ca.crt`). Unset, or no such file when the router starts (a kubernetes.io/tls Secret "
        "may leave `ca.crt` out): the system's trust store.",
    )
    server_name: str | None = Field(
        default=None,
        alias="serverName",
        min_length=1,
        max_length=253,
        description="The name the gateways' certificates must carry, also sent as SNI. "
        "Replicas are dialled by pod IP, which no certificate names: the operator sets the "
        "Service's DNS name (NAME.NAMESPACE.svc). Unset: each URL's host.",
    )


class CascadeModel(BaseModel):
    """One model of a cascade: a group of replicas the router may pick for a request."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(
        min_length=1,
        max_length=63,
        description="The group's name (the operator: the LLMDeployment's name); metrics label.",
    )
    model: str | None = Field(
        default=None,
        min_length=1,
        description="The model name its replicas serve, written into each request sent there "
        "(the client names the cascade's logical model). Unset: the request's own.",
    )
    quality_key: str | None = Field(
        default=None,
        alias="qualityKey",
        description="The quality predictor's name for this model (e.g. Mistral-7B-Instruct-v0.2); "
        "unset: `model`. An unknown name gets the mean of the known small models.",
    )
    multimodal: bool = Field(
        default=False, description="Takes requests with image content; others never get them."
    )
    tpot_s: float | None = Field(
        default=None,
        gt=0,
        alias="tpotS",
        description="Seconds per output token under its SLO: with it, a spill weighs the "
        "request's predicted output length (predicted TTFT + tokens x tpotS).",
    )
    endpoints: list[str] = Field(default_factory=list, description="Static replica URLs.")
    discovery: ServiceDiscovery | None = None


class CascadeConfig(BaseModel):
    """Several models behind one model name; the ``model-cascade`` stage picks one per request
    (docs/cascade.md). Models are listed cheapest first: the first is the default, the others
    are escalations."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    models: list[CascadeModel] = Field(min_length=2, max_length=8)
    model_name: str | None = Field(
        default=None,
        min_length=1,
        alias="modelName",
        description="The model name clients send, which `GET /v1/models` lists; unset: the "
        "first model's replicas answer it.",
    )
    max_large_share: float | None = Field(
        default=None,
        ge=0,
        le=1,
        alias="maxLargeShare",
        description="At most this share of requests (over the last `windowRequests`) goes past "
        "the first model: those where the predicted quality gain is largest.",
    )
    min_win_rate: float | None = Field(
        default=None,
        ge=0,
        le=1,
        alias="minWinRate",
        description="A model serves a request only when its predicted win-rate against the "
        "reference is at least this; the first model that does, else the best predicted.",
    )
    window_requests: int = Field(default=1000, ge=10, le=1_000_000, alias="windowRequests")
    quality_model: str | None = Field(
        default=None,
        alias="qualityModel",
        description="A quality model file (skops); unset: the one shipped with Goodput.",
    )
    sessions: int = Field(
        default=100_000,
        ge=0,
        description="Sessions whose model is remembered (least recently used first out).",
    )

    @model_validator(mode="after")
    def _one_target(self) -> CascadeConfig:
        if (self.max_large_share is None) == (self.min_win_rate is None):
            raise ValueError("a cascade sets one target: `maxLargeShare` or `minWinRate`")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError("cascade model names must be unique")
        if not any(m.endpoints or m.discovery for m in self.models):
            raise ValueError("cascade models need `endpoints` or `discovery`")
        return self


class RouterConfig(BaseModel):
    """Everything ``goodput route`` needs."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(default="router", description="The `router` metrics label.")
    endpoints: list[str] = Field(
        default_factory=list, description="Static replica URLs (gateways), when not discovered."
    )
    discovery: ServiceDiscovery | None = None
    upstream_tls: UpstreamTLS | None = Field(
        default=None,
        alias="upstreamTls",
        description="Set: discovered replicas are dialled over HTTPS, and every HTTPS replica "
        "is verified as it says; their load reports stay on the plain-HTTP admin port. Unset: "
        "discovered replicas over HTTP (static `endpoints` keep their own scheme).",
    )
    filters: list[FilterName] = Field(default_factory=lambda: list(DEFAULT_FILTERS))
    scorers: list[ScorerConfig] = Field(
        default_factory=lambda: [
            ScorerConfig(type="prefix-cache", weight=3.0),
            ScorerConfig(type="session-affinity", weight=3.0),
            ScorerConfig(type="slo-headroom", weight=1.0),
            ScorerConfig(type="least-load", weight=1.0),
        ]
    )
    picker: PickerName = "max-score"
    prefix: PrefixConfig = Field(default_factory=PrefixConfig)
    session_header: str = Field(default="x-session-id", alias="sessionHeader")
    session_from_user: bool = Field(
        default=True,
        alias="sessionFromUser",
        description="Use the OpenAI `user` field as the session key when no header is sent.",
    )
    bounded_load: float = Field(
        default=1.25,
        ge=1.0,
        alias="boundedLoad",
        description="Affinity (prefix, session) yields once a replica carries more than this "
        "factor times the mean load plus one request.",
    )
    poll_interval_s: float = Field(default=0.25, gt=0, le=60, alias="pollIntervalS")
    retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Other replicas tried after a 429/503 or a failure "
        "before any byte reached the client.",
    )
    flow: FlowConfig = Field(default_factory=FlowConfig)
    hold: HoldConfig = Field(default_factory=HoldConfig)
    auth: AuthConfig = Field(
        default_factory=AuthConfig,
        description="The same tenant keys as the gateways: a bad key is refused before it "
        "queues, and tenants are who flow control shares capacity between.",
    )
    cascade: CascadeConfig | None = Field(
        default=None,
        description="Several models behind one name; their replicas come from each model's "
        "`endpoints`/`discovery` (docs/cascade.md).",
    )

    @model_validator(mode="after")
    def _has_a_source(self) -> RouterConfig:
        if not self.endpoints and self.discovery is None and self.cascade is None:
            raise ValueError("give `endpoints` or `discovery`")
        if self.cascade is not None:
            # The cascade's stages go right after readiness, before the SLO stages judge
            # replicas of the chosen model only.
            at = self.filters.index("ready") + 1 if "ready" in self.filters else 0
            for stage in ("model-cascade", "model-modality"):
                if stage not in self.filters:
                    self.filters.insert(at, stage)
        types = [s.type for s in self.scorers]
        if len(set(types)) != len(types):
            raise ValueError("each scorer type may appear once")
        return self
