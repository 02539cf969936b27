"""Investigation of alerts: read-only evidence tools, knowledge-base triage, and the LLM loop.

The service calls exactly this API:

    cfg = InvestigationConfig.from_mapping(agent_yml_mapping)   # ValueError on bad values
    investigator = build_investigator(cfg)                      # an agent_webhook.model.Investigator
    diagnosis = await investigator.investigate(alert)           # never raises for dead dependencies
    diagnosis = await investigator.ask("why is node gpu-2 drained?")
"""

from __future__ import annotations

from agent_webhook.investigation.config import CONFIG_KEYS, InvestigationConfig, LLMConfig, SlurmConfig
from agent_webhook.investigation.investigator import Investigation, time_needed
from agent_webhook.investigation.tools import ProgressCallback


def build_investigator(cfg: InvestigationConfig, on_event: ProgressCallback | None = None) -> Investigation:
    """The Investigator for a config (one per process: it holds the LLM circuit breaker)."""
    return Investigation(cfg, on_event=on_event)


__all__ = [
    "CONFIG_KEYS",
    "Investigation",
    "InvestigationConfig",
    "LLMConfig",
    "SlurmConfig",
    "build_investigator",
    "time_needed",
]
