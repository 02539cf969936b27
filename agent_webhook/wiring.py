"""Where the agent's parts are built from its configuration: the store, the investigator, the action engine.

The configuration (:mod:`agent_webhook.config`) is plain data and knows nothing of storage or
of the investigation's objects; the service and the CLIs get those from here. The investigation
(`agent_webhook.investigation`: evidence tools, runbook triage, LLM loop) is configured from the
agent's config here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent_webhook.config import AgentConfig, ConfigError, investigation_mapping
from agent_webhook.investigation import InvestigationConfig, build_investigator, time_needed
from agent_webhook.investigation.tools import ProgressCallback
from agent_webhook.metrics import AgentMetrics
from agent_webhook.model import Investigator
from agent_webhook.store import Store

if TYPE_CHECKING:
    from agent_webhook.actions import ActionEngine


def make_store(config: AgentConfig) -> Store:
    """The findings store at `config.db` (not opened yet), with an outbox per configured sink;
    on the PostgreSQL server of `config.db_url` when one is set (replicas share it)."""
    return Store(
        config.db_url or config.db,
        synchronous=config.db_synchronous,
        sinks=[s.name for s in config.sinks],
        incident_window=config.incident_window_seconds,
    )


def make_investigator(config: AgentConfig, on_event: ProgressCallback | None = None) -> Investigator:
    """The configured investigator; ConfigError if the investigation rejects its settings.

    `on_event(tool, arguments, ok, seconds)` is called per evidence tool call (CLI progress).
    """
    try:
        inv_config = InvestigationConfig.from_mapping(investigation_mapping(config))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"investigation settings: {exc}") from None
    needed = time_needed(inv_config)
    if needed > config.investigation_timeout_seconds:
        # Checked at start: otherwise the worker's timeout would cut a slow LLM run and the
        # finding would lose its triage.
        raise ConfigError(
            f"investigation_timeout_seconds ({config.investigation_timeout_seconds:g}) is shorter than an "
            f"investigation may take ({needed:g}s: 5 evidence calls x tool_timeout_seconds "
            f"{inv_config.tool_timeout_seconds:g}"
            + (f" + llm.budget_seconds {inv_config.llm.budget_seconds:g} + 2s grace" if inv_config.llm.enabled else "")
            + "): raise investigation_timeout_seconds or lower llm.budget_seconds"
        )
    return build_investigator(inv_config, on_event=on_event)


def make_action_engine(config: AgentConfig, store: Store, metrics: AgentMetrics) -> ActionEngine:
    """The scale-action engine; with actions disabled it only records "disabled" refusals."""
    from agent_webhook.actions import ActionEngine

    return ActionEngine(config.actions, store, metrics)
