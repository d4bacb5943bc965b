"""Every dashboard panel and every rule, evaluated by a real Prometheus on real metrics.

A real gateway (`goodput serve`, a process) fronts the real vLLM CPU engine; the operator runs
against the local control plane with the example LLMDeployment; Debian's Prometheus scrapes both
every second and evaluates the chart's rules every second. After a little load, each panel query
(with Grafana's variables bound as "All") must evaluate without error and return at least one
finite sample, each dashboard variable must list values, and each rule must be healthy.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self

import httpx
import pytest
import yaml

from goodput.dev.stack import apply_crds

from .dashboards import queries, variable_metrics
from .helm_chart import CHART, REPO
from .operator_process import LocalOperator, free_port
from .prometheus_server import PrometheusServer
from .test_install_e2e import wait_for

pytestmark = [
    pytest.mark.prometheus,
    pytest.mark.engine,
    pytest.mark.e2e,
    pytest.mark.timeout(1200),
]

DEPLOYMENT = "chat-live"
NAMESPACE = "llm-prometheus-live"
EXAMPLE = REPO / "examples" / "llmdeployment.yaml"


class ServedProcess:
    """A `python -m goodput ...` server on a loopback port, ready once `/readyz` answers."""

    what = "server"

    def __init__(self, model: str, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.model = model
        self.log = log
        self.argv: list[str] = []
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Self:
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.what} exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).is_success:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{self.what} not ready:\n{self.log.read_text()[-3000:]}")

    def __exit__(self, *_: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()


class GatewayProcess(ServedProcess):
    """`python -m goodput serve` in front of the engine."""

    what = "gateway"

    def __init__(self, engine_url: str, model: str, log: Path) -> None:
        super().__init__(model, log)
        # A lenient SLO: the CPU engine must meet it for most requests so that met_slo exists.
        # A concurrency cap, as a deployment may set: the batch-limit series is then defined
        # even while the learned limit is not (vLLM may deliver a whole stream at once, which
        # teaches the step-time monitor nothing).
        self.argv = [
            sys.executable, "-m", "goodput", "serve", "--engine-url", engine_url,
            "--host", "127.0.0.1", "--port", str(self.port), "--deployment", DEPLOYMENT,
            "--served-model-name", model, "--ttft-ms", "5000", "--tpot-ms", "1000",
            "--max-concurrency", "32",
        ]  # fmt: skip


class RouterProcess(ServedProcess):
    """`python -m goodput route` in front of the gateway: the load goes through it, so the
    router's panels have data too."""

    what = "router"

    def __init__(self, gateway: GatewayProcess, log: Path) -> None:
        super().__init__(gateway.model, log)
        self.argv = [
            sys.executable, "-m", "goodput", "route", "--endpoint", gateway.url,
            "--port", str(self.port), "--name", "live",
        ]  # fmt: skip


def drive_load(
    gateway: GatewayProcess | RouterProcess, requests: int = 48, concurrency: int = 4
) -> None:
    """Completions of varied lengths, streamed and not, plus a few invalid requests (rejected:
    reason=invalid)."""

    def one(i: int) -> int:
        prompt = f"Tell me about the number {i}. " * (1 + i % 5)
        body: dict[str, Any] = {"model": gateway.model, "max_tokens": 8 + (i * 7) % 40}
        # The gateway measures TTFT and TPOT on streamed answers only: stream most of them.
        body["stream"] = i % 4 != 0
        if i % 2:  # both OpenAI endpoints the gateway serves
            body["messages"] = [{"role": "user", "content": prompt}]
            path = "/v1/chat/completions"
        else:
            body["prompt"] = prompt
            path = "/v1/completions"
        return httpx.post(f"{gateway.url}{path}", json=body, timeout=120).status_code

    with ThreadPoolExecutor(concurrency) as pool:
        statuses = list(pool.map(one, range(requests)))
    assert statuses.count(200) >= requests // 2, statuses
    for _ in range(3):
        bad = {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}
        status = httpx.post(f"{gateway.url}/v1/chat/completions", json=bad, timeout=30).status_code
        assert 400 <= status < 500, status


@pytest.fixture(scope="module")
def live_operator(
    cluster: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalOperator]:
    """The operator (standalone, admin credentials); the test applies the example once Prometheus
    scrapes, so that the reconciliations fall inside the observed window."""
    tmp = tmp_path_factory.mktemp("live-operator")
    args = [
        "operator", "run", "--all-namespaces", "--standalone",
        "--metrics-port=0", "--liveness-endpoint=http://127.0.0.1:0/healthz",
    ]  # fmt: skip
    operator = LocalOperator(args, cluster.kubeconfig, tmp / "operator.log")
    crd = REPO / "crds" / "llmdeployment.yaml"
    apply_crds(cluster, [crd])
    cluster.kubectl("create", "namespace", NAMESPACE, check=False)
    operator.start()
    try:
        yield operator
    finally:
        cluster.kubectl("delete", "-n", NAMESPACE, "-f", str(EXAMPLE), "--wait=false", check=False)
        operator.stop()
        cluster.kubectl("delete", "namespace", NAMESPACE, "--wait=false", check=False)


def has_finite_sample(result: list[dict[str, Any]]) -> bool:
    return any(
        not math.isnan(float(value)) and not math.isinf(float(value))
        for series in result
        for _, value in series.get("values", [series["value"]] if "value" in series else [])
    )


def example_available(cluster: Any) -> bool:
    name = yaml.safe_load(EXAMPLE.read_text())["metadata"]["name"]
    raw = cluster.kubectl("get", "llmd", name, "-n", NAMESPACE, "-o", "json", check=False)
    conditions = json.loads(raw).get("status", {}).get("conditions", []) if raw.strip() else []
    return any(c["type"] == "Available" and c["status"] == "True" for c in conditions)


def diagnose(cluster: Any, operator: LocalOperator) -> str:
    """Where the example's rollout stands: its status, its Deployments and pods, the
    namespace's recent events, and the operator's last lines."""
    sections = [
        cluster.kubectl("get", "llmd", "-n", NAMESPACE, "-o", "yaml", check=False),
        cluster.kubectl("get", "deployments,pods", "-n", NAMESPACE, "-o", "wide", check=False),
        cluster.kubectl("get", "events", "-n", NAMESPACE, "--sort-by=.lastTimestamp", check=False),
        operator.tail(),
    ]
    return "\n".join(sections)


def test_every_panel_and_rule_evaluates_on_live_metrics(
    cluster: Any, vllm_engine: Any, live_operator: LocalOperator, tmp_path: Path
) -> None:
    rules = yaml.safe_load((CHART / "rules" / "goodput.rules.yaml").read_text())
    with (
        GatewayProcess(vllm_engine.url, vllm_engine.model_name, tmp_path / "gateway.log") as gw,
        RouterProcess(gw, tmp_path / "router.log") as router,
    ):
        prometheus = PrometheusServer(
            tmp_path,
            {
                "goodput-gateway": [f"127.0.0.1:{gw.port}"],
                "goodput-operator": [f"127.0.0.1:{live_operator.metrics_port}"],
                "goodput-router": [f"127.0.0.1:{router.port}"],
            },
            rules,
        )
        prometheus.start()
        try:
            start = time.time()
            deadline = time.monotonic() + 30
            while not all(prometheus.targets_up().values()) or len(prometheus.targets_up()) < 3:
                assert time.monotonic() < deadline, prometheus.targets_up()
                time.sleep(0.5)
            cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(EXAMPLE))
            drive_load(router)  # through the router to the gateway
            # Generous: on a loaded two-core CI machine kwok and the controllers lag; when it
            # still fails, say where the rollout stands rather than only what the operator said.
            wait_for(
                "the example Available",
                lambda: example_available(cluster),
                timeout=300,
                diagnose=lambda: diagnose(cluster, live_operator),
            )
            time.sleep(5)  # a few more scrapes and rule evaluations after the last request
            end = time.time()

            problems: list[str] = []
            for q in queries():
                expr = q.bound({"$__rate_interval": "30s"})
                try:
                    data = prometheus.api(
                        "query_range", query=expr, start=start, end=end, step="1s"
                    )
                except AssertionError as error:
                    problems.append(f"{q.dashboard} / {q.panel} [{q.ref_id}]: {error}")
                    continue
                if not has_finite_sample(data["result"]):
                    problems.append(f"{q.dashboard} / {q.panel} [{q.ref_id}]: no data: {expr}")
            for variable, metric in variable_metrics().items():
                label = variable.split(":", 1)[1]
                values = prometheus.api(f"label/{label}/values", **{"match[]": metric})
                if not values:
                    problems.append(f"variable {variable}: no values of {label} on {metric}")

            groups = prometheus.api("rules")["groups"]
            loaded = {r["name"] for g in groups for r in g["rules"]}
            expected = {
                r.get("record") or r.get("alert") for g in rules["groups"] for r in g["rules"]
            }
            assert loaded == expected
            for group in groups:
                for rule in group["rules"]:
                    if rule["health"] != "ok" or rule.get("lastError"):
                        problems.append(
                            f"rule {rule['name']}: {rule['health']} {rule['lastError']}"
                        )
                    prometheus.api("query", query=rule["query"])  # raises on an evaluation error
            for record in (
                "deployment_model:goodput_slo_errors:ratio_rate5m",
                "goodput:slo_objective:ratio",
            ):
                if not has_finite_sample(prometheus.api("query", query=record)["result"]):
                    problems.append(f"recording rule {record} produced nothing")
            assert not problems, "\n".join(problems)
        finally:
            prometheus.stop()
