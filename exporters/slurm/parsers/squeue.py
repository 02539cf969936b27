"""`squeue` job lines: state, reason, times, and GPUs asked for by any of the four ways."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from exporters.slurm.parsers.common import Parsed, nullable, parse_int, parse_time
from exporters.slurm.parsers.gres import tres_alloc_gpus, tres_cpus_memory, tres_request_gpus

FIELDS = (
    "JobID",
    "JobArrayID",
    "Partition",
    "UserName",
    "Account",
    "State",
    "SubmitTime",
    "StartTime",
    "EndTime",
    "NumNodes",
    "NumTasks",
    "tres-alloc",
    "tres-per-node",
    "tres-per-job",
    "tres-per-task",
    "NodeList",
    "Reason",
)
# -r: one line per array task (pending arrays would otherwise count as one job);
# -t all: finished jobs stay listed for MinJobAge, so GPU-seconds of short jobs are not lost.
ARGS = ["-h", "-a", "-r", "-t", "all", "-O", ",".join(f"{f}:|" for f in FIELDS)]

ENDED_STATES = frozenset(
    {
        "completed",
        "cancelled",
        "failed",
        "timeout",
        "node_fail",
        "preempted",
        "boot_fail",
        "deadline",
        "out_of_memory",
        "revoked",
        "special_exit",
    }
)


@dataclass
class Job:
    job_id: str  # the raw id, what SLURM_JOB_ID holds inside the job
    display_id: str  # 1234_7 for array tasks
    partition: str
    user: str
    account: str
    state: str  # lower case: pending, running, completed, ...
    reason: str
    submit_time: float | None
    start_time: float | None
    end_time: float | None
    nodes: str  # hostlist
    num_nodes: int
    gpus: int  # allocated when running (requested when pending)
    gpu_type: str
    cpus: int = 0  # from tres-alloc: allocated when running
    memory_mb: float = 0.0

    @property
    def started(self) -> bool:
        return self.state in ("running", "completing", "suspended") or (
            self.state in ENDED_STATES and self.start_time is not None and bool(self.nodes)
        )


def job_gpus(alloc: str, per_node: str, per_job: str, per_task: str, *, nodes: int, tasks: int) -> tuple[int, str]:
    """GPUs of a job: tres-alloc when it names them, else the request, whichever way it was made."""
    found = tres_alloc_gpus(alloc)
    if found is not None:
        return found
    total, gtype = 0, ""
    for text, factor in ((per_node, max(nodes, 1)), (per_job, 1), (per_task, max(tasks, 1))):
        request = tres_request_gpus(text)
        if request:
            total += request[0] * factor
            gtype = gtype or request[1]
    return total, gtype


@functools.lru_cache(maxsize=1 << 14)
def _resources(  # noqa: PLR0917 - positional for lru_cache
    alloc: str, per_node: str, per_job: str, per_task: str, nodes: int, tasks: int
) -> tuple[int, str, int, float]:
    """GPUs, GPU type, CPUs and memory of a job's TRES columns. Cached: jobs come in a few
    shapes, and parsing these strings was half of a 100k-job squeue's parse (bench/slurm_scale.py
    --shapes, in the collection process)."""
    gpus, gtype = job_gpus(alloc, per_node, per_job, per_task, nodes=nodes, tasks=tasks)
    cpus, memory = tres_cpus_memory(alloc)
    return gpus, gtype, cpus, memory


def parse(text: str, deadline: float | None = None) -> Parsed[Job]:
    result: Parsed[Job] = Parsed(deadline=deadline)
    for line, cols in result.rows(text, len(FIELDS)):
        (job_id, display_id, partition, user, account, state, submit, start, end, num_nodes, num_tasks) = cols[:11]
        alloc, per_node, per_job, per_task, nodes, reason = cols[11:]
        job_id = job_id.strip()
        nodes_n, tasks_n = parse_int(num_nodes), parse_int(num_tasks)
        if not job_id or not state.strip() or nodes_n is None:
            result.skip(line, "missing job id, state or node count")
            continue
        gpus, gtype, cpus, memory = _resources(alloc, per_node, per_job, per_task, nodes_n, tasks_n or 1)
        reason = reason[:-1] if reason.endswith("|") else reason
        result.items.append(
            Job(
                job_id=job_id,
                display_id=display_id.strip() or job_id,
                # A job submitted to several partitions lists them all; it waits in the first.
                partition=nullable(partition).split(",")[0],
                user=nullable(user),
                account=nullable(account),
                state=state.strip().lower(),
                reason=nullable(reason),
                submit_time=parse_time(submit),
                start_time=parse_time(start),
                end_time=parse_time(end),
                nodes=nullable(nodes),
                num_nodes=nodes_n,
                gpus=gpus,
                gpu_type=gtype,
                cpus=cpus,
                memory_mb=memory,
            )
        )
    return result


MAX_REASON = 64


def reason_label(reason: str) -> str:
    """A pending reason fit for a label: Slurm's reason code without the host or job lists some
    reasons carry (`ReqNodeNotAvail, UnavailableNodes:gpu-[01-40]` -> `ReqNodeNotAvail`), so the
    label takes a bounded set of values."""
    reason = reason.strip()
    if ":" in reason:
        reason = re.split(r"[,:]", reason, maxsplit=1)[0].strip()
    return reason[:MAX_REASON] or "none"
