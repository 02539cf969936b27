"""Findings and alerts: the agent's findings (Grafana annotations) and the state of every alert."""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as models

from grafana.common import (
    BAD,
    FINDINGS_TAG,
    OK,
    WARN,
    Board,
    Query,
    cluster_variable,
    datasource_variable,
    findings_annotation,
    findings_list,
    firing_alerts_annotation,
    query_variable,
    stat,
    state_timeline,
    table,
    timeseries,
    value_text,
)
from grafana.promql import CLUSTER

UID = "gpu-watchdog-findings"
FIRING = f'alertstate="firing", {CLUSTER}, severity=~"$severity"'


def build() -> models.Dashboard:
    board = (
        Board(
            UID,
            "Findings and alerts",
            "What is wrong right now and what the gpu-watchdog agent found out about it: firing "
            "alerts from Prometheus, Alertmanager's view, and the agent's findings (Grafana "
            f"annotations tagged {FINDINGS_TAG}).",
            extra_tags=["alerts"],
        )
        .variables(
            datasource_variable(),
            cluster_variable(),
            query_variable(
                "severity",
                "Severity",
                "Alert severity label (critical, warning, info).",
                f"label_values(ALERTS{{{CLUSTER}}}, severity)",
            ),
        )
        .annotations(findings_annotation(), firing_alerts_annotation(CLUSTER))
        .link_to("gpu-watchdog dashboards")
    )

    board.row("Now").add(
        stat(
            "Alerts firing",
            "Alert instances firing now (Prometheus ALERTS), selected severities.",
            Query(f"count(ALERTS{{{FIRING}}}) or vector(0)", instant=True),
            "none",
            steps=((None, OK), (1.0, WARN)),
            width=6,
        ),
        stat(
            "Critical alerts firing",
            "Firing alerts with severity=critical.",
            Query(f'count(ALERTS{{alertstate="firing", {CLUSTER}, severity="critical"}}) or vector(0)', instant=True),
            "none",
            steps=((None, OK), (1.0, BAD)),
            width=6,
        ),
        stat(
            "Alerts pending",
            "Alerts whose condition holds but whose `for:` duration has not elapsed yet.",
            Query(f'count(ALERTS{{alertstate="pending", {CLUSTER}}}) or vector(0)', instant=True),
            "none",
            steps=((None, OK), (1.0, WARN)),
            width=6,
        ),
        stat(
            "Alertmanager active alerts",
            "Alerts Alertmanager holds as active (not silenced or inhibited), from its own metrics.",
            Query('sum(alertmanager_alerts{state="active"}) or vector(0)', instant=True),
            "none",
            steps=((None, OK), (1.0, WARN)),
            width=6,
        ),
        table(
            "Firing alerts",
            "Every firing alert instance with the labels that say where: node, gpu, component, "
            "severity. The agent's finding for each appears below and as a purple mark on the "
            "GPU and Slurm dashboards.",
            [
                Query(
                    f"max by (alertname, severity, component, node, gpu) (ALERTS{{{FIRING}}})",
                    instant=True,
                    table=True,
                )
            ],
            hidden_columns=("Time", "Value"),
            width=24,
        ),
    )

    board.row("Findings").add(
        findings_list(
            "Agent findings",
            "Findings the gpu-watchdog agent posted to Grafana's annotation API (tags: "
            "gpu-watchdog, the alert name, the node), newest first, in the dashboard time range. "
            "Each holds the diagnosis summary and recommended actions.",
            [FINDINGS_TAG],
        ),
    )

    board.row("History").add(
        state_timeline(
            "Alert history",
            "When each alert fired, per node.",
            [
                Query(
                    f"max by (alertname, node) (ALERTS{{{FIRING}}})",
                    legend="{{alertname}} {{node}}",
                )
            ],
            "none",
            value_text({"1": ("firing", BAD)}),
            steps=((None, BAD),),
            width=24,
        ),
        timeseries(
            "Alerts firing by severity",
            "Firing alert instances per severity.",
            [Query(f"count by (severity) (ALERTS{{{FIRING}}})", legend="{{severity}}")],
            "none",
            stacked=True,
            width=12,
        ),
        timeseries(
            "Alertmanager notifications",
            "Notifications Alertmanager sent and failed per integration (the agent webhook is a "
            "webhook integration). Failures mean findings may be late; the agent dedups retries.",
            [
                Query(
                    "sum by (integration) (rate(alertmanager_notifications_total[$__rate_interval]))",
                    legend="{{integration}} sent",
                ),
                Query(
                    "sum by (integration) (rate(alertmanager_notifications_failed_total[$__rate_interval]))",
                    legend="{{integration}} failed",
                ),
            ],
            "reqps",
            width=12,
        ),
    )
    return board.build()
