"""The chart under test: where it is, the project's Helm binary, and `helm template` as data."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "goodput"
PROMETHEUS_OPERATOR_APIS = (
    "monitoring.coreos.com/v1/ServiceMonitor",
    "monitoring.coreos.com/v1/PodMonitor",
    "monitoring.coreos.com/v1/PrometheusRule",
)


def find_helm() -> Path:
    """The project's own Helm v4 build (goodput.dev builds it from Go modules, cached)."""
    from goodput.dev.binaries import BinaryCache
    from goodput.dev.versions import HELM

    # Only Helm: the template tests do not need the control plane's binaries.
    binaries = BinaryCache(components=(HELM,))
    binaries.ensure()  # a cold machine builds it once (minutes); cached under ~/.cache/goodput
    return binaries.path("helm")


class RenderError(Exception):
    """`helm template` refused the values (schema or template failure)."""


@dataclass(frozen=True)
class Rendered:
    """The manifests of one `helm template` run, with lookups by kind and name."""

    docs: list[dict[str, Any]]
    notes: str | None  # None when rendered with api_versions (only `helm template` takes them)

    def kinds(self) -> list[str]:
        return sorted(d["kind"] for d in self.docs)

    def all(self, kind: str) -> list[dict[str, Any]]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str) -> dict[str, Any]:
        found = self.all(kind)
        assert len(found) == 1, f"expected one {kind}, got {[d['metadata']['name'] for d in found]}"
        return found[0]


@dataclass(frozen=True)
class ChartRenderer:
    helm: Path

    def _args(self, verb: str, namespace: str, api_versions: Iterable[str]) -> list[str]:
        cmd = [str(self.helm), verb, "gp", str(CHART), "--namespace", namespace, "--values", "-"]
        for api in api_versions:
            cmd += ["--api-versions", api]
        return cmd

    def render(
        self,
        values: dict[str, Any] | None = None,
        *,
        api_versions: tuple[str, ...] = (),
        namespace: str = "goodput-system",
    ) -> Rendered:
        stdin = json.dumps(values or {})
        template = [*self._args("template", namespace, api_versions), "--include-crds"]
        docs = [d for d in yaml.safe_load_all(self._run(template, stdin)) if d]
        if api_versions:
            return Rendered(docs=docs, notes=None)
        # NOTES.txt is rendered only by install/upgrade; a client-side dry run shows it offline.
        dry_run = [*self._args("install", namespace, ()), "--dry-run=client"]
        out = self._run(dry_run, stdin)
        notes = out.split("NOTES:", 1)[1] if "NOTES:" in out else ""
        return Rendered(docs=docs, notes=notes)

    def _run(self, cmd: list[str], stdin: str) -> str:
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RenderError(proc.stderr.strip())
        return proc.stdout
