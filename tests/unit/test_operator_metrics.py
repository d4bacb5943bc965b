import re
from pathlib import Path

import pytest

from goodput.operator.metrics import HANDLERS, OperatorMetrics

HANDLERS_SOURCE = Path(__file__).resolve().parents[2] / "operator" / "handlers.py"


def test_every_handler_series_exists_at_zero_before_the_first_reconcile() -> None:
    metrics = OperatorMetrics()
    for handler in HANDLERS:
        count = metrics.registry.get_sample_value(
            "goodput_operator_reconcile_duration_seconds_count", {"handler": handler}
        )
        assert count == 0.0, handler
        for result in ("success", "error"):
            total = metrics.registry.get_sample_value(
                "goodput_operator_reconciliations_total", {"handler": handler, "result": result}
            )
            assert total == 0.0, (handler, result)


def test_a_reconcile_counts_and_an_unknown_handler_is_refused() -> None:
    metrics = OperatorMetrics()
    with metrics.reconciling("workload_event"):
        pass
    assert (
        metrics.registry.get_sample_value(
            "goodput_operator_reconciliations_total",
            {"handler": "workload_event", "result": "success"},
        )
        == 1.0
    )
    with pytest.raises(ValueError, match="HANDLERS"), metrics.reconciling("made_up"):
        pass


def test_the_handlers_module_uses_only_declared_labels() -> None:
    source = HANDLERS_SOURCE.read_text()
    literal = set(re.findall(r'reconciling\("([a-z_]+)"\)', source))
    assert literal, "the handlers module no longer names its reconcile labels literally"
    assert literal <= set(HANDLERS)
    # The kopf-reason-derived labels: create, update, resume.
    assert 'reconciling(f"llmdeployment_{reason' in source
    assert {f"llmdeployment_{r}" for r in ("create", "update", "resume")} <= set(HANDLERS)
