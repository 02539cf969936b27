"""Where findings go: Slack-compatible webhooks, generic JSON webhooks, Grafana annotations, stdout.

A sink posts one event of one finding (`new`, or `resolved` later) and returns an optional
reference (a Slack message ts, a Grafana annotation id) that the store keeps for the finding's
later events. A sink raises :class:`SinkError` on failure; the delivery loop retries with
backoff (:mod:`agent_webhook.delivery`). Everything posted is redacted first.
"""

from __future__ import annotations

from typing import Any, Protocol

import aiohttp

from agent_webhook.config import SinkConfig
from gpu_watchdog_core.logs import redact, redact_value, strip_userinfo

# 4xx answers that may succeed when retried: a timeout, "too early", rate limiting.
TRANSIENT_4XX = frozenset({408, 425, 429})


class SinkError(RuntimeError):
    """A post failed; the message (redacted before it is stored or logged) says how.

    `permanent` failures (a 4xx other than TRANSIENT_4XX: the request itself is refused) are not
    retried: the delivery loop dead-letters them with `reason` (a short, bounded label).
    """

    def __init__(self, message: str, *, permanent: bool = False, reason: str = "") -> None:
        super().__init__(message)
        self.permanent = permanent
        self.reason = reason


def status_error(message: str, status: int) -> SinkError:
    permanent = 400 <= status < 500 and status not in TRANSIENT_4XX
    return SinkError(message, permanent=permanent, reason=f"http_{status}")


class Sink(Protocol):
    name: str

    async def post(self, event: str, finding: dict[str, Any], ref: str | None) -> str | None: ...


def redacted(payload: dict[str, Any]) -> dict[str, Any]:
    cleaned = redact_value("payload", payload)
    assert isinstance(cleaned, dict)
    return cleaned


async def post_json(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    payload: dict[str, Any],
    *,
    token: str | None,
    timeout: float,  # noqa: ASYNC109 - a per-sink setting passed to aiohttp
) -> tuple[int, str]:
    """(status, body text) of a JSON request; SinkError on transport errors and non-2xx answers."""
    headers = {"Content-Type": "application/json", "User-Agent": "gpu-watchdog-agent"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        async with session.request(
            method, url, json=redacted(payload), headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        ) as resp:
            text = (await resp.text(errors="replace"))[:2000]
            if resp.status // 100 != 2:
                raise status_error(
                    f"{method} {strip_userinfo(url)} answered {resp.status}: {redact(text[:300])}", resp.status
                )
            return resp.status, text
    except (aiohttp.ClientError, TimeoutError) as exc:
        # aiohttp's messages repeat the URL, credentials included: shown nowhere.
        shown = strip_userinfo(redact(str(exc)))
        raise SinkError(f"{method} {strip_userinfo(url)} failed: {type(exc).__name__}: {shown}") from None


def build_sinks(configs: list[SinkConfig], session: aiohttp.ClientSession, public_url: str | None) -> list[Sink]:
    from agent_webhook.sinks.grafana import GrafanaSink
    from agent_webhook.sinks.slack import SlackSink
    from agent_webhook.sinks.stdout import StdoutSink
    from agent_webhook.sinks.webhook import WebhookSink

    sinks: list[Sink] = []
    for config in configs:
        if config.type == "slack":
            sinks.append(SlackSink(config, session, public_url))
        elif config.type == "webhook":
            sinks.append(WebhookSink(config, session))
        elif config.type == "grafana":
            sinks.append(GrafanaSink(config, session, public_url))
        else:
            sinks.append(StdoutSink(config.name))
    return sinks
