"""Guarded scale actions: SlurmGPUQueueBacklog may add workers, RunPodPodIdle may remove one.

Off by default (``actions.enabled``), dry-run by default once enabled (``actions.dry_run``).
See :mod:`agent_webhook.actions.engine` for the guards and docs/agent-webhook.md ("Actions").
"""

from agent_webhook.actions.engine import ActionEngine, Decision
from agent_webhook.actions.policy import ALERT_ACTIONS, Plan, Quote, Refusal, plan

__all__ = ["ALERT_ACTIONS", "ActionEngine", "Decision", "Plan", "Quote", "Refusal", "plan"]
