"""The eval set: GPU/Slurm incidents as data (alert, the series they produce, expected outcome).

Shared by the pytest (`test_evals.py`) and the scorer (`score.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agent_webhook.investigation.history import HistoryLookup, HistoryQuery
from agent_webhook.investigation.prometheus import RecordedPrometheus, parse_series_line
from agent_webhook.model import Alert, Diagnosis

INCIDENTS = Path(__file__).parent / "incidents"


@dataclass
class Incident:
    id: str
    name: str
    alert: Alert
    series: list[tuple[dict[str, str], list[float]]]
    expected: dict[str, Any]
    real_prometheus: bool
    # What the incident is: fault, healthy (a false alarm or nothing to fix) or confounder
    # (two faults, or a fault that looks like another).
    kind: str
    # "evidence": the alert's labels alone do not decide, the series do (checked by replaying
    # the incident without them); "labels" otherwise.
    decided_by: str
    history: list[dict[str, Any]]

    def recorded_source(self) -> RecordedPrometheus:
        return RecordedPrometheus(self.series)

    def history_lookup(self) -> HistoryLookup:
        """The agent's earlier findings, as the store answers: of the node, or of the GPU by UUID or
        serial. Not by time: the incidents happen on 2026-01-01, and the recurrence window is
        measured from the alert's start, not from now."""

        async def lookup(query: HistoryQuery) -> list[dict[str, Any]]:
            return [
                dict(f)
                for f in self.history
                if (query.node and f.get("node") == query.node)
                or (query.uuid and f.get("gpu_uuid") == query.uuid)
                or (query.serial and f.get("gpu_serial") == query.serial)
            ]

        return lookup


def load_incident(path: Path) -> Incident:
    raw = yaml.safe_load(path.read_text())
    alert_raw = raw["alert"]
    labels = {str(k): str(v) for k, v in alert_raw["labels"].items()}
    alert = Alert(
        fingerprint=f"eval-{path.stem}",
        status="firing",
        labels=labels,
        annotations={str(k): str(v) for k, v in (alert_raw.get("annotations") or {}).items()},
        starts_at="2026-01-01T00:00:00Z",
        ends_at=None,
        generator_url=alert_raw.get("generatorURL", ""),
    )
    series = [(parse_series_line(s["series"]), [float(v) for v in s["values"]]) for s in raw.get("series", [])]
    return Incident(
        id=path.stem,
        name=raw["name"],
        alert=alert,
        series=series,
        expected=raw["expected"],
        real_prometheus=bool(raw.get("real_prometheus", True)),
        kind=str(raw.get("kind", "fault")),
        decided_by=str(raw.get("decided_by", "labels")),
        history=list(raw.get("history") or []),
    )


def load_incidents() -> list[Incident]:
    return [load_incident(p) for p in sorted(INCIDENTS.glob("*.yml"))]


def check(incident: Incident, dx: Diagnosis) -> list[str]:
    """What the deterministic triage got wrong: severity, matched rule, cause and actions.

    Cause keywords must all appear in the likely cause; each action keyword must appear in at
    least one recommended action.
    """
    exp = incident.expected
    problems: list[str] = []
    if dx.severity != exp["severity"]:
        problems.append(f"severity {dx.severity} != {exp['severity']}")
    if exp.get("rule") and dx.triage_rule != exp["rule"]:
        problems.append(f"rule {dx.triage_rule} != {exp['rule']}")
    return problems + _keywords(exp, dx.likely_cause, dx.recommended_actions)


def check_llm(incident: Incident, dx: Diagnosis) -> list[str]:
    """What the model's own answer got wrong; the triage's text and actions never count.

    The finding a model produces is merged with the triage (its markdown below the model's,
    its actions when the model gives none): scoring that would credit the model with the
    triage's work, so a model answering "I don't know" would score full marks. Only
    `Diagnosis.llm_answer` is read: its severity must be the expected one, the cause keywords
    must appear in its summary, likely cause or markdown, each action keyword in one of its
    own actions.
    """
    if not dx.llm_used or dx.llm_answer is None:
        return ["LLM gave no answer: " + ("; ".join(dx.degraded) or "no LLM")]
    own = dx.llm_answer
    exp = incident.expected
    problems: list[str] = []
    if own.get("severity") != exp["severity"]:
        problems.append(f"severity {own.get('severity')} != {exp['severity']}")
    text = " ".join(str(own.get(k) or "") for k in ("summary", "likely_cause", "diagnosis_markdown"))
    actions = [str(a) for a in own.get("recommended_actions") or []]
    return problems + _keywords(exp, text, actions)


def _keywords(exp: dict[str, Any], cause: str, actions: list[str]) -> list[str]:
    problems: list[str] = []
    cause_text = cause.lower()
    for word in exp.get("cause", []):
        if word.lower() not in cause_text:
            problems.append(f"cause lacks {word!r}: {cause[:80]!r}")
    lowered = [a.lower() for a in actions]
    for word in exp.get("actions", []):
        if not any(word.lower() in a for a in lowered):
            problems.append(f"no action mentions {word!r}: {actions[:3]}")
    return problems
