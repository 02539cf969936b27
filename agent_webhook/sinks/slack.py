"""Slack-compatible posting, threaded per incident.

Incoming webhooks answer a bare `ok`; `chat.postMessage` (a bot token in `token_file` and a
`channel`) answers JSON with the message's `ts`. When a `ts` comes back it is kept, and the
resolve is posted into that thread (`thread_ts`, `reply_broadcast` off). Without one (plain
incoming webhooks cannot thread) the resolve is posted as an update message that names the
finding. Slack's API answers HTTP 200 with `{"ok": false}` on errors: that is a failure too.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from agent_webhook.config import SinkConfig
from agent_webhook.sinks import SinkError, post_json
from agent_webhook.sinks.incident_text import event_text
from agent_webhook.sinks.render import slack_escape

# Slack API errors worth retrying; every other `ok: false` (channel_not_found, invalid_auth,
# msg_too_long, ...) is the same on every try.
SLACK_TRANSIENT = frozenset(
    {"ratelimited", "rate_limited", "service_unavailable", "internal_error", "fatal_error", "request_timeout"}
)
# The errors named in the dead-letter metric's reason; others count as slack_error (bounded labels).
SLACK_PERMANENT_SHOWN = frozenset(
    {"channel_not_found", "not_in_channel", "invalid_auth", "token_revoked", "account_inactive", "msg_too_long"}
)


class SlackSink:
    def __init__(self, config: SinkConfig, session: aiohttp.ClientSession, public_url: str | None) -> None:
        self.name = config.name
        self.config = config
        self.session = session
        self.public_url = public_url

    def payload(self, event: str, finding: dict[str, Any], ref: str | None) -> dict[str, Any]:
        # Alert and model text is escaped: `<!channel>` must not page a channel, nor
        # `<http://x|runbook>` disguise a link. The finding link is the agent's own.
        payload: dict[str, Any] = {"text": event_text(event, finding, self.public_url, slack_escape)}
        if self.config.channel:
            payload["channel"] = self.config.channel
        if self.config.username:
            payload["username"] = self.config.username
        if event != "new" and ref:  # everything after an incident's first post goes into its thread
            payload["thread_ts"] = ref
        return payload

    async def post(self, event: str, finding: dict[str, Any], ref: str | None) -> str | None:
        assert self.config.url
        _, text = await post_json(
            self.session,
            "POST",
            self.config.url,
            self.payload(event, finding, ref),
            token=self.config.token,
            timeout=self.config.timeout_seconds,
        )
        try:
            answer = json.loads(text)
        except ValueError:
            return ref  # an incoming webhook's plain "ok"
        if isinstance(answer, dict):
            if answer.get("ok") is False:
                error = str(answer.get("error"))[:200]
                raise SinkError(
                    f"slack answered ok=false: {error}",
                    permanent=error not in SLACK_TRANSIENT,
                    reason="slack_" + (error if error in SLACK_PERMANENT_SHOWN else "error"),
                )
            ts = answer.get("ts")
            if event == "new" and isinstance(ts, str) and ts:
                return ts
        return ref
