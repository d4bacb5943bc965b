"""The LLMDeployment resource (goodput.dev/v1alpha1) as typed Python.

This module is the single source of the resource's shape: ``goodput.api.crd`` generates the CRD's
OpenAPI schema (defaults, bounds, descriptions and the CEL rules in ``RULES``) from these models,
and the operator parses every object it reads through them. The CEL rules are mirrored by
pydantic validators so that what the API server rejects is also rejected here (the operator never
has to defend against a spec the API server would not store).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

GROUP = "goodput.dev"
VERSION = "v1alpha1"
KIND = "LLMDeployment"
PLURAL = "llmdeployments"
SINGULAR = "llmdeployment"
SHORT_NAMES = ("llmd",)
CATEGORIES = ("goodput",)
API_VERSION = f"{GROUP}/{VERSION}"

Phase = Literal["Pending", "Placing", "Progressing", "Available", "Degraded", "Failed"]
ConditionType = Literal["Placed", "Available", "Degraded", "Profiled"]

# An RFC 1123 label: what Kubernetes accepts as a container port name, a label value, ... and what
# vLLM accepts as a served model name without quoting troubles.
_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"


def _rule(rule: str, message: str, field_path: str | None = None) -> dict[str, str]:
    out = {"rule": rule, "message": message}
    if field_path is not None:
        out["fieldPath"] = field_path
    return out


def _cel(*rules: dict[str, str]) -> dict[str, Any]:
    """``json_schema_extra`` carrying CEL rules that the CRD generator copies verbatim."""
    return {"x-kubernetes-validations": list(rules)}


class _Spec(BaseModel):
    """Base for spec models: camelCase on the wire, unknown fields are an error (the API server
    prunes them, so an unknown field reaching the operator means the CRD and this code drifted)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


# ----------------------------------------------------------------------------------------- spec


class ModelSpec(_Spec):
    """Which model to serve and how to load it."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)

    name: str = Field(
        min_length=1,
        max_length=253,
        description=(
            "Name clients put in the OpenAI `model` field (vLLM's --served-model-name). Also the "
            "Hugging Face id to load when `source` is empty."
        ),
    )
    source: str | None = Field(
        default=None,
        min_length=1,
        max_length=1024,
        description=(
            "Where the weights come from: a Hugging Face id (org/name), `pvc://CLAIM/PATH` for a "
            "PersistentVolumeClaim mounted read-only, or a path or URL vLLM understands. "
            "Defaults to `name`."
        ),
    )
    revision: str | None = Field(
        default=None,
        max_length=256,
        description="Model revision (branch, tag or commit) to load; default: the hub's main.",
    )
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        default="auto",
        description="Data type of the weights and activations; `auto` uses the model's own.",
    )
    quantization: Literal["awq", "gptq", "fp8", "bitsandbytes"] | None = Field(
        default=None,
        description="Weight quantization method, if the checkpoint is quantized (vLLM flag).",
    )
    max_model_len: int | None = Field(
        default=None,
        ge=1,
        le=10_000_000,
        alias="maxModelLen",
        description="Longest context (prompt + output tokens); default: the model's own limit.",
    )
    architecture: str | None = Field(
        default=None,
        max_length=128,
        description=(
            "Key of the profiler's architecture catalog (e.g. `llama-3-8b`), used to estimate "
            "memory and latency offline without downloading the model. Optional: guessed from "
            "`name` when empty."
        ),
    )


_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's accepted --max-lora-rank values


class AdapterSLOSpec(_Spec):
    """An adapter's own latency objectives; an omitted one is the deployment's."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        frozen=True,
        json_schema_extra=_cel(
            _rule(
                "!has(self.ttftMs) || self.ttftMs > 0.0",
                "an adapter's slo.ttftMs must be a positive number of ms",
            ),
            _rule(
                "!has(self.tpotMs) || self.tpotMs > 0.0",
                "an adapter's slo.tpotMs must be a positive number of ms",
            ),
        ),
    )

    ttft_ms: float | None = Field(
        default=None, le=3_600_000, alias="ttftMs", description="Time to first token, ms."
    )
    tpot_ms: float | None = Field(
        default=None, le=60_000, alias="tpotMs", description="Time per output token, ms."
    )

    @model_validator(mode="after")
    def _positive(self) -> AdapterSLOSpec:
        for name, value in (("ttftMs", self.ttft_ms), ("tpotMs", self.tpot_ms)):
            if value is not None and not value > 0:
                raise ValueError(f"an adapter's slo.{name} must be a positive number of ms")
        return self


class AdapterQuotaSpec(_Spec):
    """What one adapter's traffic may take of the shared replicas, whoever sends it."""

    requests_per_second: float | None = Field(
        default=None,
        gt=0,
        le=1_000_000,
        alias="requestsPerSecond",
        description="Sustained request rate per gateway; past it requests get 429.",
    )
    burst: int | None = Field(
        default=None,
        gt=0,
        le=1_000_000,
        description="Requests above the rate a gateway accepts at once (default: the rate).",
    )
    tokens_per_minute: float | None = Field(
        default=None,
        gt=0,
        le=1e12,
        alias="tokensPerMinute",
        description="Prompt and output tokens per minute per gateway; past it requests get 429.",
    )


class AdapterSpec(_Spec):
    """A LoRA adapter served next to the base model under its own model name: a tenant of the
    base. Adding or removing one changes only the gateways' adapter catalog (no pod restarts);
    each gateway loads it into its engine on its first request (docs/adapters.md)."""

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=_DNS_LABEL,
        description="Model name clients use to address this adapter.",
    )
    source: str = Field(
        min_length=1,
        max_length=1024,
        description=(
            "Where the adapter weights are: a Hugging Face id, `pvc://CLAIM/PATH`, or a path "
            "inside the pod. An adapter on a claim the pods do not mount yet adds a volume, "
            "which rolls the pods once."
        ),
    )
    slo: AdapterSLOSpec = Field(
        default_factory=AdapterSLOSpec,
        description="The adapter's own objectives (each omitted one: spec.slo's).",
    )
    priority: str | None = Field(
        default=None,
        min_length=1,
        max_length=63,
        pattern=_DNS_LABEL,
        description="Priority class of the adapter's requests when they name none "
        "(one of scheduling.priorityClasses; default: scheduling.defaultPriority).",
    )
    quota: AdapterQuotaSpec = Field(
        default_factory=AdapterQuotaSpec,
        description="Rate and token limits on the adapter's requests (each omitted: none).",
    )


class LoRASpec(_Spec):
    """How many adapters each replica's engine holds: fixed per pod (vLLM sizes its LoRA
    buffers at start), so that adapters come and go without restarts."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        frozen=True,
        json_schema_extra=_cel(
            _rule(
                "self.maxCpuLoras >= self.maxLoras",
                "lora.maxCpuLoras must be at least lora.maxLoras",
            ),
            _rule(
                f"self.maxRank in {list(_LORA_RANKS)}",
                f"lora.maxRank must be one of {', '.join(map(str, _LORA_RANKS))}",
            ),
        ),
    )

    enabled: bool = Field(
        default=False,
        description="Serve LoRA with no adapter yet, so that the first one added needs no "
        "rollout either (with any adapter given, LoRA is served regardless).",
    )
    max_loras: int = Field(
        default=4,
        ge=1,
        le=64,
        alias="maxLoras",
        description="Adapters one engine step may mix (vLLM --max-loras): GPU memory for each "
        "is reserved at start.",
    )
    max_rank: int = Field(
        default=16,
        alias="maxRank",
        description="Highest adapter rank accepted (vLLM --max-lora-rank); sizes the buffers.",
    )
    max_cpu_loras: int = Field(
        default=16,
        ge=1,
        le=1024,
        alias="maxCpuLoras",
        description="Adapters a replica keeps loaded (vLLM --max-cpu-loras, host memory); "
        "past it the gateway unloads the least recently used.",
    )

    @model_validator(mode="after")
    def _sizes(self) -> LoRASpec:
        if self.max_cpu_loras < self.max_loras:
            raise ValueError("lora.maxCpuLoras must be at least lora.maxLoras")
        if self.max_rank not in _LORA_RANKS:
            raise ValueError(f"lora.maxRank must be one of {', '.join(map(str, _LORA_RANKS))}")
        return self


class SLOSpec(_Spec):
    """The latency objectives a request is judged against."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        frozen=True,
        json_schema_extra=_cel(
            _rule("self.ttftMs > 0.0", "slo.ttftMs must be a positive number of milliseconds"),
            _rule("self.tpotMs > 0.0", "slo.tpotMs must be a positive number of milliseconds"),
            _rule(
                "!has(self.e2eMs) || self.e2eMs > 0.0",
                "slo.e2eMs must be a positive number of milliseconds",
            ),
            _rule(
                "self.percentile > 0.0 && self.percentile < 100.0",
                "slo.percentile must lie strictly between 0 and 100 (e.g. 99 for p99)",
            ),
            _rule(
                "self.attainment > 0.0 && self.attainment <= 1.0",
                "slo.attainment is a fraction of requests: it must be in (0, 1]",
            ),
        ),
    )

    ttft_ms: float = Field(
        alias="ttftMs", description="Time to first token, in milliseconds, at `percentile`."
    )
    tpot_ms: float = Field(
        alias="tpotMs",
        description="Time per output token after the first, in milliseconds, at `percentile`.",
    )
    e2e_ms: float | None = Field(
        default=None,
        alias="e2eMs",
        description="Optional end-to-end request latency objective, in milliseconds.",
    )
    percentile: float = Field(
        default=99.0, description="Latency percentile the objectives apply to, in (0, 100)."
    )
    attainment: float = Field(
        default=0.99,
        description="Target fraction of requests that meet every objective, in (0, 1].",
    )

    @model_validator(mode="after")
    def _bounds(self) -> SLOSpec:
        for label, value in (("ttftMs", self.ttft_ms), ("tpotMs", self.tpot_ms)):
            if value <= 0:
                raise ValueError(f"slo.{label} must be a positive number of milliseconds")
        if self.e2e_ms is not None and self.e2e_ms <= 0:
            raise ValueError("slo.e2eMs must be a positive number of milliseconds")
        if not 0 < self.percentile < 100:
            raise ValueError("slo.percentile must lie strictly between 0 and 100 (e.g. 99 for p99)")
        if not 0 < self.attainment <= 1:
            raise ValueError("slo.attainment is a fraction of requests: it must be in (0, 1]")
        return self


_IDLE_NEEDS_ZERO = (
    "autoscaling.scaleToZeroAfterSeconds needs minReplicas 0 (it is how long a deployment "
    "without requests keeps its last replica)"
)


class AutoscalingSpec(_Spec):
    """Bounds for replica autoscaling on SLO attainment (docs/autoscaling.md)."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        frozen=True,
        json_schema_extra=_cel(
            _rule(
                "self.minReplicas <= self.maxReplicas",
                "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
            ),
            _rule("!has(self.scaleToZeroAfterSeconds) || self.minReplicas == 0", _IDLE_NEEDS_ZERO),
        ),
    )

    enabled: bool = Field(
        default=False,
        description="Scale replicas between minReplicas and maxReplicas to keep the SLO met.",
    )
    min_replicas: int = Field(
        default=1, ge=0, le=1000, alias="minReplicas", description="Fewest replicas."
    )
    max_replicas: int = Field(
        default=4, ge=1, le=1000, alias="maxReplicas", description="Most replicas."
    )
    scale_to_zero_after_seconds: int | None = Field(
        default=None,
        ge=30,
        le=86_400,
        alias="scaleToZeroAfterSeconds",
        description="With minReplicas 0: seconds without a request before the last replica is "
        "removed (unset: 600). The first request after that waits for a cold start.",
    )
    scale_down_stabilization_seconds: int = Field(
        default=300,
        ge=0,
        le=3600,
        alias="scaleDownStabilizationSeconds",
        description="A scale-down takes the highest replica count recommended over this many "
        "seconds, so a dip in traffic does not remove replicas that a rebound needs again.",
    )

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling.minReplicas must not exceed autoscaling.maxReplicas")
        if self.scale_to_zero_after_seconds is not None and self.min_replicas != 0:
            raise ValueError(_IDLE_NEEDS_ZERO)
        return self


class ParallelismSpec(_Spec):
    """How one replica splits the model over GPUs; an omitted degree is chosen by the operator."""

    tensor: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Tensor-parallel degree (GPUs sharing every layer); omit to choose auto.",
    )
    pipeline: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Pipeline-parallel degree (stages of layers); omit to choose auto.",
    )


class ResourcesSpec(_Spec):
    """Which GPUs to run on and how many per replica."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        frozen=True,
        json_schema_extra=_cel(
            _rule(
                "!has(self.gpusPerReplica) || !has(self.parallelism) || "
                "!has(self.parallelism.tensor) || !has(self.parallelism.pipeline) || "
                "self.parallelism.tensor * self.parallelism.pipeline == self.gpusPerReplica",
                "resources.gpusPerReplica must equal parallelism.tensor * parallelism.pipeline "
                "when all three are set",
            ),
            _rule(
                "!has(self.gpusPerReplica) || !has(self.parallelism) || "
                "!has(self.parallelism.tensor) || "
                "self.gpusPerReplica % self.parallelism.tensor == 0",
                "resources.gpusPerReplica must be a multiple of parallelism.tensor",
            ),
            _rule(
                "!has(self.gpusPerReplica) || !has(self.parallelism) || "
                "!has(self.parallelism.pipeline) || "
                "self.gpusPerReplica % self.parallelism.pipeline == 0",
                "resources.gpusPerReplica must be a multiple of parallelism.pipeline",
            ),
            _rule(
                "self.gpuMemoryUtilization > 0.0 && self.gpuMemoryUtilization <= 1.0",
                "resources.gpuMemoryUtilization is a fraction of GPU memory: it must be in (0, 1]",
            ),
        ),
    )

    gpu_types: list[Annotated[str, StringConstraints(min_length=1, max_length=128)]] = Field(
        default_factory=list,
        max_length=16,
        alias="gpuTypes",
        description=(
            "GPU products in order of preference, matched against the nodes' "
            "`nvidia.com/gpu.product` label: an exact value (NVIDIA-H100-80GB-HBM3) or its "
            "dash-separated parts (H100, A100-80GB). Empty: any GPU type."
        ),
    )
    gpus_per_replica: int | None = Field(
        default=None,
        ge=1,
        le=64,
        alias="gpusPerReplica",
        description="GPUs per replica; omit to derive it from the parallelism or the model size.",
    )
    parallelism: ParallelismSpec = Field(
        default_factory=ParallelismSpec,
        description="Tensor and pipeline parallel degrees; omitted degrees are chosen by the "
        "operator from the model size and the GPU memory.",
    )
    gpu_memory_utilization: float = Field(
        default=0.9,
        alias="gpuMemoryUtilization",
        description="Fraction of each GPU's memory the engine may use (weights + KV cache).",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ResourcesSpec:
        tp, pp, n = self.parallelism.tensor, self.parallelism.pipeline, self.gpus_per_replica
        if n is not None and tp is not None and pp is not None and tp * pp != n:
            raise ValueError(
                "resources.gpusPerReplica must equal parallelism.tensor * parallelism.pipeline "
                "when all three are set"
            )
        if n is not None and tp is not None and n % tp:
            raise ValueError("resources.gpusPerReplica must be a multiple of parallelism.tensor")
        if n is not None and pp is not None and n % pp:
            raise ValueError("resources.gpusPerReplica must be a multiple of parallelism.pipeline")
        if not 0 < self.gpu_memory_utilization <= 1:
            raise ValueError(
                "resources.gpuMemoryUtilization is a fraction of GPU memory: it must be in (0, 1]"
            )
        return self


class PriorityClassSpec(_Spec):
    """A named class of traffic (chosen per request by the `x-goodput-priority` header)."""

    name: str = Field(
        min_length=1,
        max_length=63,
        pattern=_DNS_LABEL,
        description="Class name requests refer to.",
    )
    rank: int = Field(default=0, ge=0, le=1000, description="Lower ranks are served first.")
    slo_scale: float = Field(
        default=1.0,
        gt=0,
        le=1000,
        alias="sloScale",
        description="Multiplier on the SLO for this class (2 = twice as lenient).",
    )


_UNIQUE_NAMES = "self.all(x, self.exists_one(y, y.name == x.name))"


class SchedulingSpec(_Spec):
    """How the in-pod gateway orders and admits requests."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        frozen=True,
        json_schema_extra=_cel(
            _rule(
                "self.priorityClasses.exists(p, p.name == self.defaultPriority)",
                "scheduling.defaultPriority must name one of scheduling.priorityClasses",
            ),
        ),
    )

    policy: Literal["slo", "fcfs", "oracle"] = Field(
        default="slo",
        description=(
            "Request scheduling policy: `slo` orders by SLO deadline using predicted output "
            "lengths, `fcfs` is first come first served, `oracle` uses true lengths "
            "(benchmarks only)."
        ),
    )
    overload: Literal["reject", "best-effort"] = Field(
        default="reject",
        description=(
            "What to do with a request that cannot meet its SLO: `reject` answers 429 at once, "
            "`best-effort` serves it late."
        ),
    )
    max_queue_length: int = Field(
        default=1024,
        ge=1,
        le=1_000_000,
        alias="maxQueueLength",
        description="Most requests waiting in the gateway's queue; more are rejected (429).",
    )
    max_queue_delay_ms: float | None = Field(
        default=None,
        gt=0,
        alias="maxQueueDelayMs",
        description="Longest a request may wait in the queue before it is rejected.",
    )
    priority_classes: list[PriorityClassSpec] = Field(
        default=[PriorityClassSpec(name="default")],
        min_length=1,
        max_length=16,
        alias="priorityClasses",
        json_schema_extra=_cel(
            _rule(_UNIQUE_NAMES, "scheduling.priorityClasses names must be unique")
        ),
        description="Traffic classes; requests without a class get `defaultPriority`.",
    )
    default_priority: str = Field(
        default="default",
        min_length=1,
        max_length=63,
        alias="defaultPriority",
        description="Class of requests that name none.",
    )

    @model_validator(mode="after")
    def _classes(self) -> SchedulingSpec:
        names = [p.name for p in self.priority_classes]
        if len(set(names)) != len(names):
            raise ValueError("scheduling.priorityClasses names must be unique")
        if self.default_priority not in names:
            raise ValueError(
                "scheduling.defaultPriority must name one of scheduling.priorityClasses"
            )
        return self


class KVCacheSpec(_Spec):
    """KV cache options of the engine."""

    prefix_caching: bool = Field(
        default=True,
        alias="prefixCaching",
        description="Reuse the KV cache of shared prompt prefixes across requests.",
    )
    dtype: Literal["auto", "fp8"] = Field(
        default="auto",
        description="KV cache element type: `auto` follows the model, `fp8` halves KV memory.",
    )
    cpu_offload_gib: float = Field(
        default=0.0,
        ge=0,
        le=4096,
        alias="cpuOffloadGiB",
        description="GiB of host memory to offload KV blocks to (0 = no offloading).",
    )


class RouterSpec(_Spec):
    """The cluster router's own settings (docs/router.md)."""

    replicas: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Router pods. Each routes alone (no shared store): prefixes and sessions "
        "find their replica by rendezvous hashing, alike in every router.",
    )
    bounded_load: float = Field(
        default=1.25,
        ge=1.0,
        le=10.0,
        alias="boundedLoad",
        description="Prefix and session affinity yield once a replica carries more than this "
        "factor times the mean load plus one request.",
    )
    max_queue: int = Field(
        default=256,
        ge=0,
        le=100_000,
        alias="maxQueue",
        description="Requests the router holds while every replica is saturated; beyond, 429.",
    )
    block_chars: int = Field(
        default=64,
        ge=8,
        le=65536,
        alias="blockChars",
        description="Prompt characters per prefix block (about a quarter as many tokens).",
    )


_CASCADE_TARGET = "routing.cascade sets exactly one target: maxLargeShare or minWinRate"
_CASCADE_UNIQUE = "routing.cascade.models must name each deployment once"


class CascadeModelSpec(_Spec):
    """One LLMDeployment of a cascade (docs/cascade.md)."""

    deployment: str = Field(
        min_length=1,
        max_length=50,
        pattern=_DNS_LABEL,
        description="An LLMDeployment in this namespace (this one included) whose replicas serve "
        "this model.",
    )
    model: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        description="The model name that deployment serves (its spec.model.name), written into "
        "the requests sent there. Unset: this deployment's own model name (the cascade's).",
    )
    quality_key: str | None = Field(
        default=None,
        min_length=1,
        max_length=253,
        alias="qualityKey",
        description="The quality predictor's name for this model (an AlpacaEval model, e.g. "
        "Mistral-7B-Instruct-v0.2 or gpt4_1106_preview); unset: `model`. An unknown name is "
        "predicted as the average small model.",
    )
    multimodal: bool = Field(
        default=False,
        description="It reads images: requests with image content go only to such models.",
    )
    tpot_ms: float | None = Field(
        default=None,
        gt=0,
        le=60_000,
        alias="tpotMs",
        description="Its time per output token (e.g. its slo.tpotMs): a spill then weighs the "
        "request's predicted output length.",
    )


class CascadeSpec(_Spec):
    """Several LLMDeployments behind this deployment's model name: the router picks one per
    request by the small model's predicted answer quality, the request's modality, and each
    model's predicted wait under its SLO, within a target the user sets."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        frozen=True,
        json_schema_extra=_cel(
            _rule("has(self.maxLargeShare) != has(self.minWinRate)", _CASCADE_TARGET),
            _rule(
                "self.models.all(x, self.models.exists_one(y, y.deployment == x.deployment))",
                _CASCADE_UNIQUE,
            ),
        ),
    )

    models: list[CascadeModelSpec] = Field(
        min_length=2,
        max_length=8,
        description="The models, cheapest first: the first serves by default, the others are "
        "escalations.",
    )
    max_large_share: float | None = Field(
        default=None,
        ge=0,
        le=1,
        alias="maxLargeShare",
        description="At most this share of requests goes past the first model (over the last "
        "windowRequests, sessions and spills counted): those it is predicted to answer worst.",
    )
    min_win_rate: float | None = Field(
        default=None,
        ge=0,
        le=1,
        alias="minWinRate",
        description="A model answers only when its predicted win-rate against the reference "
        "model is at least this: the first such model, else the best predicted.",
    )
    window_requests: int = Field(
        default=1000,
        ge=10,
        le=1_000_000,
        alias="windowRequests",
        description="The sliding window maxLargeShare is held over.",
    )

    @model_validator(mode="after")
    def _one_target(self) -> CascadeSpec:
        if (self.max_large_share is None) == (self.min_win_rate is None):
            raise ValueError(_CASCADE_TARGET)
        names = [m.deployment for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError(_CASCADE_UNIQUE)
        return self


class RoutingSpec(_Spec):
    """How requests are spread over replicas. With ``prefixAware`` or ``sessionAffinity`` the
    operator deploys a router (``goodput route``) and the deployment's Service leads to it; without
    either, the Service leads straight to the replicas' gateways."""

    session_affinity: bool = Field(
        default=False,
        alias="sessionAffinity",
        description="Keep each session (header x-session-id, else the OpenAI `user` field) on one "
        "replica while it is not overloaded.",
    )
    prefix_aware: bool = Field(
        default=False,
        alias="prefixAware",
        description="Send requests sharing a prompt prefix to the replica that holds it in its KV "
        "cache, weighed against SLO headroom and load.",
    )
    router: RouterSpec = Field(
        default_factory=RouterSpec, description="The router, when one is deployed."
    )
    cascade: CascadeSpec | None = Field(
        default=None,
        description="Serve this model name from several LLMDeployments, one chosen per request "
        "(a router is deployed).",
    )

    @property
    def uses_router(self) -> bool:
        return self.session_affinity or self.prefix_aware or self.cascade is not None


class SecretKeyRef(_Spec):
    """A key of a Secret in the deployment's namespace."""

    name: str = Field(min_length=1, max_length=253, description="Secret name.")
    key: str = Field(min_length=1, max_length=253, description="Key within the Secret.")


class EnvVarSource(_Spec):
    """Where an environment variable's value comes from."""

    secret_key_ref: SecretKeyRef = Field(
        alias="secretKeyRef", description="Read the value from a Secret key."
    )


class EnvVar(_Spec):
    """An environment variable for the engine container."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        frozen=True,
        json_schema_extra=_cel(
            _rule(
                "!(has(self.value) && has(self.valueFrom))",
                "an engine.env entry sets either value or valueFrom, not both",
            )
        ),
    )

    name: str = Field(min_length=1, max_length=256, pattern=_ENV_NAME, description="Variable name.")
    value: str | None = Field(default=None, max_length=32768, description="Literal value.")
    value_from: EnvVarSource | None = Field(
        default=None, alias="valueFrom", description="Value read from a Secret instead."
    )

    @model_validator(mode="after")
    def _one_source(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError("an engine.env entry sets either value or valueFrom, not both")
        return self


class EngineSpec(_Spec):
    """The vLLM engine container; `args` and `env` are an escape hatch to any vLLM flag."""

    image: str | None = Field(
        default=None,
        max_length=512,
        description="Engine image; default: the operator's (GOODPUT_ENGINE_IMAGE, or pinned).",
    )
    args: list[Annotated[str, StringConstraints(max_length=4096)]] = Field(
        default_factory=list,
        max_length=128,
        description="Extra vLLM arguments, appended after the ones the operator derives.",
    )
    env: list[EnvVar] = Field(
        default_factory=list,
        max_length=64,
        json_schema_extra=_cel(_rule(_UNIQUE_NAMES, "engine.env names must be unique")),
        description="Extra environment variables (e.g. HF_TOKEN from a Secret).",
    )


_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_SECRET_NAME_MESSAGE = (
    "gateway.tls.secretName must name a Secret: lower-case letters, digits, '-' and '.', "
    "starting and ending with a letter or digit"
)


class TLSSpec(_Spec):
    """HTTPS on the deployment's endpoint, from a certificate in a Secret (docs/security.md)."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        frozen=True,
        json_schema_extra=_cel(
            _rule(f"self.secretName.matches('{_DNS_SUBDOMAIN}')", _SECRET_NAME_MESSAGE)
        ),
    )

    secret_name: str = Field(
        min_length=1,
        max_length=253,
        alias="secretName",
        description="A Secret of type kubernetes.io/tls in the deployment's namespace: `tls.crt` "
        "(whose names must include the Service's, NAME.NAMESPACE.svc) and `tls.key` serve "
        "HTTPS on every gateway and on the router; its optional `ca.crt` is what the router "
        "trusts the gateways' certificate by (without it: the system's trust store).",
    )

    @model_validator(mode="after")
    def _secret_name(self) -> TLSSpec:
        if not re.fullmatch(_DNS_SUBDOMAIN, self.secret_name):
            raise ValueError(_SECRET_NAME_MESSAGE)
        return self


class GatewaySpec(_Spec):
    """The Goodput gateway container in front of the engine."""

    image: str | None = Field(
        default=None,
        max_length=512,
        description="Gateway image; default: the operator's own version of Goodput.",
    )
    tls: TLSSpec | None = Field(
        default=None,
        description="Serve the OpenAI API over HTTPS (gateways and router); unset: plain HTTP. "
        "The Service then listens on 443 and `status.endpoint` is an https URL.",
    )


_ADAPTER_SHADOWS_MODEL = "an adapter may not be named like spec.model.name"
_ADAPTER_PRIORITY = "an adapter's priority must name one of scheduling.priorityClasses"


class LLMDeploymentSpec(_Spec):
    """Desired state: a model served within an SLO."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        frozen=True,
        json_schema_extra=_cel(
            # adapters and scheduling may be absent from a stored object: guard with has().
            _rule(
                "!has(self.adapters) || !self.adapters.exists(a, a.name == self.model.name)",
                _ADAPTER_SHADOWS_MODEL,
            ),
            _rule(
                "!has(self.adapters) || !self.adapters.exists(a, has(a.priority) && "
                "!(has(self.scheduling) && has(self.scheduling.priorityClasses) && "
                "self.scheduling.priorityClasses.exists(p, p.name == a.priority)))",
                _ADAPTER_PRIORITY,
            ),
            _rule(
                "!has(self.autoscaling) || !self.autoscaling.enabled || "
                "(self.replicas >= self.autoscaling.minReplicas && "
                "self.replicas <= self.autoscaling.maxReplicas)",
                "replicas must lie within [autoscaling.minReplicas, autoscaling.maxReplicas] "
                "while autoscaling is enabled",
            ),
        ),
    )

    model: ModelSpec = Field(description="The base model.")
    adapters: list[AdapterSpec] = Field(
        default_factory=list,
        max_length=32,
        json_schema_extra=_cel(_rule(_UNIQUE_NAMES, "adapters names must be unique")),
        description="LoRA adapters served next to the base model, each under its own name; "
        "added and removed without restarting the pods.",
    )
    lora: LoRASpec = Field(
        default_factory=LoRASpec,
        description="Adapter capacity of each replica, fixed per pod (changing it rolls them).",
    )
    slo: SLOSpec = Field(description="Latency objectives every replica is sized and scheduled for.")
    replicas: int = Field(
        default=1,
        ge=0,
        le=1000,
        description="Number of serving replicas (the scale subresource sets this).",
    )
    autoscaling: AutoscalingSpec = Field(
        default_factory=AutoscalingSpec, description="Replica bounds for autoscaling."
    )
    resources: ResourcesSpec = Field(
        default_factory=ResourcesSpec, description="GPU type preferences and parallelism."
    )
    scheduling: SchedulingSpec = Field(
        default_factory=SchedulingSpec, description="Request scheduling in the gateway."
    )
    kv_cache: KVCacheSpec = Field(
        default_factory=KVCacheSpec, alias="kvCache", description="Engine KV cache options."
    )
    routing: RoutingSpec = Field(
        default_factory=RoutingSpec, description="Request routing across replicas."
    )
    engine: EngineSpec = Field(default_factory=EngineSpec, description="vLLM engine container.")
    gateway: GatewaySpec = Field(
        default_factory=GatewaySpec, description="Goodput gateway container."
    )

    @model_validator(mode="after")
    def _replicas_and_adapters(self) -> LLMDeploymentSpec:
        a = self.autoscaling
        if a.enabled and not a.min_replicas <= self.replicas <= a.max_replicas:
            raise ValueError(
                "replicas must lie within [autoscaling.minReplicas, autoscaling.maxReplicas] "
                "while autoscaling is enabled"
            )
        names = [ad.name for ad in self.adapters]
        if len(set(names)) != len(names):
            raise ValueError("adapters names must be unique")
        if self.model.name in names:
            raise ValueError(_ADAPTER_SHADOWS_MODEL)
        classes = {p.name for p in self.scheduling.priority_classes}
        for ad in self.adapters:
            if ad.priority is not None and ad.priority not in classes:
                raise ValueError(_ADAPTER_PRIORITY)
        return self

    @property
    def lora_capacity(self) -> LoRASpec | None:
        """The adapter capacity each replica is started with; None: the engine serves no LoRA."""
        return self.lora if self.lora.enabled or self.adapters else None

    @property
    def needs_router(self) -> bool:
        """A router goes before the replicas: ``spec.routing`` asks for one, autoscaling may
        take the replicas to zero (the router then holds requests while one starts), or the
        replicas serve adapters (the router sends each request where its adapter is loaded)."""
        a = self.autoscaling
        zero = a.enabled and a.min_replicas == 0
        return self.routing.uses_router or zero or self.lora_capacity is not None

    @property
    def weights_source(self) -> str:
        """What the engine loads: `source`, or the model name taken as a hub id."""
        return self.model.source or self.model.name


# --------------------------------------------------------------------------------------- status


class Condition(BaseModel):
    """A Kubernetes-style condition (metav1.Condition shape)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    type: str = Field(max_length=316, description="Placed, Available, Degraded or Profiled.")
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(max_length=1024, description="CamelCase reason for the last transition.")
    message: str = Field(default="", max_length=32768, description="Human-readable details.")
    last_transition_time: str = Field(
        alias="lastTransitionTime", description="When the status last changed (RFC 3339)."
    )
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        alias="observedGeneration",
        description="metadata.generation the condition was computed from.",
    )


class ReplicaPlacement(BaseModel):
    """Where one replica runs."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    replica: int = Field(ge=0, description="Replica index.")
    nodes: list[str] = Field(default_factory=list, description="Nodes the replica's pods run on.")
    gpus: int = Field(ge=0, description="GPUs the replica uses.")
    tensor: int = Field(ge=1, description="Tensor-parallel degree.")
    pipeline: int = Field(ge=1, description="Pipeline-parallel degree.")


class ProfileStatus(BaseModel):
    """What the operator estimated about the model."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    weights_gib: float | None = Field(
        default=None, alias="weightsGiB", description="Memory the weights need, GiB."
    )
    kv_bytes_per_token: int | None = Field(
        default=None, alias="kvBytesPerToken", description="KV cache bytes per token."
    )
    parameters: int | None = Field(
        default=None, description="Estimated parameter count of the base model."
    )
    source: str | None = Field(
        default=None, max_length=256, description="How the estimate was made."
    )
    max_concurrency: int | None = Field(
        default=None,
        alias="maxConcurrency",
        description="Most concurrent sequences the KV cache holds at maxModelLen.",
    )
    predicted_tokens_per_second: float | None = Field(
        default=None,
        alias="predictedTokensPerSecond",
        description="Predicted generation throughput of one replica within the SLO.",
    )


class EngineStatus(BaseModel):
    """What the pods run with: the engine's arguments and what the gateway was told."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    args: list[str] = Field(
        default_factory=list,
        description="The engine container's arguments (spec fields, memory model, engine.args).",
    )
    max_model_len: int | None = Field(
        default=None, alias="maxModelLen", description="Longest context the engine accepts."
    )
    max_num_seqs: int | None = Field(
        default=None, alias="maxNumSeqs", description="Sequences the engine runs at once."
    )
    max_num_batched_tokens: int | None = Field(
        default=None,
        alias="maxNumBatchedTokens",
        description="Tokens per engine step (the prefill chunk).",
    )
    kv_cache_tokens: int | None = Field(
        default=None,
        alias="kvCacheTokens",
        description="KV-cache capacity the memory model predicts, given to the gateway.",
    )
    gateway_max_concurrency: int | None = Field(
        default=None,
        alias="gatewayMaxConcurrency",
        description="Most requests the gateway sends the engine at once.",
    )
    predictor: str | None = Field(
        default=None, max_length=64, description="The gateway's output-length predictor."
    )


class AdapterStatus(BaseModel):
    """Where one adapter is loaded now, as the replicas' gateways report it."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    name: str = Field(max_length=63, description="The adapter (spec.adapters[].name).")
    loaded_on: list[str] = Field(
        default_factory=list,
        alias="loadedOn",
        description="Pods whose engine has it loaded (it loads on a replica's first request).",
    )
    cold_loads: int = Field(
        default=0,
        ge=0,
        alias="coldLoads",
        description="Loads into an engine so far, summed over the pods that report them.",
    )


class LLMDeploymentStatus(BaseModel):
    """Observed state, written by the operator only."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    observed_generation: int | None = Field(
        default=None, alias="observedGeneration", description="Last metadata.generation acted on."
    )
    phase: Phase | None = Field(
        default=None,
        description="Summary: Pending, Placing, Progressing, Available, Degraded or Failed.",
    )
    conditions: list[Condition] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        description="Placed, Available, Degraded (and Profiled) conditions.",
    )
    replicas: int | None = Field(default=None, description="Pods of the workload that exist.")
    ready_replicas: int | None = Field(
        default=None, alias="readyReplicas", description="Replicas ready to serve."
    )
    ready: str | None = Field(
        default=None, description="`ready/desired`, for kubectl's READY column."
    )
    selector: str | None = Field(
        default=None, description="Label selector of the pods (for the scale subresource)."
    )
    endpoint: str | None = Field(default=None, description="OpenAI-compatible base URL.")
    router: str | None = Field(
        default=None,
        description="The router Deployment in front of the replicas (set while spec.routing "
        "asks for one).",
    )
    gpus: int | None = Field(default=None, description="GPUs requested by all desired replicas.")
    gpu_type: str | None = Field(
        default=None, alias="gpuType", description="GPU product the replicas run on."
    )
    placement: list[ReplicaPlacement] = Field(
        default_factory=list, description="Where each replica runs."
    )
    profile: ProfileStatus | None = Field(default=None, description="Model estimates.")
    engine: EngineStatus | None = Field(
        default=None, description="What the pods run with (engine arguments, gateway limits)."
    )
    adapters: list[AdapterStatus] = Field(
        default_factory=list,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
        description="Each adapter of spec.adapters and the pods that have it loaded.",
    )
    slo_attainment: float | None = Field(
        default=None,
        alias="sloAttainment",
        description="Observed fraction of requests that met the SLO (rolling window).",
    )
    message: str | None = Field(default=None, description="Human-readable summary.")


class ObjectMeta(BaseModel):
    """The metadata fields the operator reads."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str
    namespace: str = "default"
    uid: str = ""
    generation: int = 0
    labels: dict[str, str] = Field(default_factory=dict)


class LLMDeployment(BaseModel):
    """A whole object as read from the API server."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    api_version: str = Field(default=API_VERSION, alias="apiVersion")
    kind: str = KIND
    metadata: ObjectMeta
    spec: LLMDeploymentSpec
    status: LLMDeploymentStatus = Field(default_factory=LLMDeploymentStatus)


PVC_SOURCE = re.compile(r"^pvc://(?P<claim>[a-z0-9]([-a-z0-9.]*[a-z0-9])?)(?P<path>/.*)?$")
