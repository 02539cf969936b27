"""Human-readable text of a finding, shared by the chat-like sinks."""

from __future__ import annotations

from typing import Any

_MAX_DIAGNOSIS = 2500


def headline(event: str, finding: dict[str, Any]) -> str:
    state = "RESOLVED" if event == "resolved" or finding.get("status") == "resolved" else "FIRING"
    where = " ".join(
        p
        for p in (
            f"on {finding['node']}" if finding.get("node") else "",
            f"GPU {finding['gpu']}" if finding.get("gpu") else "",
        )
        if p
    )
    parts = [f"[{state}]", finding.get("severity"), finding.get("alertname"), where]
    return " ".join(str(p) for p in parts if p) + f": {finding.get('summary', '')}"


def action_text(action: Any) -> str:
    """One line for a finding's scale decision: `action scale_up: taken (...)`; "" without one."""
    if not isinstance(action, dict):
        return ""
    outcome = str(action.get("outcome", ""))
    reason = f" [{action['reason']}]" if action.get("reason") else ""
    return f"Action {action.get('action', '?')}: {outcome}{reason}: {action.get('detail', '')}"


def finding_link(finding: dict[str, Any], public_url: str | None) -> str | None:
    return f"{public_url}/findings/{finding['id']}" if public_url else None


def full_text(event: str, finding: dict[str, Any], public_url: str | None) -> str:
    lines = [headline(event, finding)]
    if event == "resolved":
        lines.append(f"Resolved at {finding.get('resolved_at')} (finding {finding['id']}).")
    else:
        diagnosis = str(finding.get("diagnosis") or "")
        if diagnosis:  # the investigation's markdown carries cause, severity and actions itself
            lines += ["", diagnosis[:_MAX_DIAGNOSIS] + ("…" if len(diagnosis) > _MAX_DIAGNOSIS else "")]
        else:
            if finding.get("likely_cause"):
                lines.append(f"Likely cause: {finding['likely_cause']}")
            actions = finding.get("recommended_actions") or []
            if actions:
                lines.append("Recommended actions (suggestions, nothing was executed):")
                lines += [f"• {a}" for a in actions]
        llm = finding.get("llm") or {}
        lines.append(
            f"_Diagnosis by {'LLM ' + str(llm.get('model')) if llm.get('used') else 'runbook triage (no LLM)'}_"
        )
        if finding.get("degraded"):
            lines.append("_Degraded: " + "; ".join(finding["degraded"]) + "_")
        if finding.get("action"):
            lines.append(action_text(finding["action"]))
    link = finding_link(finding, public_url)
    if link:
        lines.append(link)
    return "\n".join(lines)
