"""Where the agent's parts are built from its configuration: the store, the investigator, the action engine.

The configuration (:mod:`agent_webhook.config`) is plain data and knows nothing of storage or
of the investigation's objects; the service and the CLIs get those from here. The investigation
(`agent_webhook.investigation`: evidence tools, runbook triage, LLM loop) is configured from the
agent's config here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent_webhook.config import AgentConfig, ConfigError, investigation_mapping
from agent_webhook.investigation import InvestigationConfig, build_investigator
from agent_webhook.investigation.tools import ProgressCallback
from agent_webhook.metrics import AgentMetrics
from agent_webhook.model import Investigator
from agent_webhook.store import Store

if TYPE_CHECKING:
    from agent_webhook.actions import ActionEngine


def make_store(config: AgentConfig) -> Store:
    """The findings store at `config.db` (not opened yet), with an outbox per configured sink."""
    return Store(config.db, synchronous=config.db_synchronous, sinks=[s.name for s in config.sinks])


def make_investigator(config: AgentConfig, on_event: ProgressCallback | None = None) -> Investigator:
    """The configured investigator; ConfigError if the investigation rejects its settings.

    `on_event(tool, arguments, ok, seconds)` is called per evidence tool call (CLI progress).
    """
    try:
        inv_config = InvestigationConfig.from_mapping(investigation_mapping(config))
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"investigation settings: {exc}") from None
    return build_investigator(inv_config, on_event=on_event)


def make_action_engine(config: AgentConfig, store: Store, metrics: AgentMetrics) -> ActionEngine:
    """The scale-action engine; with actions disabled it only records "disabled" refusals."""
    from agent_webhook.actions import ActionEngine

    return ActionEngine(config.actions, store, metrics)
