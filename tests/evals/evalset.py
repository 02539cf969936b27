"""The eval set: GPU/Slurm incidents as data (alert, the series they produce, expected outcome).

Shared by the pytest (`test_evals.py`) and the scorer (`score.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

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

    def recorded_source(self) -> RecordedPrometheus:
        return RecordedPrometheus(self.series)


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
    )


def load_incidents() -> list[Incident]:
    return [load_incident(p) for p in sorted(INCIDENTS.glob("*.yml"))]


def check(incident: Incident, dx: Diagnosis, strict: bool = True) -> list[str]:
    """What the diagnosis got wrong; strict (triage) also checks severity and the matched rule.

    Cause keywords must all appear in the likely cause (for the LLM: in the summary, cause or
    diagnosis); each action keyword must appear in at least one recommended action.
    """
    exp = incident.expected
    problems: list[str] = []
    if strict:
        if dx.severity != exp["severity"]:
            problems.append(f"severity {dx.severity} != {exp['severity']}")
        if exp.get("rule") and dx.triage_rule != exp["rule"]:
            problems.append(f"rule {dx.triage_rule} != {exp['rule']}")
        cause_text = dx.likely_cause.lower()
    else:
        cause_text = " ".join([dx.summary, dx.likely_cause, dx.diagnosis_markdown]).lower()
    for word in exp.get("cause", []):
        if word.lower() not in cause_text:
            problems.append(f"cause lacks {word!r}: {dx.likely_cause!r}")
    actions = [a.lower() for a in dx.recommended_actions]
    for word in exp.get("actions", []):
        if not any(word.lower() in a for a in actions):
            problems.append(f"no action mentions {word!r}: {dx.recommended_actions}")
    return problems
