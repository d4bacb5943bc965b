"""Operator settings: what it watches, how replicas coordinate, and the images pods run.

Defaults come from environment variables (``GOODPUT_*``) so the Helm chart can set them without
flags; ``goodput operator run`` flags override them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from goodput.api import images

# One place names the images (goodput/api/images.py): the engine is vLLM's CPU build at the
# version whose own parser the argument-contract test runs; the gateway is this package's image.
DEFAULT_ENGINE_IMAGE = images.ENGINE_IMAGE
DEFAULT_GATEWAY_IMAGE = images.GOODPUT_IMAGE
#: Image tags are fixed (a version, not ``latest``), so a node that has the image keeps it: this
#: is also what lets locally loaded images run on a node without a registry.
DEFAULT_IMAGE_PULL_POLICY = "IfNotPresent"
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
#: Host CPU and memory a GPU engine needs besides its GPUs (tokenisation, the API server, the
#: sampler, CUDA's host allocations); the memory grows by the spec's CPU KV offload.
DEFAULT_ENGINE_CPU = "4"
DEFAULT_ENGINE_MEMORY_GIB = 16.0
#: Seconds the engine gets, once the gateway has gone, to stop before the kubelet kills the pod.
ENGINE_STOP_SECONDS = 10
#: Seconds the gateway's server needs after its drain to close (``goodput serve`` allows 5).
GATEWAY_EXIT_SECONDS = 5


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def parse_toleration(text: str) -> dict[str, Any]:
    """``key[=value]:Effect`` (kubectl taint syntax) as a pod toleration."""
    spec, _, effect = text.rpartition(":")
    if not spec or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
        raise ValueError(f"toleration {text!r} is not KEY[=VALUE]:EFFECT")
    key, sep, value = spec.partition("=")
    tol: dict[str, Any] = {"key": key, "effect": effect}
    tol.update({"operator": "Equal", "value": value} if sep else {"operator": "Exists"})
    return tol


def parse_labels(text: str) -> dict[str, str]:
    """``k=v,k=v`` (kubectl's selector syntax, equality only) as a node selector."""
    selector: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"node selector item {item!r} is not KEY=VALUE")
        selector[key] = value
    return selector


@dataclass(frozen=True)
class WorkloadSettings:
    """What every serving pod gets unless its LLMDeployment says otherwise."""

    engine_image: str = field(
        default_factory=lambda: _env("GOODPUT_ENGINE_IMAGE", DEFAULT_ENGINE_IMAGE)
    )
    gateway_image: str = field(
        default_factory=lambda: _env("GOODPUT_GATEWAY_IMAGE", DEFAULT_GATEWAY_IMAGE)
    )
    image_pull_policy: str = field(
        default_factory=lambda: _env("GOODPUT_IMAGE_PULL_POLICY", DEFAULT_IMAGE_PULL_POLICY)
    )
    # Requests of the engine container (no CPU limit: throttling an engine stalls every stream).
    engine_cpu: str = field(default_factory=lambda: _env("GOODPUT_ENGINE_CPU", DEFAULT_ENGINE_CPU))
    engine_memory_gib: float = field(
        default_factory=lambda: float(
            _env("GOODPUT_ENGINE_MEMORY_GIB", str(DEFAULT_ENGINE_MEMORY_GIB))
        )
    )
    # Tolerations for site-specific GPU node taints (nvidia.com/gpu is always tolerated).
    tolerations: tuple[dict[str, Any], ...] = ()
    # Where router pods run (they need no GPU): ``k=v,k=v`` and ``KEY[=VALUE]:EFFECT`` lists.
    router_node_selector: dict[str, str] = field(
        default_factory=lambda: parse_labels(_env("GOODPUT_ROUTER_NODE_SELECTOR", ""))
    )
    router_tolerations: tuple[dict[str, Any], ...] = field(
        default_factory=lambda: tuple(
            parse_toleration(t) for t in _env("GOODPUT_ROUTER_TOLERATIONS", "").split()
        )
    )
    #: How long a router holds a request while no replica is ready (scale from zero) before it
    #: answers 503 + Retry-After, and how many it holds at most.
    router_hold_s: float = field(
        default_factory=lambda: float(_env("GOODPUT_ROUTER_HOLD_S", "300"))
    )
    router_hold_queue: int = field(
        default_factory=lambda: int(_env("GOODPUT_ROUTER_HOLD_QUEUE", "256"))
    )
    # ``host:port`` of the API server as pods should reach it, for clusters without kube-proxy
    # (the dev cluster): the router pods get it as KUBERNETES_SERVICE_HOST/PORT.
    pod_api_server: str | None = field(
        default_factory=lambda: os.environ.get("GOODPUT_POD_API_SERVER") or None
    )
    # A Secret (in each serving namespace) of tenant files with hashed API keys
    # (docs/security.md): mounted into every gateway, which then wants a key, and serves its
    # metrics keyless on the admin port for Prometheus. None: the gateways take anonymous calls.
    gateway_keys_secret: str | None = field(
        default_factory=lambda: os.environ.get("GOODPUT_GATEWAY_KEYS_SECRET") or None
    )
    # With keys: whether requests without one are still served (as tenant "anonymous").
    gateway_anonymous: bool = field(
        default_factory=lambda: _env("GOODPUT_GATEWAY_ANONYMOUS", "false").lower() == "true"
    )
    # The whole stop of a pod: the gateway's drain, its exit, then the engine's.
    termination_grace_seconds: int = 90
    # How long the engine may take to load the model before the gateway's startup probe gives up.
    startup_timeout_seconds: int = 1200
    # Loading a large model can take many minutes before the first pod turns ready.
    progress_deadline_seconds: int = 1800

    def __post_init__(self) -> None:
        if self.image_pull_policy not in PULL_POLICIES:
            raise ValueError(
                f"image pull policy {self.image_pull_policy!r} is not one of {PULL_POLICIES}"
            )
        if self.drain_seconds < 1:
            raise ValueError(
                f"termination grace {self.termination_grace_seconds} s leaves no time to drain "
                f"(the engine and the gateway's exit take {ENGINE_STOP_SECONDS} + "
                f"{GATEWAY_EXIT_SECONDS} s of it)"
            )

    @property
    def drain_seconds(self) -> int:
        """How long the gateway lets in-flight requests finish after SIGTERM: the grace period
        less what the gateway's exit and then the engine's stop need."""
        return self.termination_grace_seconds - ENGINE_STOP_SECONDS - GATEWAY_EXIT_SECONDS

    @property
    def engine_stop_after_seconds(self) -> int:
        """The longest the engine waits for the gateway to go before it stops anyway."""
        return self.termination_grace_seconds - ENGINE_STOP_SECONDS


def _optional_float(name: str) -> float | None:
    value = os.environ.get(name)
    return float(value) if value else None


@dataclass(frozen=True)
class AutoscalingSettings:
    """The autoscaling loop's operator-wide settings (docs/autoscaling.md); the spec's
    ``autoscaling`` sets each deployment's bounds and windows."""

    #: Seconds between two decisions for each LLMDeployment with ``autoscaling.enabled``.
    interval_s: float = field(
        default_factory=lambda: float(_env("GOODPUT_AUTOSCALING_INTERVAL_S", "15"))
    )
    #: Requests/s one replica serves within the SLO, measured: set, it replaces the profiler's
    #: prediction for every deployment (a fleet whose engines the profiler does not model, as
    #: the dev cluster's CPU engine on two shared cores). None: the profiler's capacity model.
    replica_rps: float | None = field(
        default_factory=lambda: _optional_float("GOODPUT_AUTOSCALING_REPLICA_RPS")
    )
    #: A replica's measured cold start, in seconds (None: the profiler's estimate for the model).
    cold_start_s: float | None = field(
        default_factory=lambda: _optional_float("GOODPUT_AUTOSCALING_COLD_START_S")
    )
    #: Fewest seconds between two scale-downs (``AutoscalingPolicy.scale_down_interval_s``).
    scale_down_interval_s: float = field(
        default_factory=lambda: float(_env("GOODPUT_AUTOSCALING_SCALE_DOWN_INTERVAL_S", "60"))
    )

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or (self.replica_rps is not None and self.replica_rps <= 0):
            raise ValueError("the autoscaling interval and the requests/s per replica must be > 0")


@dataclass(frozen=True)
class OperatorSettings:
    """How the operator process runs."""

    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    # None: standalone (one replica, no coordination). A name: kopf peering, so that several
    # operator replicas run with only the highest-priority one active (needs the KopfPeering CRDs).
    peering: str | None = None
    priority: int = 0
    # How long a replica's peering record counts after its last keep-alive (kopf renews it 5-10 s
    # before then): how long a replica that died without saying goodbye (SIGKILL, a lost node)
    # keeps the others standing by.
    peering_lifetime_s: int = 60
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 9090
    liveness_endpoint: str | None = None
    kubeconfig: str | None = None
    workload: WorkloadSettings = field(default_factory=WorkloadSettings)
    autoscaling: AutoscalingSettings = field(default_factory=AutoscalingSettings)

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces
