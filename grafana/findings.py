"""Findings and alerts: the agent's findings (Grafana annotations) and the state of every alert."""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as models

from grafana.common import (
    BAD,
    FINDINGS_TAG,
    Query,
    count_stat,
    findings_annotation,
    findings_list,
    firing_alerts_annotation,
    flag_timeline,
    query_variable,
    table,
    timeseries,
    watchdog_board,
)
from grafana.promql import CLUSTER

UID = "gpu-watchdog-findings"
FIRING = f'alertstate="firing", {CLUSTER}, severity=~"$severity"'


def build() -> models.Dashboard:
    board = watchdog_board(
        UID,
        "Findings and alerts",
        "What is wrong right now and what the gpu-watchdog agent found out about it: firing "
        "alerts from Prometheus, Alertmanager's view, and the agent's findings (Grafana "
        f"annotations tagged {FINDINGS_TAG}).",
        extra_tags=["alerts"],
        variables=[
            query_variable(
                "severity",
                "Severity",
                "Alert severity label (critical, warning, info).",
                f"label_values(ALERTS{{{CLUSTER}}}, severity)",
            ),
        ],
        annotations=[findings_annotation(), firing_alerts_annotation(CLUSTER)],
    )

    board.row("Now").add(
        count_stat(
            "Alerts firing",
            "Alert instances firing now (Prometheus ALERTS), selected severities.",
            f"count(ALERTS{{{FIRING}}})",
            width=6,
        ),
        count_stat(
            "Critical alerts firing",
            "Firing alerts with severity=critical.",
            f'count(ALERTS{{alertstate="firing", {CLUSTER}, severity="critical"}})',
            alarm=BAD,
            width=6,
        ),
        count_stat(
            "Alerts pending",
            "Alerts whose condition holds but whose `for:` duration has not elapsed yet.",
            f'count(ALERTS{{alertstate="pending", {CLUSTER}}})',
            width=6,
        ),
        count_stat(
            "Alertmanager active alerts",
            "Alerts Alertmanager holds as active (not silenced or inhibited), from its own metrics.",
            'sum(alertmanager_alerts{state="active"})',
            width=6,
        ),
        table(
            "Firing alerts",
            "Every firing alert instance with the labels that say where: node, gpu, component, "
            "severity. The agent's finding for each appears below and as a purple mark on the "
            "GPU and Slurm dashboards.",
            [f"max by (alertname, severity, component, node, gpu) (ALERTS{{{FIRING}}})"],
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
        flag_timeline(
            "Alert history",
            "When each alert fired, per node.",
            Query(f"max by (alertname, node) (ALERTS{{{FIRING}}})", legend="{{alertname}} {{node}}"),
            "firing",
            BAD,
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
