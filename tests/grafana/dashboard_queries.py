"""Read the committed dashboard JSON the way Grafana would: panels, their queries, variables, and
the substitution of template variables into PromQL."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DASHBOARD_DIR = Path(__file__).resolve().parents[2] / "grafana" / "dashboards"
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>[a-zA-Z_][a-zA-Z0-9_]*)\)$")
VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")
# Characters RE2 treats specially; Grafana escapes them in values it puts into `=~"..."`.
REGEX_SPECIAL = re.compile(r"([\\.+*?()|\[\]{}^$])")


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DASHBOARD_DIR.glob("*.json"))}


def all_panels(dashboard: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # panels inside collapsed rows


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    expr: str
    instant: bool

    @property
    def key(self) -> str:
        return f"{self.dashboard.removesuffix('.json')}:{self.panel}:{self.ref_id}"


def panel_queries() -> list[PanelQuery]:
    """Every PromQL expression Grafana would run: panel targets and Prometheus annotations."""
    found: list[PanelQuery] = []
    for name, dashboard in dashboards().items():
        for panel in all_panels(dashboard):
            for target in panel.get("targets", []):
                found.append(
                    PanelQuery(name, panel["title"], target["refId"], target["expr"], bool(target.get("instant")))
                )
        for annotation in dashboard["annotations"]["list"]:
            if annotation.get("expr"):
                found.append(PanelQuery(name, f"annotation {annotation['name']}", "-", annotation["expr"], False))
    return found


@dataclass(frozen=True)
class Variable:
    name: str
    selector: str
    label: str
    multi: bool
    include_all: bool


def query_variables(dashboard: Mapping[str, Any]) -> list[Variable]:
    variables = []
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        match = LABEL_VALUES.match(var["query"])
        assert match, f"{var['name']}: not a label_values() query: {var['query']}"
        variables.append(
            Variable(var["name"], match["selector"], match["label"], var.get("multi", False), var["includeAll"])
        )
    return variables


def regex_value(value: str) -> str:
    """A label value as Grafana puts it inside a PromQL regex string (escaped for RE2, then for PromQL)."""
    return REGEX_SPECIAL.sub(r"\\\\\1", value)


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace $var / ${var}; every variable in the expression must be known."""

    def replace(match: re.Match[str]) -> str:
        name = match[1] or match[2]
        if name not in values:
            raise KeyError(f"unknown variable ${name} in {expr}")
        return values[name]

    return VARIABLE.sub(replace, expr)
