"""The whole local Goodput stack on a LocalCluster: CRDs, the operator, and the example.

This is what ``goodput dev up`` (the README's main command) brings up after the control plane:
the repository's CRDs are applied, the operator runs as a background process of the cluster
(pidfile and log in the cluster's state dir, stopped by ``goodput dev down``), and the example
LLMDeployment is applied and awaited until the operator reports it Available.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml

from goodput.dev.cluster import ClusterError, LocalCluster
from goodput.dev.node import LocalNode
from goodput.dev.paths import repo_root
from goodput.dev.processes import ProcessSpec
from goodput.dev.tiny_model import ensure_tiny_model

Progress = Callable[[str], None]

OPERATOR = "goodput-operator"
EXAMPLE = Path("examples") / "llmdeployment.yaml"
# The model the real node serves: the tiny random Llama, from the node's models claim.
REAL_NODE_EXAMPLE = Path("examples") / "llmdeployment-tiny-cpu.yaml"
MODELS_CLAIM = "goodput-models"


class DevStack:
    def __init__(self, cluster: LocalCluster, repo: Path | None = None) -> None:
        self.cluster = cluster
        self.repo = repo or repo_root()

    @property
    def operator_log(self) -> Path:
        return self.cluster.supervisor.log(OPERATOR)

    def crd_files(self) -> list[Path]:
        crds = self.repo / "crds"
        return sorted([*crds.glob("*.yaml"), *crds.glob("*.yml")]) if crds.is_dir() else []

    def apply_crds(self, say: Progress) -> list[str]:
        """Apply every CRD in ``crds/`` and wait until the API server serves them."""
        names = apply_crds(self.cluster, self.crd_files())
        say(f"CRDs established: {', '.join(names)}" if names else "no CRDs in crds/ yet")
        return names

    def start_operator(self, say: Progress, env: dict[str, str] | None = None) -> None:
        """(Re)start the operator so it runs the code of this checkout (``env``: its settings,
        e.g. the real node's serving-pod requests)."""
        supervisor = self.cluster.supervisor
        supervisor.stop(OPERATOR)
        argv = [
            sys.executable, "-m", "goodput", "operator", "run",
            "--kubeconfig", str(self.cluster.kubeconfig), "--all-namespaces", "--standalone",
            "--metrics-port", str(self.cluster.ports.operator_metrics),
        ]  # fmt: skip
        record = supervisor.start(ProcessSpec(OPERATOR, argv, env=env or {}))
        time.sleep(2)
        if not supervisor.alive(OPERATOR):
            raise ClusterError(f"the operator exited at start:\n{self._operator_tail()}")
        say(f"operator running (pid {record.pid}, log {self.operator_log})")

    def stop_operator(self) -> None:
        self.cluster.supervisor.stop(OPERATOR)

    def serve_on_real_node(self, node: LocalNode, say: Progress, timeout: float = 600) -> str:
        """Offer the tiny model on the node, apply the real node's example and wait until the
        operator reports it Available; returns its gateway's URL (a ready endpoint of its
        Service)."""
        node.provide_models("default", {"tiny-llama": ensure_tiny_model()}, MODELS_CLAIM)
        name = self.apply_example(say, timeout=timeout, example=REAL_NODE_EXAMPLE)
        assert name is not None, f"{REAL_NODE_EXAMPLE} names an LLMDeployment"
        return ready_endpoint(self.cluster, "default", name)

    def apply_example(
        self, say: Progress, timeout: float = 300, example: Path = EXAMPLE
    ) -> str | None:
        """Apply an example LLMDeployment and wait until it is Available; returns its name."""
        path = self.repo / example
        if not path.exists():
            say(f"no {example} yet")
            return None
        docs = [d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict)]
        target = next((d for d in docs if d.get("kind") == "LLMDeployment"), None)
        self.cluster.kubectl("apply", "-f", str(path))
        if target is None:
            return None
        name = str(target["metadata"]["name"])
        namespace = str(target["metadata"].get("namespace", "default"))
        say(f"applied {example}; waiting for LLMDeployment {namespace}/{name} to be Available")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.cluster.supervisor.alive(OPERATOR):
                raise ClusterError(f"the operator exited:\n{self._operator_tail()}")
            raw = self.cluster.kubectl(
                "get", "llmd", name, "-n", namespace, "-o", "json", check=False
            )
            if raw and _available(json.loads(raw)):
                return name
            time.sleep(1)
        raise ClusterError(
            f"LLMDeployment {namespace}/{name} not Available after {timeout:.0f}s.\n"
            + self.cluster.kubectl("get", "llmd", name, "-n", namespace, "-o", "yaml", check=False)
            + f"\noperator log:\n{self._operator_tail()}"
        )

    def _operator_tail(self, lines: int = 30) -> str:
        try:
            tail = self.operator_log.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return "(no operator log)"
        return "\n".join(tail) + f"\n(full log: {self.operator_log})"


def apply_crds(cluster: LocalCluster, files: Sequence[Path]) -> list[str]:
    """Server-side apply the CRDs in ``files`` and wait until the API server serves them (the
    dev stack and the tests' fixtures alike); their names."""
    names: list[str] = []
    for path in files:
        cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(path))
        names += [
            doc["metadata"]["name"]
            for doc in yaml.safe_load_all(path.read_text())
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition"
        ]
    if names:
        cluster.kubectl(
            "wait", "--for=condition=Established", "--timeout=60s",
            *[f"crd/{name}" for name in names],
        )  # fmt: skip
    return names


def ready_endpoint(cluster: LocalCluster, namespace: str, service: str, port: str = "http") -> str:
    """``http://IP:PORT`` of a ready endpoint of ``service``, from its EndpointSlices.

    The dev cluster runs no kube-proxy (docs/dev-cluster.md): clients go to the endpoints, as
    the cluster router does.
    """
    raw = cluster.kubectl(
        "get", "endpointslices", "-n", namespace, "-l",
        f"kubernetes.io/service-name={service}", "-o", "json",
    )  # fmt: skip
    for item in json.loads(raw)["items"]:
        number = next((p["port"] for p in item.get("ports") or [] if p.get("name") == port), None)
        for endpoint in item.get("endpoints") or []:
            if number is not None and endpoint.get("conditions", {}).get("ready"):
                return f"http://{endpoint['addresses'][0]}:{number}"
    raise ClusterError(f"service {namespace}/{service} has no ready endpoint on port {port!r}")


def _available(obj: dict[str, Any]) -> bool:
    conditions = obj.get("status", {}).get("conditions", [])
    return any(c.get("type") == "Available" and c.get("status") == "True" for c in conditions)
