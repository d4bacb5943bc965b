"""Operator settings: what it watches, how replicas coordinate, and the images pods run.

Defaults come from environment variables (``GOODPUT_*``) so the Helm chart can set them without
flags; ``goodput operator run`` flags override them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from goodput import __version__

DEFAULT_ENGINE_IMAGE = "vllm/vllm-openai:v0.11.0"
DEFAULT_GATEWAY_IMAGE = f"ghcr.io/goodput-dev/goodput:{__version__}"


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


@dataclass(frozen=True)
class WorkloadSettings:
    """What every serving pod gets unless its LLMDeployment says otherwise."""

    engine_image: str = field(
        default_factory=lambda: _env("GOODPUT_ENGINE_IMAGE", DEFAULT_ENGINE_IMAGE)
    )
    gateway_image: str = field(
        default_factory=lambda: _env("GOODPUT_GATEWAY_IMAGE", DEFAULT_GATEWAY_IMAGE)
    )
    # Tolerations for site-specific GPU node taints (nvidia.com/gpu is always tolerated).
    tolerations: tuple[dict[str, Any], ...] = ()
    # Time the gateway gets to finish in-flight requests when a pod is replaced.
    termination_grace_seconds: int = 90
    # Loading a large model can take many minutes before the first pod turns ready.
    progress_deadline_seconds: int = 1800


@dataclass(frozen=True)
class OperatorSettings:
    """How the operator process runs."""

    namespaces: tuple[str, ...] = ()  # empty: all namespaces
    # None: standalone (one replica, no coordination). A name: kopf peering, so that several
    # operator replicas run with only the highest-priority one active (needs the KopfPeering CRDs).
    peering: str | None = None
    priority: int = 0
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = 9090
    liveness_endpoint: str | None = None
    kubeconfig: str | None = None
    workload: WorkloadSettings = field(default_factory=WorkloadSettings)

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces
