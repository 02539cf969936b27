"""Jobs and efficiency: GPUs allocated vs. used per user/account/job, idle-while-allocated, GPU-hours,
and what the RunPod pods cost (runpod-exporter, alert_rules/cost.rules.yml)."""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as models

from grafana.common import (
    BAD,
    INFO,
    LABELS_ONLY,
    OK,
    WARN,
    Query,
    bargauge,
    count_stat,
    findings_annotation,
    query_variable,
    ratio_timeseries,
    stat,
    table,
    timeseries,
    watchdog_board,
)
from grafana.promql import CLUSTER, IDLE_UTILIZATION, JOBS, job_gpus, sel, with_job

UID = "gpu-watchdog-jobs"

# Utilization of allocated GPUs: under 5 % is idle (GPUIdleWhileAllocated), under 50 % poor.
EFFICIENCY_STEPS = ((None, BAD), (IDLE_UTILIZATION, WARN), (0.5, OK))

ALLOCATED_UTILIZATION = with_job(sel("nvidia_gpu_utilization_ratio", CLUSTER), JOBS)
RUNPOD = f'job="runpod", {CLUSTER}'
# Per pod: its status, name, node, role and GPU type attached (for tables).
POD_LABELS = (
    f"* on (pod_id) group_left (name, node, role, gpu_type) runpod_pod_info{{{RUNPOD}}} "
    f"* on (pod_id) group_left (status) (runpod_pod_status{{{RUNPOD}}} == 1)"
)
# 1 per allocated GPU idle over 10 minutes (alert_rules/recording.rules.yml); keeps the job labels.
IDLE_ALLOCATED = sel("node_gpu:nvidia_gpu_idle_allocated:bool", JOBS)


def build() -> models.Dashboard:
    board = watchdog_board(
        UID,
        "Jobs and efficiency",
        "GPUs Slurm allocated against GPUs actually busy, per user, account and job; GPUs "
        "allocated but idle; GPU-hours per account. Joins Slurm's job-to-GPU map with the GPU "
        "exporter through the device minor number (nvidia_gpu_info).",
        extra_tags=["slurm", "gpu"],
        variables=[
            query_variable(
                "account",
                "Account",
                "Slurm account.",
                f"label_values(slurm_gpu_seconds_total{{{CLUSTER}}}, account)",
            ),
            query_variable(
                "user",
                "User",
                "Slurm user.",
                f'label_values(slurm_gpu_seconds_total{{{CLUSTER}, account=~"$account"}}, user)',
            ),
        ],
        annotations=[findings_annotation()],
    )

    board.row("Allocated vs. used").add(
        count_stat(
            "GPUs allocated",
            "GPUs held by running jobs of the selected users and accounts (slurm_job_gpu_info).",
            f"count({job_gpus(JOBS)})",
            alarm=None,
            width=6,
        ),
        count_stat(
            "GPUs busy (equivalent)",
            "Sum of the utilization of the allocated GPUs: how many fully busy GPUs the allocation is worth.",
            f"sum({ALLOCATED_UTILIZATION})",
            alarm=None,
            width=6,
        ),
        stat(
            "Allocated GPU utilization",
            "Mean utilization of allocated GPUs. Red under 5 % (idle), orange under 50 %.",
            f"avg({ALLOCATED_UTILIZATION})",
            "percentunit",
            steps=EFFICIENCY_STEPS,
            width=6,
        ),
        count_stat(
            "Allocated but idle",
            f"Allocated GPUs whose 10-minute mean utilization is under {IDLE_UTILIZATION:.0%} "
            "(recording rule node_gpu:nvidia_gpu_idle_allocated:bool; the alert "
            "GPUIdleWhileAllocated fires when this lasts 30 minutes).",
            f"sum({IDLE_ALLOCATED})",
            width=6,
        ),
        ratio_timeseries(
            "Cluster: GPUs allocated vs. GPU utilization",
            "Share of all GPUs Slurm has allocated (cluster:slurm_gpus_allocated:ratio) against "
            "the mean utilization of all GPUs (cluster:nvidia_gpu_utilization_ratio:avg). Whole "
            "cluster, not filtered by user or account.",
            [
                Query("cluster:slurm_gpus_allocated:ratio", legend="allocated"),
                Query("cluster:nvidia_gpu_utilization_ratio:avg", legend="utilized"),
            ],
        ),
        timeseries(
            "Allocated vs. busy GPUs",
            "GPUs allocated to jobs against the busy-GPU equivalent of those allocations. The gap "
            "is paid-for capacity doing nothing.",
            [
                Query(f"count({job_gpus(JOBS)})", legend="allocated"),
                Query(f"sum({ALLOCATED_UTILIZATION})", legend="busy (sum of utilization)"),
            ],
            "none",
            min_value=0,
            width=12,
        ),
    )

    board.row("Who").add(
        table(
            "Jobs holding GPUs",
            "Each running job with GPUs: how many, and their mean utilization now.",
            [
                f"count by (job_id, user, account) ({job_gpus(JOBS)})",
                f"avg by (job_id, user, account) ({ALLOCATED_UTILIZATION})",
            ],
            columns={"Value #A": ("GPUs", "none"), "Value #B": ("mean utilization", "percentunit")},
            width=12,
        ),
        table(
            "Idle while allocated",
            f"GPUs a job holds whose 10-minute mean utilization is under {IDLE_UTILIZATION:.0%}, with "
            "the job, user and account to talk to (node_gpu:nvidia_gpu_idle_allocated:bool).",
            [f"{IDLE_ALLOCATED} == 1"],
            hidden_columns=LABELS_ONLY,
            width=12,
        ),
        bargauge(
            "GPUs allocated per user",
            "GPUs allocated to each user's running jobs (slurm_user_gpus_allocated).",
            Query(
                f"sum by (user, account) (slurm_user_gpus_allocated{{{JOBS}}})",
                legend="{{user}} ({{account}})",
                instant=True,
            ),
            "none",
            width=12,
        ),
        bargauge(
            "Busy-GPU equivalent per user",
            "Sum of the utilization of each user's allocated GPUs; compare with the panel to the left.",
            Query(f"sum by (user, account) ({ALLOCATED_UTILIZATION})", legend="{{user}} ({{account}})", instant=True),
            "none",
            width=12,
        ),
    )

    board.row("GPU-hours").add(
        bargauge(
            "GPU-hours per account",
            "Allocated GPU-hours per account over the dashboard time range (slurm_gpu_seconds_total / 3600).",
            Query(
                f"sum by (account) (increase(slurm_gpu_seconds_total{{{JOBS}}}[$__range])) / 3600",
                legend="{{account}}",
                instant=True,
            ),
            "suffix: GPU-h",
            steps=((None, INFO),),
            width=12,
        ),
        timeseries(
            "GPUs allocated per account",
            "GPUs held per account, averaged over 5 minutes (user_account:slurm_gpu_seconds:rate5m, "
            "GPU-seconds per second).",
            [
                Query(
                    'sum by (account) (user_account:slurm_gpu_seconds:rate5m{user=~"$user", account=~"$account"})',
                    legend="{{account}}",
                )
            ],
            "none",
            stacked=True,
            width=12,
        ),
    )
    board.row("RunPod cost").add(
        stat(
            "Burn rate ($/h)",
            "What the RUNNING RunPod pods cost per hour together "
            "(gpu_watchdog:runpod_burn_dollars_per_hour). RunPodSpendHigh fires above the budget.",
            Query("gpu_watchdog:runpod_burn_dollars_per_hour or vector(0)", instant=True),
            "currencyUSD",
            width=6,
        ),
        stat(
            "Budget ($/h)",
            "The hourly budget of RunPodSpendHigh: runpod-exporter's --budget-dollars-per-hour, "
            "else the rule's default (gpu_watchdog:runpod_budget_dollars_per_hour).",
            Query("gpu_watchdog:runpod_budget_dollars_per_hour", instant=True),
            "currencyUSD",
            width=6,
        ),
        stat(
            "Idle pods ($/h)",
            "What billing pods whose Slurm node runs no job and whose GPUs are idle cost per hour "
            "(node:runpod_pod_idle_dollars_per_hour; RunPodPodIdle after 30 minutes).",
            Query("sum(node:runpod_pod_idle_dollars_per_hour) or vector(0)", instant=True),
            "currencyUSD",
            steps=((None, OK), (0.01, WARN)),
            width=6,
        ),
        stat(
            "Observed spend",
            "Cost of the pod-time runpod-exporter saw RUNNING over the dashboard time range "
            "(increase of runpod_spend_dollars_total; it misses time the exporter was down).",
            Query(f"sum(increase(runpod_spend_dollars_total{{{RUNPOD}}}[$__range])) or vector(0)", instant=True),
            "currencyUSD",
            width=6,
        ),
        timeseries(
            "Burn rate vs. budget",
            "Hourly cost of the running pods against the budget (RunPodSpendHigh fires after 15 "
            "minutes above it), and the part of it spent on idle pods.",
            [
                Query("gpu_watchdog:runpod_burn_dollars_per_hour", legend="burn"),
                Query("gpu_watchdog:runpod_budget_dollars_per_hour", legend="budget"),
                Query("sum(node:runpod_pod_idle_dollars_per_hour) or vector(0)", legend="idle pods"),
            ],
            "currencyUSD",
            min_value=0,
            width=12,
        ),
        table(
            "RunPod pods",
            "Every pod runpod-exporter sees, with its status, Slurm node, role, cost per hour and "
            "container uptime. Served from the last good API poll while runpod_api_up is 0.",
            [
                f"runpod_pod_cost_per_hour_dollars{{{RUNPOD}}} {POD_LABELS}",
                f"runpod_pod_uptime_seconds{{{RUNPOD}}} {POD_LABELS}",
            ],
            columns={"Value #A": ("$/h", "currencyUSD"), "Value #B": ("uptime", "s")},
            hidden_columns=("Time", "__name__", "instance", "job", "cluster", "pod_id"),
            width=12,
        ),
    )
    return board.build()
