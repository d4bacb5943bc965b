"""Fixtures and helpers the end-to-end modules on the real node share."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from goodput.dev.fleet import Fleet
from goodput.dev.node import LocalNode
from goodput.dev.tiny_model import ensure_tiny_model

from .operator_process import OperatorProcess
from .waiting import wait_for

if TYPE_CHECKING:
    from goodput.dev.cluster import LocalCluster

ROOT = Path(__file__).resolve().parents[2]
MODELS_CLAIM = "goodput-models"


@pytest.fixture(scope="module")
def node(cluster: LocalCluster) -> LocalNode:
    """The test cluster's real kubelet node (the default fleet names one)."""
    spec = Fleet.load("default").real_node
    assert spec is not None, "the default fleet names a real node"
    return cluster.real_node(spec)


@contextlib.contextmanager
def real_node_operator(
    cluster: LocalCluster,
    node: LocalNode,
    namespace: str,
    log: Path,
    env: dict[str, str] | None = None,
) -> Iterator[OperatorProcess]:
    """The operator watching ``namespace``, which offers the tiny model as a claim on the real
    node; the namespace is deleted afterwards (one an earlier run left terminating is waited
    out first, or creating it would be a silent no-op)."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(ROOT / "crds"))

    def not_terminating() -> bool:
        raw = cluster.kubectl("get", "namespace", namespace, "-o", "json", check=False)
        return not raw.strip() or json.loads(raw)["status"].get("phase") != "Terminating"

    wait_for(not_terminating, timeout=300, what=f"namespace {namespace} of an earlier run gone")
    cluster.kubectl("create", "namespace", namespace, check=False)
    node.provide_models(namespace, {"tiny-llama": ensure_tiny_model()}, MODELS_CLAIM)
    process = OperatorProcess(
        cluster.kubeconfig, namespace, log, env={**node.operator_env(), **(env or {})}
    )
    with process:
        try:
            yield process
        finally:
            cluster.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
