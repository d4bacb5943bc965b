"""The chart's Grafana dashboards as data: their panels' queries, with Grafana's variables bound."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .helm_chart import CHART

DASHBOARDS = sorted((CHART / "dashboards").glob("*.json"))

# What Grafana substitutes before a query reaches Prometheus; "All" of a multi-value variable is
# its allValue (".*"), which the panels match with =~.
DEFAULT_BINDINGS = {
    "$__rate_interval": "1m",
    "$__interval": "15s",
    "$__range": "1h",
    "$deployment": ".*",
    "$priority": ".*",
    "$gpu_product": ".*",
    "$router": ".*",
}


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    expr: str

    def bound(self, bindings: dict[str, str] | None = None) -> str:
        """The query as Grafana would send it, with every variable replaced."""
        values = {**DEFAULT_BINDINGS, **(bindings or {})}
        # Longest names first so that $__rate_interval is not read as $__rate followed by text.
        pattern = "|".join(re.escape(k) for k in sorted(values, key=len, reverse=True))
        expr = re.sub(pattern, lambda m: values[m.group()], self.expr)
        assert "$" not in expr, f"unbound variable in {self}: {expr}"
        return expr


def load(path: Path) -> dict[str, Any]:
    board: dict[str, Any] = json.loads(path.read_text())
    return board


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def queries() -> list[PanelQuery]:
    found = []
    for path in DASHBOARDS:
        board = load(path)
        for panel in panels(board):
            for target in panel["targets"]:
                found.append(PanelQuery(path.name, panel["title"], target["refId"], target["expr"]))
    return found


def variable_metrics() -> dict[str, str]:
    """Template variables' `label_values(metric, label)` queries: variable name -> metric."""
    found = {}
    for path in DASHBOARDS:
        for var in load(path)["templating"]["list"]:
            if var["type"] == "query":
                m = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", var["query"]["query"])
                assert m, f"{path.name}: unexpected variable query {var['query']}"
                found[f"{path.name}:{var['name']}"] = m.group(1)
    return found
