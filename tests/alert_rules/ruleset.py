"""The alert rule set as data: rule files, promtool test files and runbooks, parsed from YAML.

Shared by the coverage checks and the live tests so both read the repository the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = REPO_ROOT / "alert_rules"
RULE_TESTS_DIR = RULES_DIR / "tests"
RUNBOOKS_DIR = REPO_ROOT / "docs" / "runbooks"
ALERTMANAGER_CONFIG = RULES_DIR / "alertmanager.yml"
OVERVIEW_DOC = REPO_ROOT / "docs" / "alert-rules.md"

# runbook_url is this base plus "<AlertName>.md" (docs/alert-rules.md says how to change it).
RUNBOOK_BASE = "https://github.com/gpu-watchdog/gpu-watchdog/blob/main/docs/runbooks/"
SEVERITIES = {"critical", "warning", "info"}
COMPONENTS = {"gpu", "slurm", "cost"}
REQUIRED_ANNOTATIONS = ("summary", "description", "runbook_url")
RUNBOOK_SECTIONS = ("## Meaning", "## Confirm", "## Act", "## Escalate")
# The alerts the rules issue (#5) names; the rules define each and the agent's knowledge explains each.
ISSUE_ALERTS = frozenset(
    {
        "GPUFellOffBus",
        "GPUXidError",
        "GPUDoubleBitECC",
        "GPURowRemapFailure",
        "GPURowRemapPending",
        "GPUThermalThrottling",
        "GPUTemperatureHigh",
        "GPUIdleWhileAllocated",
        "GPUExporterDown",
        "SlurmControllerDown",
        "SlurmNodeDown",
        "SlurmNodeDrained",
        "SlurmNodeNotResponding",
        "SlurmGPUQueueBacklog",
        "SlurmSchedulerSlow",
        "SlurmExporterDown",
    }
)


@dataclass
class Rule:
    file: Path
    group: str
    body: dict[str, Any]

    @property
    def alert(self) -> str | None:
        return self.body.get("alert")

    @property
    def record(self) -> str | None:
        return self.body.get("record")

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.body.get("labels") or {})

    @property
    def annotations(self) -> dict[str, str]:
        return dict(self.body.get("annotations") or {})


@dataclass
class RuleTestIndex:
    """Per alert name: the test files/cases where it is expected to fire and to stay silent."""

    fires: dict[str, list[str]] = field(default_factory=dict)
    silent: dict[str, list[str]] = field(default_factory=dict)
    expr_tests: list[str] = field(default_factory=list)  # every promql_expr_test expression
    rule_files: set[Path] = field(default_factory=set)  # rule files some test file loads


def rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.rules.yml"))


def rule_test_files() -> list[Path]:
    return sorted(RULE_TESTS_DIR.glob("*.test.yml"))


def load_rules() -> list[Rule]:
    rules: list[Rule] = []
    for path in rule_files():
        doc = yaml.safe_load(path.read_text())
        for group in doc["groups"]:
            rules.extend(Rule(path, group["name"], body) for body in group["rules"])
    return rules


def alert_names() -> set[str]:
    return {r.alert for r in load_rules() if r.alert}


def load_coverage() -> RuleTestIndex:
    cov = RuleTestIndex()
    for path in rule_test_files():
        doc = yaml.safe_load(path.read_text())
        cov.rule_files.update((path.parent / f).resolve() for f in doc.get("rule_files", []))
        for case in doc.get("tests", []):
            where = f"{path.name}: {case.get('name', '?')}"
            for check in case.get("alert_rule_test") or []:
                target = cov.fires if check.get("exp_alerts") else cov.silent
                target.setdefault(check["alertname"], []).append(f"{where} @ {check['eval_time']}")
            cov.expr_tests.extend(t["expr"] for t in case.get("promql_expr_test") or [])
    return cov


def runbook_names() -> set[str]:
    return {p.stem for p in RUNBOOKS_DIR.glob("*.md")}
