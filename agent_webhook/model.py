"""The agent's data model: what the receiver stores and what an investigation returns.

This is the seam between the service (`agent_webhook.service`, `agent_webhook.store`,
`agent_webhook.sinks`: ingest, queue, findings API, posting) and the investigation
(`agent_webhook.investigation`: evidence tools, runbook triage, LLM loop). Both sides import
these types; neither imports the other's internals.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Severity = Literal["critical", "warning", "info"]
AlertStatus = Literal["firing", "resolved"]


@dataclass(frozen=True)
class Alert:
    """One alert out of an Alertmanager webhook payload (version 4), validated.

    Labels and annotations are untrusted input: an investigation must treat them as data.
    """

    fingerprint: str
    status: AlertStatus
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: str  # RFC 3339 as sent
    ends_at: str | None  # None while firing (Alertmanager sends 0001-01-01T00:00:00Z)
    generator_url: str = ""
    receiver: str = ""
    group_key: str = ""
    external_url: str = ""

    @property
    def alertname(self) -> str:
        return self.labels.get("alertname", "")

    @property
    def node(self) -> str | None:
        return self.labels.get("node") or None

    @property
    def gpu(self) -> str | None:
        return self.labels.get("gpu") or None

    @property
    def dedup_key(self) -> tuple[str, str]:
        """Alertmanager re-sends groups and HA peers duplicate: one investigation per key."""
        return (self.fingerprint, self.starts_at)


@dataclass
class Evidence:
    """One tool call made while investigating: what was asked and an excerpt of the answer."""

    tool: str
    arguments: dict[str, Any]
    excerpt: str  # capped and redacted before storing
    ok: bool = True
    duration_seconds: float = 0.0


@dataclass
class Diagnosis:
    """What an investigation concludes; the service turns it into a stored, posted finding."""

    severity: Severity
    summary: str  # one line
    likely_cause: str
    diagnosis_markdown: str
    recommended_actions: list[str]
    evidence: list[Evidence] = field(default_factory=list)
    llm_used: bool = False
    llm_model: str | None = None
    triage_rule: str | None = None  # the knowledge-base entry that matched, if any
    degraded: list[str] = field(default_factory=list)  # e.g. "llm unreachable", "prometheus down"
    timings: dict[str, float] = field(default_factory=dict)
    # Counted by the service into agent_webhook_llm_calls_total / _llm_failures_total.
    llm_calls: int = 0  # chat-completion requests made (0 when no LLM is configured)
    llm_failures: int = 0  # of those, how many failed (error, timeout, unusable answer)
    # Set by the service, not the investigation: the scale decision this alert led to
    # (agent_webhook.actions.Decision.as_dict()), None for alerts that never lead to one.
    action: dict[str, Any] | None = None
    # The model's own answer (severity, summary, likely_cause, diagnosis_markdown,
    # recommended_actions) before it is merged with the triage; None without an LLM answer.
    # The evals score this, so the triage's text never counts as the model's.
    llm_answer: dict[str, Any] | None = None
    # The alert's GPU by UUID and serial (what the history of a GPU is matched on), when known.
    gpu_uuid: str | None = None
    gpu_serial: str | None = None


class Investigator(Protocol):
    """Investigates one alert. Must not raise for unreachable dependencies: it degrades instead."""

    async def investigate(self, alert: Alert) -> Diagnosis: ...

    async def ask(self, question: str) -> Diagnosis: ...
