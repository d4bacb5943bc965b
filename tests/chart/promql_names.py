"""Metric names a PromQL expression reads: a small lexer, enough for dashboards and rules.

Promtool has no "list the selectors" command and the Debian Prometheus (2.42) predates the
parse_query API, so the tests lex the queries themselves: an identifier is a metric name unless it
is a function (followed by "("), a keyword, a label name (inside {...} or a by/on/... list) or part
of a duration, string or Grafana variable.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(
    r"""
    (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<braces>\{[^}]*\})
    | (?P<brackets>\[[^\]]*\])
    | (?P<variable>\$\{?[A-Za-z_][A-Za-z0-9_]*\}?)
    | (?P<duration>\d+(?:ms|[smhdwy])(?:\d+(?:ms|[smhdwy]))*\b)
    | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
    | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
    | (?P<lparen>\()
    | (?P<rparen>\))
    | (?P<space>\s+)
    | (?P<other>.)
    """,
    re.VERBOSE,
)

_KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan", "atan2",
    # Aggregation operators may be followed by a by/without clause instead of "(".
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "topk", "bottomk", "quantile",
    "count_values", "group", "limitk", "limit_ratio",
}  # fmt: skip
_LABEL_LIST_OPENERS = {"by", "without", "on", "ignoring", "group_left", "group_right"}


def metric_names(expr: str) -> set[str]:
    """Names of the series selectors in ``expr``."""
    tokens = [
        (m.lastgroup, m.group())
        for m in _TOKEN.finditer(expr)
        if m.lastgroup not in ("space", "string")
    ]
    names: set[str] = set()
    in_label_list = False
    for i, (kind, text) in enumerate(tokens):
        previous = tokens[i - 1] if i else (None, "")
        following = tokens[i + 1] if i + 1 < len(tokens) else (None, "")
        if kind == "lparen" and previous[0] == "ident" and previous[1] in _LABEL_LIST_OPENERS:
            in_label_list = True
        elif kind == "rparen" and in_label_list:
            in_label_list = False
        elif kind == "ident" and not in_label_list:
            if text.lower() in _KEYWORDS or following[0] == "lparen":
                continue
            names.add(text)
    return names
