"""The agent's own Prometheus metrics, in a private registry (nothing global, testable side by side)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from agent_webhook import __version__
from agent_webhook.model import Diagnosis
from agent_webhook.store import Stats

# Literal here rather than imported from agent_webhook.actions (which imports this module).
ACTIONS = ("scale_up", "scale_down")
OUTCOMES = ("taken", "dry_run", "refused", "failed")

_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class AgentMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        info = Gauge("agent_webhook_build_info", "Version of the agent webhook.", ["version"], registry=r)
        info.labels(__version__).set(1)
        self.notifications = Counter(
            "agent_webhook_notifications_total",
            "Webhook requests to POST /alerts, by HTTP status code answered.",
            ["code"],
            registry=r,
        )
        self.received = Counter(
            "agent_webhook_alerts_received_total",
            "Alerts in accepted webhook payloads, by the status they were sent with.",
            ["status"],
            registry=r,
        )
        self.deduplicated = Counter(
            "agent_webhook_alerts_deduplicated_total",
            "Alerts already stored with the same fingerprint, startsAt and status (re-sends, HA copies).",
            registry=r,
        )
        self.queue_depth = Gauge("agent_webhook_queue_depth", "Alerts waiting for or under investigation.", registry=r)
        self.in_progress = Gauge("agent_webhook_investigations_in_progress", "Investigations running now.", registry=r)
        self.duration = Histogram(
            "agent_webhook_investigation_duration_seconds",
            "Wall-clock time of one investigation.",
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.investigations = Counter(
            "agent_webhook_investigations_total",
            "Finished investigations by outcome: ok, degraded, timeout, error, abandoned, incident (the"
            " diagnosis of the same kind of alert in the same incident was reused: no investigation).",
            ["outcome"],
            registry=r,
        )
        self.findings = Gauge("agent_webhook_findings", "Findings stored.", registry=r)
        self.llm_calls = Counter("agent_webhook_llm_calls_total", "LLM requests made by investigations.", registry=r)
        self.llm_failures = Counter(
            "agent_webhook_llm_failures_total",
            "LLM requests that failed (errors, timeouts, unusable answers).",
            registry=r,
        )
        self.sink_posts = Counter(
            "agent_webhook_sink_posts_total", "Finding events delivered to a sink.", ["sink"], registry=r
        )
        self.sink_failures = Counter(
            "agent_webhook_sink_failures_total",
            "Failed delivery attempts to a sink (each is retried).",
            ["sink"],
            registry=r,
        )
        self.sink_dead_letters = Counter(
            "agent_webhook_sink_dead_letters_total",
            "Finding events a sink refused for good (a 4xx other than 408/425/429, a permanent Slack error),"
            " not retried, by reason (http_<status>, slack_<error>).",
            ["sink", "reason"],
            registry=r,
        )
        self.sink_pending = Gauge(
            "agent_webhook_sink_pending", "Finding events waiting to be delivered to a sink.", ["sink"], registry=r
        )
        self.actions = Counter(
            "agent_webhook_actions_total",
            "Scale decisions by action (scale_up, scale_down) and outcome (taken, dry_run, refused, failed).",
            ["action", "outcome"],
            registry=r,
        )
        self.actions_not_taken = Counter(
            "agent_webhook_actions_not_taken_total",
            "Scale decisions refused or failed, by action and reason (cooldown, bounds, spend_cap, ...).",
            ["action", "reason"],
            registry=r,
        )
        self.last_action = Gauge(
            "agent_webhook_last_action_timestamp_seconds",
            "Unix time of the last scale action taken (not dry-run), by action.",
            ["action"],
            registry=r,
        )
        self.reconcile_runs = Counter(
            "agent_webhook_reconcile_runs_total",
            "Reconciliation checks against Alertmanager by outcome: ok, unreachable, invalid (an unusable"
            " answer), error (the store).",
            ["outcome"],
            registry=r,
        )
        self.alerts_reconciled = Counter(
            "agent_webhook_alerts_reconciled_total",
            "Firing alerts resolved because Alertmanager no longer had them (no resolved notification came).",
            registry=r,
        )
        for outcome in ("ok", "unreachable", "invalid", "error"):
            self.reconcile_runs.labels(outcome)
        for action in ACTIONS:
            for decided in OUTCOMES:
                self.actions.labels(action, decided)
        for outcome in ("ok", "degraded", "timeout", "error", "abandoned"):
            self.investigations.labels(outcome)
        for status in ("firing", "resolved"):
            self.received.labels(status)

    def init_sinks(self, names: list[str]) -> None:
        for name in names:
            self.sink_posts.labels(name)
            self.sink_failures.labels(name)
            self.sink_pending.labels(name)

    def observe_diagnosis(self, diagnosis: Diagnosis) -> None:
        calls = diagnosis.llm_calls or (1 if diagnosis.llm_used else 0)
        failures = diagnosis.llm_failures or (
            1 if any(d.lower().startswith("llm") for d in diagnosis.degraded) and calls == 0 else 0
        )
        if failures and not calls:
            calls = failures
        self.llm_calls.inc(calls)
        self.llm_failures.inc(failures)

    def update_from(self, stats: Stats) -> None:
        self.queue_depth.set(stats.queued + stats.leased)
        self.findings.set(stats.findings)
        for sink, pending in stats.outbox_pending.items():
            self.sink_pending.labels(sink).set(pending)
