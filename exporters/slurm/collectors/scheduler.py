"""slurmctld scheduler cycles, queue lengths, job counters and RPC counts, from sdiag."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from exporters.slurm.collectors.base import SourceCollector
from exporters.slurm.parsers.sdiag import SchedulerStats

US = 1e-6
# sdiag line -> stat label, per scheduler kind; sdiag prints microseconds.
_CYCLE_STATS = {"Last cycle": "last", "Mean cycle": "mean", "Max cycle": "max"}
_JOB_EVENTS = {
    "Jobs submitted": "submitted",
    "Jobs started": "started",
    "Jobs completed": "completed",
    "Jobs canceled": "canceled",
    "Jobs failed": "failed",
}


class SchedulerCollector(SourceCollector):
    name = "scheduler"

    def families(self) -> Iterable[Metric]:
        items: list[SchedulerStats] = self.items("sdiag")
        if not items:
            return []
        stats = items[0]
        cycle = GaugeMetricFamily(
            "slurm_scheduler_cycle_seconds",
            "Scheduler cycle time (sdiag): last, mean and max, for the main and backfill schedulers.",
            labels=["kind", "stat"],
        )
        cycles = CounterMetricFamily(
            "slurm_scheduler_cycles", "Scheduler cycles since sdiag's statistics reset.", labels=["kind"]
        )
        for kind, section in (("main", stats.main), ("backfill", stats.backfill)):
            for line, stat in _CYCLE_STATS.items():
                if line in section:
                    cycle.add_metric([kind, stat], section[line] * US)
            if "Total cycles" in section:
                cycles.add_metric([kind], section["Total cycles"])
        families: list[Metric] = [cycle, cycles]
        for name, doc, section, key in (
            (
                "slurm_scheduler_queue_length",
                "Jobs the main scheduler looked at in its last cycle.",
                stats.main,
                "Last queue length",
            ),
            (
                "slurm_scheduler_backfill_queue_length",
                "Jobs the backfill scheduler looked at in its last cycle.",
                stats.backfill,
                "Last queue length",
            ),
            (
                "slurm_scheduler_backfill_depth",
                "Jobs backfill tried in its last cycle.",
                stats.backfill,
                "Last depth cycle",
            ),
            ("slurm_scheduler_threads", "slurmctld server threads.", stats.general, "Server thread count"),
            ("slurm_scheduler_agent_queue_size", "slurmctld agent queue size.", stats.general, "Agent queue size"),
            (
                "slurm_scheduler_dbd_agent_queue_size",
                "Messages queued for slurmdbd.",
                stats.general,
                "DBD Agent queue size",
            ),
        ):
            if key in section:
                family = GaugeMetricFamily(name, doc)
                family.add_metric([], section[key])
                families.append(family)
        events = CounterMetricFamily(
            "slurm_scheduler_jobs", "Job events since sdiag's statistics reset.", labels=["event"]
        )
        for line, event in _JOB_EVENTS.items():
            if line in stats.general:
                events.add_metric([event], stats.general[line])
        backfilled = CounterMetricFamily(
            "slurm_scheduler_backfilled_jobs", "Jobs started by the backfill scheduler since slurmctld started."
        )
        backfilled.add_metric([], stats.backfill.get("Total backfilled jobs (since last slurm start)", 0))
        rpc_calls = CounterMetricFamily("slurm_rpc_calls", "slurmctld RPCs by message type.", labels=["type"])
        rpc_time = CounterMetricFamily(
            "slurm_rpc_duration_seconds", "Time slurmctld spent in RPCs by message type.", labels=["type"]
        )
        for rpc, (count, total_us) in sorted(stats.rpc_by_type.items()):
            rpc_calls.add_metric([rpc], count)
            rpc_time.add_metric([rpc], total_us * US)
        user_calls = CounterMetricFamily("slurm_rpc_user_calls", "slurmctld RPCs by user.", labels=["user"])
        for user, (count, _total) in sorted(stats.rpc_by_user.items()):
            user_calls.add_metric([user], count)
        families.extend([events, backfilled, rpc_calls, rpc_time, user_calls])
        return families
