"""Per user and per account: jobs by state, and CPUs, memory and GPUs held by running jobs (squeue).

A cluster can have tens of thousands of users; each (user, account) pair is a series per metric,
so the pairs are capped: the `limit` busiest (most CPUs held, then most jobs) are exported by
name, the rest are summed under user="(other)", account="(other)" so totals stay right.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from exporters.slurm.collectors.base import SourceCollector
from exporters.slurm.parsers.squeue import Job
from exporters.slurm.source import SlurmSource

MIB = 1024 * 1024
OTHER = "(other)"
DEFAULT_LIMIT = 1000


@dataclass
class Usage:
    jobs: Counter[str]  # by state
    cpus: int = 0
    memory_mb: float = 0.0
    gpus: int = 0

    def add(self, job: Job) -> None:
        self.jobs[job.state] += 1
        if job.state == "running":
            self.cpus += job.cpus
            self.memory_mb += job.memory_mb
            self.gpus += job.gpus

    def merge(self, other: Usage) -> None:
        self.jobs.update(other.jobs)
        self.cpus += other.cpus
        self.memory_mb += other.memory_mb
        self.gpus += other.gpus


def _usage() -> Usage:
    return Usage(Counter())


def capped(
    usage: dict[tuple[str, ...], Usage], limit: int, other: tuple[str, ...]
) -> tuple[dict[tuple[str, ...], Usage], int]:
    """The `limit` busiest keys, the rest merged under `other`; and how many keys were merged."""
    if len(usage) <= limit:
        return usage, 0
    ranked = sorted(usage, key=lambda k: (-usage[k].cpus, -sum(usage[k].jobs.values()), k))
    kept = {key: usage[key] for key in ranked[:limit]}
    rest = _usage()
    for key in ranked[limit:]:
        rest.merge(usage[key])
    kept[other] = rest
    return kept, len(ranked) - limit


class UsersCollector(SourceCollector):
    name = "users"

    def __init__(self, source: SlurmSource, limit: int = DEFAULT_LIMIT) -> None:
        super().__init__(source)
        self.limit = limit

    def families(self) -> Iterable[Metric]:
        jobs: list[Job] = self.items("squeue")
        by_user: dict[tuple[str, ...], Usage] = defaultdict(_usage)
        by_account: dict[tuple[str, ...], Usage] = defaultdict(_usage)
        for job in jobs:
            by_user[(job.user, job.account)].add(job)
            by_account[(job.account,)].add(job)
        users, users_folded = capped(dict(by_user), self.limit, (OTHER, OTHER))
        accounts, accounts_folded = capped(dict(by_account), self.limit, (OTHER,))
        families: list[Metric] = []
        for prefix, labels, table in (
            ("slurm_user", ["user", "account"], users),
            ("slurm_account", ["account"], accounts),
        ):
            who = "user" if prefix == "slurm_user" else "account"
            count = GaugeMetricFamily(
                f"{prefix}_jobs", f"Jobs slurmctld lists, by {who} and state.", labels=[*labels, "state"]
            )
            cpus = GaugeMetricFamily(f"{prefix}_cpus_allocated", f"CPUs held by running jobs, by {who}.", labels=labels)
            memory = GaugeMetricFamily(
                f"{prefix}_memory_allocated_bytes", f"Memory held by running jobs, by {who}.", labels=labels
            )
            gpus = GaugeMetricFamily(f"{prefix}_gpus_allocated", f"GPUs held by running jobs, by {who}.", labels=labels)
            for key, usage in sorted(table.items()):
                for state, n in sorted(usage.jobs.items()):
                    count.add_metric([*key, state], n)
                cpus.add_metric(list(key), usage.cpus)
                memory.add_metric(list(key), usage.memory_mb * MIB)
                gpus.add_metric(list(key), usage.gpus)
            families.extend([count, cpus, memory, gpus])
        folded = GaugeMetricFamily(
            "slurm_exporter_series_folded",
            "Users or accounts past the cardinality cap, summed under (other) in the last poll.",
            labels=["kind"],
        )
        folded.add_metric(["user"], users_folded)
        folded.add_metric(["account"], accounts_folded)
        families.append(folded)
        return families
