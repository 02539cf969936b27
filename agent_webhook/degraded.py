"""A finding built from the alert alone, for when no investigation could produce one.

Used when an investigation times out, raises, or was interrupted by crashes too many times: the
operator still gets a finding (marked degraded, with the reason), never silence.
"""

from __future__ import annotations

from agent_webhook.model import Alert, Diagnosis, Severity

_SEVERITIES: tuple[Severity, ...] = ("critical", "warning", "info")


def alert_severity(alert: Alert) -> Severity:
    value = alert.labels.get("severity", "").lower()
    for severity in _SEVERITIES:
        if value == severity:
            return severity
    return "warning"


def alert_summary(alert: Alert) -> str:
    summary = alert.annotations.get("summary", "").strip().splitlines()
    if summary:
        return summary[0][:300]
    where = " ".join(
        p for p in (f"on {alert.node}" if alert.node else "", f"GPU {alert.gpu}" if alert.gpu else "") if p
    )
    return f"{alert.alertname or 'alert'} {where}".strip()


def basic_diagnosis(alert: Alert, reason: str) -> Diagnosis:
    """What the alert itself says, plus why nothing more is known."""
    description = alert.annotations.get("description", "").strip()
    runbook = alert.annotations.get("runbook_url", "").strip()
    actions = [f"Follow the runbook: {runbook}"] if runbook else ["Check the alert's expression in Prometheus."]
    lines = [
        f"**Severity:** {alert_severity(alert)} (from the alert's labels)",
        "**Likely cause:** unknown",
        "",
        f"No triage available: {reason}.",
    ]
    if description:
        lines += ["", "Alert description (as sent, unverified):", "", "> " + description.replace("\n", "\n> ")]
    lines += ["", "**Recommended actions** (suggestions; nothing is executed):", *[f"- {a}" for a in actions]]
    return Diagnosis(
        severity=alert_severity(alert),
        summary=alert_summary(alert),
        likely_cause="unknown (no triage available)",
        diagnosis_markdown="\n".join(lines),
        recommended_actions=actions,
        degraded=[reason],
    )
