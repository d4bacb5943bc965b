"""Run the operator the chart deploys as a local process, with the chart's ServiceAccount identity.

kwok simulates pods without running containers, so the StatefulSet's pods never execute anything.
The e2e test therefore takes the container's arguments from the installed StatefulSet and runs
them here, authenticated by a token of the chart-created ServiceAccount: the operator gets exactly
the permissions the chart's RBAC grants, and nothing it listens on leaves the loopback interface.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from goodput.dev.processes import free_port


def service_account_kubeconfig(admin_kubeconfig: Path, token: str, path: Path) -> Path:
    """A kubeconfig for the same API server that authenticates with a ServiceAccount token."""
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    context = next(c for c in admin["contexts"] if c["name"] == admin["current-context"])
    cluster = next(c for c in admin["clusters"] if c["name"] == context["context"]["cluster"])
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster["cluster"]}],
        "users": [{"name": "operator", "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "local", "user": "operator"}}],
        "current-context": "operator",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def local_arguments(container_args: list[str], priority: int) -> tuple[list[str], int, int]:
    """A container's args made runnable here: free loopback ports and the pod's priority."""
    metrics_port, health_port = free_port(), free_port()
    args: list[str] = []
    for arg in container_args:
        arg = arg.replace("$(GOODPUT_PEERING_PRIORITY)", str(priority))
        if arg.startswith("--metrics-host="):
            arg = "--metrics-host=127.0.0.1"  # a pod listens on all interfaces; here, loopback
        elif arg.startswith("--metrics-port="):
            arg = f"--metrics-port={metrics_port}"
        elif arg.startswith("--liveness-endpoint="):
            arg = f"--liveness-endpoint=http://127.0.0.1:{health_port}/healthz"
        args.append(arg)
    assert "$(" not in " ".join(args), f"unresolved variable in {args}"
    return args, metrics_port, health_port


class LocalOperator:
    """`python -m goodput <container args> --kubeconfig <kubeconfig>`, on loopback ports."""

    def __init__(self, container_args: list[str], kubeconfig: Path, log: Path) -> None:
        self.args, self.metrics_port, self.health_port = local_arguments(
            container_args, priority=100
        )
        self.kubeconfig = kubeconfig
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def as_installed(
        cls, cluster: Any, statefulset: str, namespace: str, workdir: Path, token_duration: str
    ) -> LocalOperator:
        """The operator of an installed release, not yet started: its StatefulSet's container
        arguments, authenticated by a ``token_duration`` token of its own ServiceAccount."""
        sts = json.loads(
            cluster.kubectl("get", "statefulset", statefulset, "-n", namespace, "-o", "json")
        )
        pod = sts["spec"]["template"]["spec"]
        token = cluster.kubectl(
            "create", "token", pod["serviceAccountName"], "-n", namespace,
            f"--duration={token_duration}",
        ).strip()  # fmt: skip
        kubeconfig = service_account_kubeconfig(
            cluster.kubeconfig, token, workdir / "sa.kubeconfig"
        )
        return cls(pod["containers"][0]["args"], kubeconfig, workdir / "operator.log")

    def start(self, timeout: float = 60) -> None:
        # Both the flag and the variable: kopf's own login reads only $KUBECONFIG.
        env = {**os.environ, "KUBECONFIG": str(self.kubeconfig)}
        # The module path (not the console script) runs this checkout's code.
        argv = [sys.executable, "-m", "goodput", *self.args, "--kubeconfig", str(self.kubeconfig)]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"operator exited ({self.process.returncode}):\n{self.tail()}")
            if self.healthy():
                return
            time.sleep(0.5)
        raise RuntimeError(f"operator not healthy after {timeout}s:\n{self.tail()}")

    def healthy(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.health_port}/healthz", timeout=2).is_success
        except httpx.HTTPError:
            return False

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        # SIGTERM lets kopf leave the peering and finish handlers, as in a pod shutdown.
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
