from __future__ import annotations

from .promql_names import metric_names


def test_selectors_functions_and_label_lists() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (deployment, le) "
        '(rate(goodput_request_ttft_seconds_bucket{deployment=~"$deployment",x="a{b}"}[$__rate_interval])))'
    )
    assert metric_names(expr) == {"goodput_request_ttft_seconds_bucket"}


def test_binary_operators_matching_and_recording_rule_names() -> None:
    expr = (
        "deployment_model:goodput_slo_errors:ratio_rate1h / on() group_left() "
        '(1 - goodput:slo_objective:ratio) > bool 14.4 and absent(up{job="x"} == 1) '
        "or vector(0.99) unless sum without (pod) (goodput_queue_depth offset 5m)"
    )
    assert metric_names(expr) == {
        "deployment_model:goodput_slo_errors:ratio_rate1h",
        "goodput:slo_objective:ratio",
        "up",
        "goodput_queue_depth",
    }
