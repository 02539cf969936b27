"""The one place the service gets its :class:`Investigator` from.

The investigation (`agent_webhook.investigation`: evidence tools, runbook triage, LLM loop) is
built separately; until it is installed, a minimal deterministic investigator answers with what
the alert itself says and, when a Prometheus URL is configured, the current value of the
alert's own expression. The integrator removes that fallback once both halves are merged.
"""

from __future__ import annotations

import importlib
import logging
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp

from agent_webhook.config import AgentConfig, ConfigError, investigation_mapping
from agent_webhook.degraded import basic_diagnosis
from agent_webhook.metrics import AgentMetrics
from agent_webhook.model import Alert, Diagnosis, Evidence, Investigator
from agent_webhook.store import Store
from exporters.common.logs import redact

if TYPE_CHECKING:
    from agent_webhook.actions import ActionEngine

log = logging.getLogger(__name__)
_EXCERPT_CHARS = 2000


ProgressCallback = Callable[[str, dict[str, Any], bool, float], None]


def make_investigator(config: AgentConfig, on_event: ProgressCallback | None = None) -> Investigator:
    """The configured investigator; ConfigError if the investigation rejects its settings.

    `on_event(tool, arguments, ok, seconds)` is called per evidence tool call (CLI progress).
    """
    try:
        investigation: Any = importlib.import_module("agent_webhook.investigation")
    except ImportError as exc:
        if exc.name is None or not exc.name.startswith("agent_webhook.investigation"):
            raise  # the package exists but is broken: say so instead of silently degrading
        log.warning("agent_webhook.investigation is not installed: using the minimal fallback investigator")
        return FallbackInvestigator(config.prometheus_url)
    try:
        inv_config = investigation.InvestigationConfig.from_mapping(investigation_mapping(config))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"investigation settings: {exc}") from None
    if on_event is not None:
        with_progress: Investigator = investigation.build_investigator(inv_config, on_event=on_event)
        return with_progress
    built: Investigator = investigation.build_investigator(inv_config)
    return built


def make_action_engine(config: AgentConfig, store: Store, metrics: AgentMetrics) -> ActionEngine:
    """The scale-action engine; with actions disabled it only records "disabled" refusals."""
    from agent_webhook.actions import ActionEngine

    return ActionEngine(config.actions, store, metrics)


def alert_expression(alert: Alert) -> str | None:
    """The rule's PromQL, which Prometheus puts in generatorURL as g0.expr."""
    try:
        query = urllib.parse.urlparse(alert.generator_url).query
    except ValueError:
        return None
    values = urllib.parse.parse_qs(query).get("g0.expr")
    return values[0] if values else None


class FallbackInvestigator:
    """No knowledge base, no LLM: the alert's own words and its expression's current value."""

    def __init__(self, prometheus_url: str | None, timeout_seconds: float = 30.0) -> None:
        self.prometheus_url = prometheus_url
        self.timeout = aiohttp.ClientTimeout(total=timeout_seconds)

    async def investigate(self, alert: Alert) -> Diagnosis:
        started = time.monotonic()
        diagnosis = basic_diagnosis(alert, "the investigation package is not installed")
        expr = alert_expression(alert)
        if self.prometheus_url and expr:
            diagnosis.evidence.append(await self._query(expr))
        diagnosis.timings["total_seconds"] = time.monotonic() - started
        return diagnosis

    async def ask(self, question: str) -> Diagnosis:
        return Diagnosis(
            severity="info",
            summary="No triage available",
            likely_cause="unknown",
            diagnosis_markdown="No triage available: the investigation package is not installed.",
            recommended_actions=[],
            degraded=["the investigation package is not installed"],
        )

    async def _query(self, expr: str) -> Evidence:
        started = time.monotonic()
        args: dict[str, Any] = {"query": expr}
        try:
            async with (
                aiohttp.ClientSession(timeout=self.timeout) as session,
                session.get(f"{self.prometheus_url}/api/v1/query", params=args) as resp,
            ):
                text = await resp.text()
                ok = resp.status == 200
        except (aiohttp.ClientError, TimeoutError) as exc:
            text, ok = f"prometheus unreachable: {type(exc).__name__}", False
        return Evidence(
            tool="prometheus_query",
            arguments=args,
            excerpt=redact(text[:_EXCERPT_CHARS]),
            ok=ok,
            duration_seconds=time.monotonic() - started,
        )
