"""The gateway's configuration: the contract between the operator (which writes it into a
ConfigMap) and the in-pod gateway (which reads it). Kept here so neither imports the other."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from goodput.api.prefix_blocks import DEFAULT_BLOCK_CHARS

PolicyName = Literal["fcfs", "slo", "oracle"]
OverloadAction = Literal["reject", "best-effort"]


class SLOTargets(BaseModel):
    """Latency objectives a request is judged against; all in milliseconds."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    ttft_ms: float = Field(gt=0, alias="ttftMs", description="Time to first token.")
    tpot_ms: float = Field(gt=0, alias="tpotMs", description="Time per output token.")
    e2e_ms: float | None = Field(default=None, gt=0, alias="e2eMs", description="End to end.")
    percentile: float = Field(default=99.0, gt=0, lt=100, description="Percentile judged.")
    attainment: float = Field(
        default=0.99, gt=0, le=1, description="Target fraction of requests that meet the SLO."
    )


class PriorityClass(BaseModel):
    """A named class of traffic: lower ``rank`` is served first; ``sloScale`` stretches its SLO."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, max_length=63)
    rank: int = Field(default=0, ge=0, le=1000)
    slo_scale: float = Field(default=1.0, gt=0, alias="sloScale")


class RefitConfig(BaseModel):
    """How often the gateway refits the learned predictor's prompt model from its request log.

    Each answer already recalibrates the model's verbosity; a refit also relearns which prompts
    ask for long answers, on the deployment's own traffic, and swaps the model in without a
    restart."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    interval_s: float = Field(
        default=300.0, gt=0, alias="intervalS", description="Seconds between looks at the log."
    )
    min_new_records: int = Field(
        default=500,
        gt=0,
        alias="minNewRecords",
        description="Usable new requests (not cut off by max_tokens) a refit waits for.",
    )
    window: int = Field(
        default=20_000, gt=0, description="Most recent usable requests a refit learns from."
    )
    min_prompts: int = Field(
        default=200,
        gt=0,
        alias="minPrompts",
        description="Distinct prompts in the window below which no refit is attempted.",
    )


class PredictorConfig(BaseModel):
    """Which output-length predictor the gateway uses, and where its model file is."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    kind: Literal["online", "learned"] = "online"
    model_path: str | None = Field(
        default=None, alias="modelPath", description="Default: the model shipped with Goodput."
    )
    refit: RefitConfig | None = Field(
        default=None,
        description="Refit the learned model from the request log (needs `requestLog`).",
    )


class RequestLogConfig(BaseModel):
    """Where the gateway appends one JSON line per finished request (what the refit reads)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    path: str
    max_bytes: int = Field(
        default=64 * 1024 * 1024,
        gt=0,
        alias="maxBytes",
        description="Rotate to <path>.1 past this size.",
    )
    keep_prompts: bool = Field(
        default=False,
        alias="keepPrompts",
        description="Write each prompt (its first `maxPromptChars` characters) into the log; "
        "by default prompts are left out. The predictor's refit learns from them, so it needs "
        "this.",
    )
    max_prompt_chars: int = Field(
        default=16_384,
        gt=0,
        alias="maxPromptChars",
        description="A kept prompt is cut to this many characters: one line stays bounded.",
    )


class AuthConfig(BaseModel):
    """Who may send requests: API keys of tenants from a directory (a mounted Secret; the file
    format is in `goodput.serving.auth`), and whether callers without a key are served."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    keys_dir: str | None = Field(
        default=None,
        alias="keysDir",
        description="Directory of tenant files with hashed API keys, reloaded when it changes.",
    )
    anonymous: bool = Field(
        default=True,
        description="Serve requests without a key as tenant `anonymous`: the default priority "
        "class only, objectives only loosened, never tightened. The Helm chart turns it off.",
    )

    @model_validator(mode="after")
    def _someone_may_enter(self) -> AuthConfig:
        if self.keys_dir is None and not self.anonymous:
            raise ValueError("auth: with anonymous access off, keysDir must name the API keys")
        return self


class AdapterObjectives(BaseModel):
    """An adapter's own objectives, ms; an omitted one is the deployment's."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    ttft_ms: float | None = Field(default=None, gt=0, alias="ttftMs")
    tpot_ms: float | None = Field(default=None, gt=0, alias="tpotMs")


class AdapterEntry(BaseModel):
    """One adapter the gateway may load into its engine, and the terms its requests get."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(min_length=1, max_length=63, description="The model name clients send.")
    path: str = Field(min_length=1, description="Where the engine loads it from (in the pod).")
    slo: AdapterObjectives = Field(default_factory=AdapterObjectives)
    priority: str | None = Field(
        default=None, description="Class of its requests that name none (default: the gateway's)."
    )
    requests_per_second: float | None = Field(default=None, gt=0, alias="requestsPerSecond")
    burst: int | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0, alias="tokensPerMinute")


class AdapterCatalog(BaseModel):
    """The adapters of a deployment: a file of its own (``LoRAServing.catalogPath``, a key of the
    gateway's ConfigMap outside the config hash), which the gateway re-reads while it runs, so
    that adapters come and go without restarting the pod."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    adapters: list[AdapterEntry] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> AdapterCatalog:
        names = [a.name for a in self.adapters]
        if len(set(names)) != len(names):
            raise ValueError("adapter names must be unique")
        return self


class LoRAServing(BaseModel):
    """The engine serves LoRA adapters, loaded at runtime by the gateway."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    catalog_path: str = Field(
        alias="catalogPath", description="The adapter catalog file (``AdapterCatalog``)."
    )
    max_loaded: int = Field(
        gt=0,
        alias="maxLoaded",
        description="Adapters the engine keeps loaded (its --max-cpu-loras); loading one more "
        "unloads the least recently used that no request is using.",
    )
    reload_interval_s: float = Field(
        default=2.0, gt=0, alias="reloadIntervalS", description="How often the catalog is re-read."
    )


class GatewayConfig(BaseModel):
    """Everything the gateway needs to know about the deployment it fronts."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    deployment: str = Field(description="LLMDeployment name; the `deployment` metrics label.")
    namespace: str = "default"
    served_model_name: str = Field(alias="servedModelName")
    lora: LoRAServing | None = Field(
        default=None, description="Set: requests may name adapters of the catalog."
    )
    engine_url: str = Field(default="http://127.0.0.1:8000", alias="engineUrl")
    max_model_len: int | None = Field(default=None, gt=0, alias="maxModelLen")
    slo: SLOTargets
    policy: PolicyName = "slo"
    overload: OverloadAction = "reject"
    max_queue_length: int = Field(default=1024, gt=0, alias="maxQueueLength")
    max_queue_delay_ms: float | None = Field(default=None, gt=0, alias="maxQueueDelayMs")
    max_concurrency: int | None = Field(
        default=None,
        gt=0,
        alias="maxConcurrency",
        description="Most requests the slo/oracle policies send the engine at once (e.g. the "
        "profiler's capacity); the gateway also learns a limit and uses the smaller.",
    )
    kv_cache_tokens: int | None = Field(
        default=None,
        gt=0,
        alias="kvCacheTokens",
        description="The engine's KV-cache capacity in tokens, for an engine whose /metrics does "
        "not report it (vLLM run with --disable-log-stats); the engine's own figure wins.",
    )
    prefix_block_chars: int | None = Field(
        default=DEFAULT_BLOCK_CHARS,
        ge=8,
        le=65536,
        alias="prefixBlockChars",
        description="Cut prompts into blocks of this many characters, as the cluster router "
        "does (its `prefix.blockChars`), to report which the engine holds; null: report none.",
    )
    priority_classes: list[PriorityClass] = Field(
        default_factory=lambda: [PriorityClass(name="default")], alias="priorityClasses"
    )
    default_priority: str = Field(default="default", alias="defaultPriority")
    predictor: PredictorConfig = Field(default_factory=PredictorConfig)
    request_log: RequestLogConfig | None = Field(default=None, alias="requestLog")
    auth: AuthConfig = Field(default_factory=AuthConfig)
    engine_api_key_file: str | None = Field(
        default=None,
        alias="engineApiKeyFile",
        description="A file (a mounted Secret) holding the key the engine was started with "
        "(vLLM --api-key); the gateway sends it on every request to the engine.",
    )
    initial_concurrency: int = Field(
        default=4,
        gt=0,
        alias="initialConcurrency",
        description="The batch limit a gateway starts from before it has measured its engine "
        "(slo/oracle policies); it explores upward from there.",
    )

    @model_validator(mode="after")
    def _refit_reads_prompts(self) -> GatewayConfig:
        refit = self.predictor.refit is not None
        if refit and self.request_log is not None and not self.request_log.keep_prompts:
            raise ValueError(
                "predictor.refit learns from the logged prompts: set requestLog.keepPrompts"
            )
        return self

    @model_validator(mode="after")
    def _default_priority_exists(self) -> GatewayConfig:
        names = {pc.name for pc in self.priority_classes}
        if self.default_priority not in names:
            raise ValueError(
                f"defaultPriority {self.default_priority!r} is not one of the priority classes "
                f"{sorted(names)}"
            )
        return self
