"""Slurm cluster: nodes by state with drain reasons, CPU/GPU allocation, the queue, scheduler health."""

from __future__ import annotations

from grafana_foundation_sdk.models import dashboard as models

from grafana.common import (
    BAD,
    LABELS_ONLY,
    OK,
    WARN,
    Query,
    bargauge,
    count_stat,
    findings_annotation,
    firing_alerts_annotation,
    heatmap,
    node_variable,
    query_variable,
    ratio_timeseries,
    stat,
    table,
    timeseries,
    value_text,
    watchdog_board,
)
from grafana.promql import CLUSTER, SLURM_NODES

UID = "gpu-watchdog-slurm"
PARTITIONS = f'{CLUSTER}, partition=~"$partition"'


def build() -> models.Dashboard:
    board = watchdog_board(
        UID,
        "Slurm cluster",
        "Slurm as the scheduler sees it: nodes by state with drain reasons, CPU and GPU "
        "allocation, the queue by state and pending reason, job wait times, scheduler health.",
        extra_tags=["slurm"],
        variables=[
            query_variable(
                "partition",
                "Partition",
                "Slurm partition.",
                f"label_values(slurm_partition_gpus{{{CLUSTER}}}, partition)",
            ),
            node_variable("Slurm node name.", "slurm_node_state"),
        ],
        annotations=[findings_annotation(), firing_alerts_annotation('component="slurm"')],
    )

    board.row("Health").add(
        stat(
            "Controller",
            "slurm_up: 1 when the last poll of slurmctld succeeded. When it is 0 the exporter "
            "keeps serving the last good data (see snapshot age). Alert SlurmControllerDown.",
            f"min(slurm_up{{{CLUSTER}}})",
            "none",
            steps=((None, BAD), (1.0, OK)),
            mappings=value_text({"0": ("DOWN", BAD), "1": ("UP", OK)}),
            width=3,
        ),
        stat(
            "Data age",
            "How old the Slurm data served by the exporter is: grows while slurmctld does not answer.",
            f"max(slurm_exporter_snapshot_age_seconds{{{CLUSTER}}})",
            "s",
            steps=((None, OK), (60.0, WARN), (300.0, BAD)),
            width=3,
        ),
        count_stat(
            "Nodes down or drained",
            "Nodes in a down, drained, draining or failing state (any reason). The table below "
            "lists them with their reason.",
            f"count(max by (node) (slurm_node_reason_info{{{SLURM_NODES}}}))",
            width=3,
        ),
        count_stat(
            "Nodes in maintenance",
            "Nodes whose drain/down reason or reservation says maintenance "
            "(node:slurm_node_in_maintenance:bool): their node and GPU alerts are held back.",
            "count(node:slurm_node_in_maintenance:bool == 1)",
            alarm=None,
            width=3,
        ),
        stat(
            "GPUs allocated",
            "Allocated over configured GPUs, whole cluster, counted per node so that a node in "
            "several partitions counts once (cluster:slurm_gpus_allocated:ratio).",
            "cluster:slurm_gpus_allocated:ratio",
            "percentunit",
            width=3,
        ),
        stat(
            "CPUs allocated",
            "Allocated CPUs over configured CPUs, selected nodes.",
            f"sum(slurm_node_cpus_allocated{{{SLURM_NODES}}}) / sum(slurm_node_cpus{{{SLURM_NODES}}})",
            "percentunit",
            width=3,
        ),
        count_stat(
            "Jobs pending",
            "Jobs waiting in the queue, selected partitions (all reasons).",
            f'sum(slurm_jobs{{{PARTITIONS}, state="pending"}})',
            at=50.0,
            width=3,
        ),
    )

    board.row("Nodes").add(
        bargauge(
            "Nodes by state",
            "Node count per Slurm state (a node with flags such as DRAIN+NOT_RESPONDING counts in each).",
            Query(f"sum by (state) (slurm_nodes{{{CLUSTER}}})", legend="{{state}}", instant=True),
            "none",
            width=8,
        ),
        table(
            "Down, drained and failing nodes",
            "Each node that is down, drained or failing with the reason an admin or Slurm gave "
            "(alerts SlurmNodeDown, SlurmNodeDrained, SlurmNodeNotResponding).",
            [f"slurm_node_reason_info{{{SLURM_NODES}}}"],
            hidden_columns=LABELS_ONLY,
            width=16,
        ),
        bargauge(
            "GPU allocation per node",
            "Allocated over configured GPUs per node (GPU nodes only).",
            Query(
                f"sum by (node) (slurm_node_gpus_allocated{{{SLURM_NODES}}}) / "
                f"(sum by (node) (slurm_node_gpus{{{SLURM_NODES}}}) > 0)",
                legend="{{node}}",
                instant=True,
            ),
            "percentunit",
            max_value=1,
        ),
        bargauge(
            "CPU allocation per node",
            "Allocated over configured CPUs per node.",
            Query(
                f"sum by (node) (slurm_node_cpus_allocated{{{SLURM_NODES}}}) / "
                f"sum by (node) (slurm_node_cpus{{{SLURM_NODES}}})",
                legend="{{node}}",
                instant=True,
            ),
            "percentunit",
            max_value=1,
        ),
    )

    board.row("Allocation over time").add(
        ratio_timeseries(
            "GPU allocation by partition",
            "Allocated over configured GPUs per partition (partition:slurm_gpus_allocated:ratio).",
            [Query(f"partition:slurm_gpus_allocated:ratio{{{PARTITIONS}}}", legend="{{partition}}")],
            width=8,
        ),
        timeseries(
            "GPUs allocated by model",
            "Allocated GPUs per GPU type (GRES type) against configured.",
            [
                Query(
                    f"sum by (gpu_type) (slurm_node_gpus_allocated{{{SLURM_NODES}}})", legend="{{gpu_type}} allocated"
                ),
                Query(f"sum by (gpu_type) (slurm_node_gpus{{{SLURM_NODES}}})", legend="{{gpu_type}} configured"),
            ],
            "none",
            min_value=0,
            width=8,
        ),
        ratio_timeseries(
            "Memory allocation",
            "Allocated over configured memory, selected nodes.",
            [
                Query(
                    f"sum(slurm_node_memory_allocated_bytes{{{SLURM_NODES}}}) / "
                    f"sum(slurm_node_memory_total_bytes{{{SLURM_NODES}}})",
                    legend="memory",
                )
            ],
            width=8,
        ),
    )

    board.row("Queue").add(
        timeseries(
            "Jobs by state",
            "Jobs per state, selected partitions.",
            [Query(f"sum by (state) (slurm_jobs{{{PARTITIONS}}})", legend="{{state}}")],
            "none",
            stacked=True,
            width=8,
        ),
        timeseries(
            "Pending jobs by reason",
            "Why jobs wait: Resources (the cluster is full), Priority (others first), "
            "ReqNodeNotAvail, QOS/association limits... A growing Resources band for GPU jobs is "
            "SlurmGPUQueueBacklog.",
            [Query(f"sum by (reason) (slurm_jobs_pending{{{PARTITIONS}}})", legend="{{reason}}")],
            "none",
            stacked=True,
            width=8,
        ),
        timeseries(
            "Job wait time",
            "Median and 90th percentile of how long jobs waited before they started (from the "
            "slurm_job_wait_seconds histogram, observed once per job at start).",
            [
                Query(
                    "histogram_quantile(0.5, sum by (le) "
                    f"(rate(slurm_job_wait_seconds_bucket{{{PARTITIONS}}}[$__rate_interval])))",
                    legend="p50",
                ),
                Query(
                    "histogram_quantile(0.9, sum by (le) "
                    f"(rate(slurm_job_wait_seconds_bucket{{{PARTITIONS}}}[$__rate_interval])))",
                    legend="p90",
                ),
            ],
            "s",
            width=8,
        ),
        heatmap(
            "Job wait time histogram",
            "Jobs started per wait-time bucket over time.",
            Query(
                f"sum by (le) (increase(slurm_job_wait_seconds_bucket{{{PARTITIONS}}}[$__rate_interval]))",
                legend="{{le}}",
                heatmap=True,
            ),
            "s",
            calculate=False,
            width=24,
        ),
    )

    board.row("Scheduler").add(
        timeseries(
            "Scheduler cycle time",
            "Main and backfill scheduler cycle times from sdiag. Cycles of many seconds delay "
            "every job start (SlurmSchedulerSlow).",
            [Query(f"slurm_scheduler_cycle_seconds{{{CLUSTER}}}", legend="{{kind}} {{stat}}")],
            "s",
            steps=((None, OK), (5.0, WARN)),
            width=8,
        ),
        timeseries(
            "Scheduler queue length",
            "RPCs queued in slurmctld waiting to be served (sdiag).",
            [Query(f"slurm_scheduler_queue_length{{{CLUSTER}}}", legend="queue")],
            "none",
            width=8,
        ),
        timeseries(
            "slurmctld RPCs",
            "RPCs per second served by slurmctld, top 10 types. The exporter's own load is one poll "
            "per interval regardless of how many Prometheus servers scrape it.",
            [
                Query(
                    f"topk(10, sum by (type) (rate(slurm_rpc_calls_total{{{CLUSTER}}}[$__rate_interval])))",
                    legend="{{type}}",
                )
            ],
            "reqps",
            width=8,
        ),
        timeseries(
            "Exporter poll duration",
            "How long each Slurm command of the exporter's poll took.",
            [
                Query(
                    f"slurm_exporter_collect_duration_seconds{{{CLUSTER}}}",
                    legend="{{command}}",
                )
            ],
            "s",
            width=12,
        ),
        timeseries(
            "Exporter parse errors",
            "Lines of Slurm output the exporter could not parse and skipped, per command.",
            [
                Query(
                    f"sum by (command) (increase(slurm_exporter_parse_errors_total{{{CLUSTER}}}[$__rate_interval]))",
                    legend="{{command}}",
                )
            ],
            "none",
            steps=((None, OK), (1.0, WARN)),
            width=12,
        ),
    )
    return board.build()
