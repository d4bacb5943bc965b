"""Debian's Prometheus package in tests: promtool, and a real Prometheus on loopback."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from .operator_process import free_port


def _debian_prometheus_tool(name: str) -> str:
    """A binary of Debian's ``prometheus`` package (installed by .ci/run); skip clearly without."""
    found = shutil.which(name)
    if found is None:
        pytest.skip(
            f"{name} not found: install Debian's `prometheus` package "
            "(apt-get install -y prometheus; .ci/run does this)"
        )
    return found


def promtool() -> str:
    return _debian_prometheus_tool("promtool")


def prometheus_binary() -> str:
    return _debian_prometheus_tool("prometheus")


class PrometheusServer:
    """Scrapes the given jobs every second and evaluates the given rule groups every second."""

    def __init__(self, workdir: Path, jobs: dict[str, list[str]], rules: dict[str, Any]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        for group in rules["groups"]:
            group["interval"] = "1s"  # the shipped 30s would make a short test wait for minutes
        (workdir / "rules.yaml").write_text(yaml.safe_dump(rules))
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(workdir / "rules.yaml")],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": targets}]}
                for job, targets in jobs.items()
            ],
        }
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> None:
        argv = [
            prometheus_binary(),
            f"--config.file={self.workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--storage.tsdb.retention.time=1d",
        ]
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prometheus exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).is_success:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"prometheus not ready:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def api(self, path: str, **params: Any) -> Any:
        """GET /api/v1/<path>; raises with Prometheus' own error message on failure."""
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=30)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        if body.get("warnings"):
            raise AssertionError(f"{path} {params}: warnings {body['warnings']}")
        return body["data"]

    def targets_up(self) -> dict[str, bool]:
        active = self.api("targets")["activeTargets"]
        return {t["scrapePool"]: t["health"] == "up" for t in active}
