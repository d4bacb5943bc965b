"""Alert rules and dashboards, checked offline: promtool, dashboard structure, metric names."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from .dashboards import DASHBOARDS, load, panels, queries, variable_metrics
from .helm_chart import CHART, PROMETHEUS_OPERATOR_APIS, ChartRenderer
from .prometheus_server import promtool
from .promql_names import metric_names

RULES = CHART / "rules" / "goodput.rules.yaml"
RULE_TESTS = CHART / "tests" / "goodput.rules_test.yaml"


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, timeout=300, check=False
    )


def rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_promtool_check_rules() -> None:
    proc = run_promtool("check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules())} rules found" in proc.stdout


def test_promtool_unit_tests_of_the_alerts() -> None:
    proc = run_promtool("test", "rules", str(RULE_TESTS))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tested = {
        t["alertname"]
        for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for t in case.get("alert_rule_test", [])
    }
    assert tested == {rule["alert"] for rule in rules() if "alert" in rule}, "an alert has no test"


def test_rendered_prometheus_rule_passes_promtool(chart: ChartRenderer, tmp_path: Path) -> None:
    r = chart.render(
        {"monitoring": {"rules": {"sloObjective": 0.995}}}, api_versions=PROMETHEUS_OPERATOR_APIS
    )
    rendered = tmp_path / "rendered.rules.yaml"
    rendered.write_text(yaml.safe_dump(r.one("PrometheusRule")["spec"]))
    proc = run_promtool("check", "rules", str(rendered))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_burn_rate_alerts_follow_the_sre_workbook() -> None:
    by_name = {rule["alert"]: rule for rule in rules() if "alert" in rule}
    for alert, (factor, long, short) in {
        "GoodputSLOFastBurn": ("14.4", "1h", "5m"),
        "GoodputSLOSlowBurn": ("6", "6h", "30m"),
    }.items():
        expr = by_name[alert]["expr"]
        assert f"ratio_rate{long}" in expr and f"ratio_rate{short}" in expr
        assert expr.count(f"{factor} * (1 - scalar(goodput:slo_objective:ratio))") == 2
        assert re.search(r"\)\s*and\s*\(", expr), "both windows must exceed the threshold"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    """promtool parses every panel query, written as a recording rule."""
    group = {
        "name": "dashboard-queries",
        "rules": [{"record": f"q:{i}", "expr": q.bound()} for i, q in enumerate(queries())],
    }
    path = tmp_path / "queries.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [group]}))
    proc = run_promtool("check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dashboards_are_well_formed() -> None:
    assert len(DASHBOARDS) == 6
    uids = [load(p)["uid"] for p in DASHBOARDS]
    assert len(set(uids)) == len(uids)
    for path in DASHBOARDS:
        board = load(path)
        assert board["title"].startswith("Goodput / ")
        variables = {v["name"] for v in board["templating"]["list"]}
        assert "datasource" in variables
        ids = [p["id"] for p in board["panels"]]
        assert len(set(ids)) == len(ids), f"{path.name}: duplicate panel ids"
        for panel in panels(board):
            assert panel["datasource"]["uid"] == "${datasource}", (path.name, panel["title"])
            assert panel["targets"], (path.name, panel["title"])
            assert panel["description"], (path.name, panel["title"])
            for target in panel["targets"]:
                for var in ("$deployment", "$priority", "$gpu_product", "$router"):
                    if var in target["expr"]:
                        assert var[1:] in variables, (path.name, panel["title"], var)


def test_the_required_views_exist() -> None:
    titles = {load(p)["title"] for p in DASHBOARDS}
    assert titles == {
        "Goodput / SLO overview",
        "Goodput / Latency",
        "Goodput / Queue and admission",
        "Goodput / Predictor accuracy",
        "Goodput / Fleet placement",
        "Goodput / Router",
    }
    exprs = " ".join(q.expr for q in queries())
    for metric in (
        "goodput_request_ttft_seconds_bucket",
        "goodput_request_tpot_seconds_bucket",
        "goodput_request_e2e_seconds_bucket",
        "goodput_rejections_total",
        "goodput_slo_attainment_ratio",
        "goodput_predicted_output_tokens_sum",
        "goodput_output_tokens_sum",
        "goodput_operator_gpus_allocated",
        "goodput_operator_gpus_capacity",
        "goodput_router_decisions_total",
        "goodput_router_engine_prefix_cache_hits_tokens_total",
    ):
        assert metric in exprs, metric


def referenced_metrics() -> dict[str, set[str]]:
    """Every metric a dashboard panel, dashboard variable or rule reads -> where it is read."""
    where: dict[str, set[str]] = {}
    for q in queries():
        for name in metric_names(q.expr):
            where.setdefault(name, set()).add(f"{q.dashboard}: {q.panel}")
    for var, metric in variable_metrics().items():
        where.setdefault(metric, set()).add(var)
    for rule in rules():
        for name in metric_names(rule["expr"]):
            where.setdefault(name, set()).add(f"rule {rule.get('record') or rule.get('alert')}")
    return where


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def test_every_recording_rule_read_is_defined() -> None:
    read = {name for name in referenced_metrics() if ":" in name}
    assert read <= recorded_names()


def produced_metrics() -> set[str]:
    """Series names the gateway's and operator's metrics objects expose, from their registries."""
    from prometheus_client import CollectorRegistry

    from goodput.operator.metrics import OperatorMetrics
    from goodput.router.metrics import RouterMetrics
    from goodput.serving.metrics import GatewayMetrics, RollingAttainment

    gateway = CollectorRegistry()
    GatewayMetrics(
        gateway,
        deployment="d",
        model="m",
        queue_depth=lambda: 0.0,
        inflight=lambda: 0.0,
        attainment=RollingAttainment(),
    )
    routed = CollectorRegistry()
    RouterMetrics(routed, router="r", endpoints=list, queue_depth=lambda: 0.0)
    registries = [gateway, OperatorMetrics().registry, routed]
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_sum", "_count"),
        "gauge": ("",),
    }
    # Families with labels but no children yet have no samples: derive the series from the type.
    return {
        family.name + suffix
        for registry in registries
        for family in registry.collect()
        for suffix in suffixes[family.type]
    }


def family(series: str) -> str:
    for suffix in ("_bucket", "_sum", "_count", "_total"):
        if series.endswith(suffix):
            return series.removesuffix(suffix)
    return series


def test_every_metric_read_is_produced_by_the_code() -> None:
    produced = produced_metrics()
    read = referenced_metrics()
    unknown = {
        name: sorted(where)
        for name, where in read.items()
        if name not in produced and name not in recorded_names() and name != "up"
    }
    assert not unknown, f"dashboards/rules read metrics no component produces: {unknown}"
    # And the other way round: every produced metric is on some dashboard or in some rule.
    families = {family(n) for n in read}
    unseen = {n for n in produced if family(n) not in families}
    assert not unseen, f"metrics no dashboard shows: {sorted(unseen)}"
