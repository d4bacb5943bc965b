"""The operator's wiring without a cluster: handler registration, CLI, RBAC rules."""

from __future__ import annotations

import yaml
from click.testing import CliRunner

from goodput.cli import main
from goodput.operator.metrics import OperatorMetrics
from goodput.operator.permissions import RULES, cluster_role
from goodput.operator.runner import build_registry
from goodput.operator.settings import OperatorSettings, parse_toleration


def test_registry_has_the_handlers_for_llmdeployments_and_owned_deployments() -> None:
    registry = build_registry(OperatorSettings(), OperatorMetrics())
    changing = registry._changing.get_all_handlers()
    assert {h.id for h in changing} == {
        "reconcile-create",
        "reconcile-update",
        "reconcile-resume",
        "register.<locals>.deleted",
    }
    (resume,) = [h for h in changing if h.initial]
    assert resume.id == "reconcile-resume"
    assert all(h.selector.group == "goodput.dev" for h in changing)
    (delete,) = [h for h in changing if str(h.reason) == "delete"]
    assert delete.requires_finalizer is False, "deletion relies on garbage collection"
    assert registry._spawning.get_all_handlers() == [], "timers would need a finalizer"
    watched = {
        (h.selector.group, h.selector.any_name) for h in registry._watching.get_all_handlers()
    }
    assert watched == {("apps", "deployments"), ("", "nodes"), ("", "pods")}
    indexes = registry._indexing.get_all_handlers()
    assert {i.selector.any_name for i in indexes} == {"llmdeployments"}
    assert len(indexes) == 2  # waiting for GPUs; nodes each deployment runs on


def test_cli_prints_the_crd_and_rbac() -> None:
    runner = CliRunner()
    crd = yaml.safe_load(runner.invoke(main, ["operator", "crd"]).output)
    assert crd["metadata"]["name"] == "llmdeployments.goodput.dev"
    role = yaml.safe_load(runner.invoke(main, ["operator", "rbac"]).output)
    assert role == cluster_role()
    status_rule = next(r for r in RULES if "llmdeployments/status" in r.resources)
    assert "patch" in status_rule.verbs


def test_cli_rejects_contradictory_flags() -> None:
    result = CliRunner().invoke(main, ["operator", "run", "--standalone", "--peering", "x"])
    assert result.exit_code != 0 and "exclude each other" in result.output


def test_toleration_syntax() -> None:
    assert parse_toleration("a:NoSchedule") == {
        "key": "a",
        "effect": "NoSchedule",
        "operator": "Exists",
    }
    assert parse_toleration("a=b:NoExecute")["value"] == "b"
