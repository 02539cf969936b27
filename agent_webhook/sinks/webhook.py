"""A generic JSON webhook, optional bearer token.

`{"event": ..., "incident_id": ..., "finding": {...}, "incident": {...}, "detail": {...}}`: `event`
is `new` (an incident's first finding), `joined`, `resolved`, `acked`, `unacked` or `acted`;
`incident` is the incident with its alerts at delivery time; `detail` the acknowledgement, for
acks, and `{"action": decision}` for `acted` (a scale decision the cooldown had deferred).
"""

from __future__ import annotations

from typing import Any

import aiohttp

from agent_webhook.config import SinkConfig
from agent_webhook.sinks import post_json


def webhook_payload(event: str, finding: dict[str, Any]) -> dict[str, Any]:
    plain = {k: v for k, v in finding.items() if k not in ("incident", "event_detail")}
    payload: dict[str, Any] = {"event": event, "incident_id": finding.get("incident_id"), "finding": plain}
    if finding.get("incident") is not None:
        payload["incident"] = finding["incident"]
    if finding.get("event_detail") is not None:
        payload["detail"] = finding["event_detail"]
    return payload


class WebhookSink:
    def __init__(self, config: SinkConfig, session: aiohttp.ClientSession) -> None:
        self.name = config.name
        self.config = config
        self.session = session

    async def post(self, event: str, finding: dict[str, Any], ref: str | None) -> str | None:
        assert self.config.url
        await post_json(
            self.session,
            "POST",
            self.config.url,
            webhook_payload(event, finding),
            token=self.config.token,
            timeout=self.config.timeout_seconds,
        )
        return ref
