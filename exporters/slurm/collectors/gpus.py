"""GPU allocation per node and job, and GPU-seconds per user/account/partition (per-user GPUs: users.py)."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from exporters.slurm.collectors.base import NoData, SourceCollector
from exporters.slurm.parsers.hostlist import HostlistError, expand
from exporters.slurm.parsers.scontrol_jobs import JobGpu
from exporters.slurm.parsers.sinfo import Node
from exporters.slurm.parsers.squeue import ENDED_STATES, Job
from exporters.slurm.source import SlurmSource

Key = tuple[str, str, str]  # user, account, partition


class GpuSeconds:
    """Allocated GPU-seconds, credited per poll for the part of each job's run since the last poll.

    A job holds its GPUs over [start, end] (end = now while running). Each fresh squeue result
    credits the overlap of that interval with (previous poll, this poll], so nothing is counted
    twice, and jobs that start and end between two polls still count while squeue lists them
    (MinJobAge). A failed poll credits nothing; the next good one covers the gap.
    """

    def __init__(self) -> None:
        self.totals: dict[Key, float] = {}
        self.previous: float | None = None
        self.generation = 0

    def update(self, jobs: list[Job], generation: int, now: float) -> None:
        if generation == self.generation:
            return
        self.generation = generation
        for job in jobs:
            if job.gpus <= 0 or not job.started or job.start_time is None or job.state == "suspended":
                continue
            key = (job.user, job.account, job.partition)
            self.totals.setdefault(key, 0.0)
            if self.previous is None:
                continue
            end = job.end_time if (job.state in ENDED_STATES and job.end_time) else now
            overlap = min(end, now) - max(job.start_time, self.previous)
            if overlap > 0:
                self.totals[key] += job.gpus * overlap
        self.previous = now


class GpusCollector(SourceCollector):
    name = "gpus"

    def __init__(self, source: SlurmSource) -> None:
        super().__init__(source)
        self.seconds = GpuSeconds()
        self.known = KnownAllocations()

    def families(self) -> Iterable[Metric]:
        families: list[Metric] = []
        errors: list[str] = []
        for part in (self._nodes, self._users, self._jobs):
            try:
                families.extend(part())
            except NoData as exc:  # one missing command must not hide the other GPU series
                errors.append(str(exc))
        if errors and not families:
            raise NoData("; ".join(errors))
        return families

    def _nodes(self) -> list[Metric]:
        nodes: list[Node] = self.items("sinfo")
        total = GaugeMetricFamily("slurm_node_gpus", "GPUs of the node.", labels=["node", "gpu_type"])
        alloc = GaugeMetricFamily(
            "slurm_node_gpus_allocated", "GPUs of the node allocated to jobs.", labels=["node", "gpu_type"]
        )
        for node in nodes:
            # Each field on its own: an unreadable GresUsed must not hide the node's GPU count.
            configured, used = node.gpus_total, node.gpus_allocated
            for gtype in sorted(set(configured or {}) | set(used or {})):
                if configured is not None:
                    total.add_metric([node.name, gtype], configured.get(gtype, 0))
                if used is not None:
                    alloc.add_metric([node.name, gtype], used.get(gtype, 0))
        return [total, alloc]

    def _users(self) -> list[Metric]:
        state = self.state("squeue")
        jobs: list[Job] = self.items("squeue")
        self.seconds.update(jobs, state.generation, state.last_success or 0.0)
        seconds = CounterMetricFamily(
            "slurm_gpu_seconds",
            "Allocated GPU-seconds observed since the exporter started.",
            labels=["user", "account", "partition"],
        )
        for (user, account, partition), value in sorted(self.seconds.totals.items()):
            seconds.add_metric([user, account, partition], value)
        return [seconds]

    def _jobs(self) -> list[Metric]:
        jobs: list[Job] = self.items("squeue")
        nodes: list[Node] = self.items("sinfo")
        rows, undecided = from_sinfo(jobs, nodes)
        if undecided:
            # Only jobs sharing a node with another GPU job need their own GRES detail.
            rows += self._detail_rows(jobs, undecided)
        accepted, rejected = job_gpu_map(rows, jobs)
        info = GaugeMetricFamily(
            "slurm_job_gpu_info",
            "GPU a running job holds on a node (always 1), at most one series per (node, gpu). gpu is "
            "Slurm's GRES IDX, which is the number of the GPU's device file /dev/nvidia<N>: the device "
            "minor number, also exported as minor_number (docs/slurm-exporter.md).",
            labels=["job_id", "user", "account", "node", "gpu", "minor_number", "gpu_type"],
        )
        for row, job in accepted:
            index = str(row.gpu)
            info.add_metric([row.job_id, job.user, job.account, row.node, index, index, row.gpu_type], 1)
        dropped = GaugeMetricFamily(
            "slurm_job_gpu_rejected",
            "GPU assignments scontrol printed that the last poll did not export, by why.",
            labels=["reason"],
        )
        for reason in REJECT_REASONS:
            dropped.add_metric([reason], rejected.get(reason, 0))
        return [info, dropped]

    def _detail_rows(self, jobs: list[Job], undecided: set[str]) -> list[JobGpu]:
        """GRES detail of the undecided jobs: remembered for jobs read before, scontrol for the rest."""
        running = {job.job_id: job for job in jobs if job.job_id in undecided and job.state == "running"}
        self.known.forget_all_but(running)
        unknown = sorted((job_id for job_id in undecided if not self.known.has(job_id)), key=_numeric)
        rows = self.known.rows()
        if not unknown:
            return rows  # every job's indices were read while it ran in this allocation: no scontrol
        state = self.source.get("scontrol", unknown)
        if state.data is None:
            raise NoData(f"scontrol has not succeeded yet: {state.error or 'not run'}")
        if state.fresh and state.last_began is not None:
            self.known.learn(state.data.items, running, read_began=state.last_began)
        wanted = set(unknown)
        return rows + [row for row in state.data.items if row.job_id in wanted]


class KnownAllocations:
    """GPU indices of running jobs already read from scontrol, kept while each job runs.

    A running job keeps the GPUs it was given until it ends, is suspended or is requeued, and
    squeue (which prints nothing a user can write) shows each of those: the job leaves the
    running state, or comes back with another start time or node list. So a job's detail is
    read once per allocation, not once per poll. On a big cluster that turns the full
    `scontrol -d show job` dump (3.7 s and 106 MB at 100k jobs, most of a poll and the heaviest
    read slurmctld serves) into a read only when more than the backend's detail limit of jobs
    started since the last poll. Rows are still cross-checked against squeue every poll
    (job_gpu_map), and a job whose record gave no rows (refused as forged, or read just before
    it started) is not remembered, so it is read again. Nor is a job that started after the read
    began: the dump read ahead runs beside squeue, so it may show a requeued job's previous
    allocation while squeue shows the new one; that job is read again next poll.
    """

    def __init__(self) -> None:
        self._jobs: dict[str, tuple[tuple[float | None, str], list[JobGpu]]] = {}

    @staticmethod
    def _allocation(job: Job) -> tuple[float | None, str]:
        return job.start_time, job.nodes

    def forget_all_but(self, running: dict[str, Job]) -> None:
        """Drop jobs no longer running in the allocation their rows were read in."""
        self._jobs = {
            job_id: known
            for job_id, known in self._jobs.items()
            if job_id in running and known[0] == self._allocation(running[job_id])
        }

    def has(self, job_id: str) -> bool:
        return job_id in self._jobs

    def rows(self) -> list[JobGpu]:
        return [row for _, rows in self._jobs.values() for row in rows]

    def learn(self, rows: Iterable[JobGpu], running: dict[str, Job], read_began: float) -> None:
        """Remember the rows of jobs squeue lists as running since before the read began.

        Slurm prints whole seconds: a job shown started at second S may have started up to 1 s
        later, hence the second's margin.
        """
        found: dict[str, list[JobGpu]] = defaultdict(list)
        for row in rows:
            job = running.get(row.job_id)
            if job is not None and job.start_time is not None and job.start_time + 1 <= read_began:
                found[row.job_id].append(row)
        for job_id, job_rows in found.items():
            self._jobs[job_id] = (self._allocation(running[job_id]), job_rows)


REJECT_REASONS = ("job_not_running", "node_not_in_job", "gpu_claimed_twice")


def _numeric(job_id: str) -> tuple[int, str]:
    return (int(job_id), "") if job_id.isdigit() else (0, job_id)


def from_sinfo(jobs: list[Job], nodes: list[Node]) -> tuple[list[JobGpu], set[str]]:
    """GPU rows read off sinfo for nodes one running GPU job has to itself, and the jobs left over.

    sinfo's GresUsed lists the indices in use on a node (`gpu:h100:8(IDX:0-7)`) and squeue which
    running jobs hold GPUs there; neither prints text a user wrote. When exactly one such job
    is on the node and it holds exactly as many GPUs there as are in use, those indices are its
    own, with no need to read its job record. Every other running GPU job is returned as
    undecided: the caller reads its GRES detail from scontrol.
    """
    on_node: dict[str, list[Job]] = defaultdict(list)
    undecided: set[str] = set()
    for job in jobs:
        if job.state != "running" or job.gpus <= 0:
            continue
        try:
            names = expand(job.nodes)
        except HostlistError:
            undecided.add(job.job_id)
            continue
        for name in names:
            on_node[name].append(job)
    by_name = {node.name: node for node in nodes}
    rows: list[JobGpu] = []
    for name, holders in on_node.items():
        node = by_name.get(name)
        used = node.gpu_indices_used if node is not None else None
        job = holders[0]
        per_node, rest = divmod(job.gpus, max(job.num_nodes, 1))
        in_use = sum(len(indices) for indices in (used or {}).values())
        if len(holders) != 1 or used is None or rest or in_use != per_node:
            undecided.update(j.job_id for j in holders)
            continue
        rows.extend(JobGpu(job.job_id, name, index, gtype) for gtype, indices in used.items() for index in indices)
    # A job decided on one node but not on another is read whole from scontrol.
    return [row for row in rows if row.job_id not in undecided], undecided


def job_gpu_map(rows: list[JobGpu], jobs: list[Job]) -> tuple[list[tuple[JobGpu, Job]], Counter[str]]:
    """The (node, GPU) -> job rows to export, each (node, gpu) at most once, and what was dropped.

    A row counts only when squeue (which prints nothing a user can write) lists its job as
    running on that node: scontrol's record text cannot be trusted on its own. A (node, gpu)
    two jobs claim is dropped for both: the dashboards' `group_left` join needs one job per GPU,
    and guessing which one is right would be a forgery of its own.
    """
    running = {job.job_id: job for job in jobs if job.state == "running"}
    job_nodes: dict[str, frozenset[str]] = {}
    rejected: Counter[str] = Counter()
    kept: list[tuple[JobGpu, Job]] = []
    for row in set(rows):
        job = running.get(row.job_id)
        if job is None:
            rejected["job_not_running"] += 1
            continue
        if row.job_id not in job_nodes:
            try:
                job_nodes[row.job_id] = frozenset(expand(job.nodes))
            except HostlistError:
                job_nodes[row.job_id] = frozenset()
        if row.node not in job_nodes[row.job_id]:
            rejected["node_not_in_job"] += 1
            continue
        kept.append((row, job))
    claims = Counter((row.node, row.gpu) for row, _ in kept)
    accepted = []
    for row, job in sorted(kept, key=lambda pair: (pair[0].node, pair[0].gpu, pair[0].job_id)):
        if claims[(row.node, row.gpu)] > 1:
            rejected["gpu_claimed_twice"] += 1
            continue
        accepted.append((row, job))
    return accepted, rejected
