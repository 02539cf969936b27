"""Grafana annotations, so findings show on dashboards as regions from firing to resolved.

`POST /api/annotations` (tags `gpu-watchdog`, the alertname, the node, plus configured tags;
optionally pinned to a dashboard/panel) answers `{"id": N}`. One annotation per incident: later
events of the incident update its text with `PATCH /api/annotations/{id}`, and the last alert
resolving sets `timeEnd`, so the incident shows as a region. Authenticated with a service-account token (Bearer).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import aiohttp

from agent_webhook.config import SinkConfig
from agent_webhook.sinks import SinkError, post_json
from agent_webhook.sinks.incident_text import event_text, incident_summary
from agent_webhook.sinks.render import full_text


def _epoch_ms(iso_time: str | None) -> int | None:
    if not iso_time:
        return None
    return int(datetime.fromisoformat(iso_time).timestamp() * 1000)


class GrafanaSink:
    def __init__(self, config: SinkConfig, session: aiohttp.ClientSession, public_url: str | None) -> None:
        self.name = config.name
        self.config = config
        self.session = session
        self.public_url = public_url

    def tags(self, finding: dict[str, Any]) -> list[str]:
        tags = ["gpu-watchdog", str(finding.get("alertname") or "alert")]
        if finding.get("node"):
            tags.append(str(finding["node"]))
        return tags + [t for t in self.config.tags if t not in tags]

    def create_payload(self, event: str, finding: dict[str, Any]) -> dict[str, Any]:
        starts = _epoch_ms(finding.get("starts_at")) or _epoch_ms(finding.get("created_at"))
        payload: dict[str, Any] = {
            "time": starts,
            "tags": self.tags(finding),
            "text": event_text(event, finding, self.public_url),
        }
        incident = finding.get("incident")
        ends = _epoch_ms(
            (incident.get("resolved_at") if incident.get("status") == "resolved" else None)
            if isinstance(incident, dict)
            else finding.get("resolved_at")
        )
        if ends:
            payload["timeEnd"] = ends
        if self.config.dashboard_uid:
            payload["dashboardUID"] = self.config.dashboard_uid
        if self.config.panel_id is not None:
            payload["panelId"] = self.config.panel_id
        return payload

    async def post(self, event: str, finding: dict[str, Any], ref: str | None) -> str | None:
        assert self.config.url
        base = self.config.url
        incident = finding.get("incident")
        if isinstance(incident, dict) and event != "new" and ref:
            # One annotation per incident: its text follows the incident, and it becomes a
            # region (timeEnd) once every alert of it resolved.
            patch: dict[str, Any] | None = {
                "text": incident_summary(incident, self.public_url),
                "tags": self.tags(finding),
            }
            if incident.get("status") == "resolved" and patch is not None:
                patch["timeEnd"] = _epoch_ms(incident.get("resolved_at"))
                patch["tags"] = [*patch["tags"], "resolved"]
        elif event == "resolved" and ref:
            patch = {
                "timeEnd": _epoch_ms(finding.get("resolved_at")),
                "text": full_text(event, finding, self.public_url),
                "tags": [*self.tags(finding), "resolved"],
            }
        else:
            patch = None
        if patch is not None:
            await post_json(
                self.session,
                "PATCH",
                f"{base}/api/annotations/{ref}",
                patch,
                token=self.config.token,
                timeout=self.config.timeout_seconds,
            )
            return ref
        # A first post (or a resolve whose first post left no id): create, with timeEnd if resolved.
        _, text = await post_json(
            self.session,
            "POST",
            f"{base}/api/annotations",
            self.create_payload(event, finding),
            token=self.config.token,
            timeout=self.config.timeout_seconds,
        )
        try:
            annotation_id = json.loads(text).get("id")
        except (ValueError, AttributeError):
            raise SinkError(f"grafana answered without an annotation id: {text[:200]}") from None
        if annotation_id is None:
            raise SinkError(f"grafana answered without an annotation id: {text[:200]}")
        return str(annotation_id)
