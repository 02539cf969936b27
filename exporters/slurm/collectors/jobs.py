"""Job counts by state and partition, pending reasons, and the wait-time histogram, from squeue."""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric

from exporters.slurm.collectors.base import SourceCollector
from exporters.slurm.parsers.squeue import Job, reason_label
from exporters.slurm.source import SlurmSource

WAIT_BUCKETS = (10.0, 30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0, 259200.0)
MAX_SEEN = 500_000


@dataclass
class _Histogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(WAIT_BUCKETS) + 1))
    total: float = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(WAIT_BUCKETS, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip((*(str(b) for b in WAIT_BUCKETS), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, float(running)))
        return out


class WaitTimes:
    """Observes start_time - submit_time once per job, the first time it is seen started.

    Jobs already running at the exporter's first poll are only remembered, not observed: a
    restart would otherwise count them twice. The set of seen jobs is pruned to the jobs
    slurmctld still lists, so it stays as large as the queue, never larger than MAX_SEEN.
    """

    def __init__(self) -> None:
        self.histograms: dict[str, _Histogram] = {}
        self.seen: set[str] = set()
        self.generation = 0

    def update(self, jobs: list[Job], generation: int) -> None:
        if generation == self.generation:
            return
        first = self.generation == 0
        self.generation = generation
        current: set[str] = set()
        for job in jobs:
            current.add(job.display_id)
            if job.display_id in self.seen or not job.started:
                continue
            self.seen.add(job.display_id)
            if first or job.start_time is None or job.submit_time is None:
                continue
            hist = self.histograms.setdefault(job.partition, _Histogram())
            hist.observe(max(0.0, job.start_time - job.submit_time))
        self.seen &= current
        if len(self.seen) > MAX_SEEN:  # cannot happen with a sane queue; keep memory bounded anyway
            self.seen = set(list(self.seen)[-MAX_SEEN:])


class JobsCollector(SourceCollector):
    name = "jobs"

    def __init__(self, source: SlurmSource) -> None:
        super().__init__(source)
        self.waits = WaitTimes()

    def families(self) -> Iterable[Metric]:
        state = self.state("squeue")
        jobs: list[Job] = self.items("squeue")
        self.waits.update(jobs, state.generation)
        by_state = Counter((j.state, j.partition) for j in jobs)
        pending = Counter((j.partition, reason_label(j.reason)) for j in jobs if j.state == "pending")
        pending_gpus: Counter[str] = Counter()
        for job in jobs:
            if job.state == "pending" and job.gpus:
                pending_gpus[job.partition] += job.gpus
        jobs_family = GaugeMetricFamily(
            "slurm_jobs", "Jobs slurmctld lists, by state and partition.", labels=["state", "partition"]
        )
        for (st, part), count in sorted(by_state.items()):
            jobs_family.add_metric([st, part], count)
        pending_family = GaugeMetricFamily(
            "slurm_jobs_pending", "Pending jobs by partition and reason.", labels=["partition", "reason"]
        )
        for (part, reason), count in sorted(pending.items()):
            pending_family.add_metric([part, reason], count)
        pending_gpus_family = GaugeMetricFamily(
            "slurm_jobs_pending_gpus", "GPUs requested by pending jobs.", labels=["partition"]
        )
        for part, count in sorted(pending_gpus.items()):
            pending_gpus_family.add_metric([part], count)
        wait = HistogramMetricFamily(
            "slurm_job_wait_seconds",
            "Time from submission to start, observed once per job when it is first seen started.",
            labels=["partition"],
        )
        for part, hist in sorted(self.waits.histograms.items()):
            wait.add_metric([part], hist.buckets(), hist.total)
        return [jobs_family, pending_family, pending_gpus_family, wait]
