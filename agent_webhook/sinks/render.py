"""Human-readable text of a finding, shared by the chat-like sinks.

Every piece of text that came from an alert or the model passes through `escape` (Slack's
`slack_escape`), the agent's own framing and links do not.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def slack_escape(text: str) -> str:
    """Slack's mrkdwn escaping: `<!channel>`, `<http://x|label>` and `<@U123>` become inert text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _same(text: str) -> str:
    return text


_MAX_DIAGNOSIS = 2500


def headline(event: str, finding: dict[str, Any], escape: Callable[[str], str] = _same) -> str:
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
    return escape(" ".join(str(p) for p in parts if p) + f": {finding.get('summary', '')}")


def action_text(action: Any) -> str:
    """One line for a finding's scale decision: `action scale_up: taken (...)`; "" without one."""
    if not isinstance(action, dict):
        return ""
    outcome = str(action.get("outcome", ""))
    reason = f" [{action['reason']}]" if action.get("reason") else ""
    return f"Action {action.get('action', '?')}: {outcome}{reason}: {action.get('detail', '')}"


def finding_link(finding: dict[str, Any], public_url: str | None) -> str | None:
    return f"{public_url}/findings/{finding['id']}" if public_url else None


def full_text(event: str, finding: dict[str, Any], public_url: str | None, escape: Callable[[str], str] = _same) -> str:
    lines = [headline(event, finding, escape)]
    if event == "resolved":
        lines.append(escape(f"Resolved at {finding.get('resolved_at')} (finding {finding['id']})."))
    else:
        diagnosis = str(finding.get("diagnosis") or "")
        if diagnosis:  # the investigation's markdown carries cause, severity and actions itself
            lines += ["", escape(diagnosis[:_MAX_DIAGNOSIS]) + ("…" if len(diagnosis) > _MAX_DIAGNOSIS else "")]
        else:
            if finding.get("likely_cause"):
                lines.append(f"Likely cause: {escape(str(finding['likely_cause']))}")
            actions = finding.get("recommended_actions") or []
            if actions:
                lines.append("Recommended actions (suggestions, nothing was executed):")
                lines += [f"• {escape(str(a))}" for a in actions]
        llm = finding.get("llm") or {}
        lines.append(
            f"_Diagnosis by {'LLM ' + escape(str(llm.get('model'))) if llm.get('used') else 'runbook triage (no LLM)'}_"
        )
        if finding.get("degraded"):
            lines.append("_Degraded: " + escape("; ".join(str(d) for d in finding["degraded"])) + "_")
        if finding.get("action"):
            lines.append(escape(action_text(finding["action"])))
    link = finding_link(finding, public_url)
    if link:
        lines.append(link)
    return "\n".join(lines)
