"""A generic JSON webhook: `{"event": "new"|"resolved", "finding": {...}}`, optional bearer token."""

from __future__ import annotations

from typing import Any

import aiohttp

from agent_webhook.config import SinkConfig
from agent_webhook.sinks import post_json


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
            {"event": event, "finding": finding},
            token=self.config.token,
            timeout=self.config.timeout_seconds,
        )
        return ref
