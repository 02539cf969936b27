"""Text of incident events (agent_webhook.incidents) for the chat-like sinks.

`new` is the incident's one top-level post (the first finding's full text and what the incident
is); `joined`, `resolved`, `acked`, `unacked` and `acted` (a scale decision made after the
cooldown deferred it) are short updates meant for its thread. A
finding without an incident (stored before incidents existed) gets the old per-finding text.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agent_webhook.sinks.render import action_text, finding_link, full_text, headline


def _where(incident: dict[str, Any]) -> str:
    return f"node {incident['node']}" if incident.get("node") else str(incident.get("key", ""))


def incident_line(incident: dict[str, Any]) -> str:
    alerts = incident.get("alerts") or []
    firing = int(incident.get("firing") or 0)
    if incident.get("status") == "resolved":
        state = f"resolved: all {len(alerts)} alert(s) resolved"
    else:
        state = f"{firing} of {len(alerts)} alert(s) firing"
    names = ", ".join(incident.get("alertnames") or [])
    return f"Incident {incident['id']} on {_where(incident)}: {state} ({names})."


def incident_summary(incident: dict[str, Any], public_url: str | None) -> str:
    """The whole incident in a few lines (a Grafana annotation's text, updated as it changes)."""
    lines = [incident_line(incident)]
    for alert in (incident.get("alerts") or [])[:20]:
        gpu = f" GPU {alert['gpu']}" if alert.get("gpu") else ""
        ack = f" (acknowledged by {alert['acknowledged_by']})" if alert.get("acknowledged_by") else ""
        lines.append(f"- {alert.get('status')} {alert.get('alertname')}{gpu}: {alert.get('summary') or ''}{ack}")
    if len(incident.get("alerts") or []) > 20:
        lines.append(f"- ... {len(incident['alerts']) - 20} more")
    if public_url:
        lines.append(f"{public_url}/incidents/{incident['id']}")
    return "\n".join(lines)


def _same(text: str) -> str:
    return text


def event_text(
    event: str, finding: dict[str, Any], public_url: str | None, escape: Callable[[str], str] = _same
) -> str:
    """`escape` (Slack's) goes over every piece of alert, model or operator text."""
    incident = finding.get("incident")
    if not isinstance(incident, dict):
        return full_text("resolved" if event == "resolved" else "new", finding, public_url, escape)
    raw_detail = finding.get("event_detail")
    detail: dict[str, Any] = raw_detail if isinstance(raw_detail, dict) else {}
    link = finding_link(finding, public_url)
    tail = [link] if link else []
    if event == "new":
        return "\n".join(
            [
                full_text("new", finding, public_url, escape),
                "",
                escape(incident_line(incident)) + " Updates follow in this thread.",
            ]
        )
    if event == "joined":
        if finding.get("derived_from"):
            lines = [
                f"+ {headline('new', finding, escape)}",
                f"Same kind as {finding['derived_from']}: same diagnosis, not investigated again.",
            ]
        else:  # a new kind of alert: its own diagnosis
            lines = ["+ New kind of alert in this incident:", full_text("new", finding, public_url, escape)]
            tail = []
        return "\n".join([*lines, escape(incident_line(incident)), *tail])
    if event == "resolved":
        return "\n".join(
            [
                headline("resolved", finding, escape),
                f"Resolved at {finding.get('resolved_at')} (finding {finding.get('id')}).",
                escape(incident_line(incident)),
                *tail,
            ]
        )
    if event == "acked":
        silences = ", ".join(str(s) for s in detail.get("silences") or [])
        return "\n".join(
            [
                escape(f"Acknowledged by {detail.get('by')} until {detail.get('until')}: {detail.get('comment')}"),
                f"Alertmanager silence(s) {silences} for {len(detail.get('findings') or [])} alert(s).",
                escape(incident_line(incident)),
            ]
        )
    if event == "unacked":
        by = f" by {detail['by']}" if detail.get("by") else ""
        silences = ", ".join(str(s) for s in detail.get("silences") or [])
        return "\n".join(
            [
                escape(
                    f"Acknowledgement of {detail.get('acknowledged_by')} withdrawn{by}: silence(s) {silences} expired."
                ),
                escape(incident_line(incident)),
            ]
        )
    if event == "acted":
        what = action_text(detail.get("action")) or "Action: (no detail)"
        return "\n".join([escape(f"{what} (decided after the cooldown)"), escape(incident_line(incident)), *tail])
    return full_text(event, finding, public_url, escape)
