"""`scontrol -d show job`: which GPU indices on which node each running job holds.

Users write free text into a job record (JobName, Comment, WorkDir, StdOut, WCKey, ...), and
scontrol prints it raw, newlines included (verified on 22.05: `sbatch -J $'x\\n     Nodes=..'`
prints a line that looks exactly like a detail line). So this parser reads a record only by
its structure, never by searching for `Nodes=` or `GRES=` in text:

- a record starts at a line beginning `JobId=<digits> ` (column 0); its job id is that number;
- the lines `   UserId=`, `   JobState=`, `   JOB_GRES=` and `   MinCPUsNode=` each occur exactly
  once, in that order, and the detail lines (`     Nodes=<hostlist> CPU_IDs=.. Mem=.. GRES=..`)
  are exactly the lines between `JOB_GRES=` and `MinCPUsNode=`. No user-writable field prints
  between those two lines, so injected text can only land outside the block, where it makes a
  structural line repeat or a detail line stray: the record is then refused (a parse error);
- a job id seen in two records is refused in both (text injected after a record's block can
  forge a whole new record, but only under an id of its own choosing, and the real record of a
  running job always carries its own id).

What survives is cross-checked against squeue (which prints no user-writable field) by the GPU
collector: the job must be running there, on that node. Labels such as user and account come
from squeue too; this parser only yields (job id, node, GPU index, GPU type).
"""

from __future__ import annotations

import bisect
import re
from collections import Counter
from dataclasses import dataclass

from exporters.slurm.parsers.common import Parsed
from exporters.slurm.parsers.gres import gpu_indices
from exporters.slurm.parsers.hostlist import HostlistError, expand

ARGS = ["-d", "show", "job"]

_START = re.compile(r"JobId=(\d+) ")
_DETAIL = re.compile(r"^     Nodes=(\S+) CPU_IDs=\S* Mem=\S* GRES=(\S*)\s*$")
_STATE = re.compile(r"^   JobState=(\S+) ")
_RUNNING = "\n   JobState=RUNNING "
# Lines that are part of every record's structure: each must occur once, in this order.
_STRUCTURE = ("   UserId=", "   JobState=", "   JOB_GRES=", "   MinCPUsNode=")


@dataclass(frozen=True)
class JobGpu:
    job_id: str
    node: str
    gpu: int
    gpu_type: str


# Anchored on the newline, not on `^` with MULTILINE: a literal prefix lets the regex engine
# skip ahead at C speed (0.1 s instead of 2 s over 120 MB).
_STARTS = re.compile(r"\nJobId=(\d+) ")


def _records(result: Parsed[JobGpu], text: str) -> list[tuple[str, int, int]]:
    """(job id, begin, end) per record, found with one regex pass (a big queue is 100 MB).

    Records are not sliced out here: at 100,000 jobs copying each one cost more than the rest
    of the parse, and only running jobs' records are read at all (see parse).
    """
    starts: list[int] = []
    ids: list[str] = []
    first = _START.match(text)
    if first:
        starts.append(0)
        ids.append(first.group(1))
    for number, match in enumerate(_STARTS.finditer(text)):
        if number % 8192 == 0:
            result.check_deadline(number)
        starts.append(match.start() + 1)
        ids.append(match.group(1))
    head = text[: starts[0]] if starts else text
    for line in head.splitlines():
        if line.strip() and not line.startswith("No jobs"):
            result.lines += 1
            result.skip(line, "not part of a job record")
    ends = [*starts[1:], len(text)] if starts else []
    result.lines += len(starts)
    result.records = len(starts)
    return list(zip(ids, starts, ends, strict=True))


def _block(lines: list[str]) -> list[str] | None:
    """The detail lines of a well-formed record ([] when it has none); None when malformed."""
    positions: dict[str, int] = {}
    for number, line in enumerate(lines):
        for prefix in _STRUCTURE:
            if line.startswith(prefix):
                if prefix in positions:
                    return None  # a structural line twice: text was injected
                positions[prefix] = number
    user, state, gres, end = (positions.get(p) for p in _STRUCTURE)
    if user is None or state is None or end is None or not user < state < end:
        return None
    if gres is None:  # a job without GRES (or an older scontrol): no detail lines may exist
        block: list[str] = []
        first = end
    else:
        if not state < gres < end:
            return None
        block = lines[gres + 1 : end]
        first = gres + 1
    for number, line in enumerate(lines):
        if line.startswith("     Nodes=") and not first <= number < end:
            return None  # a detail line outside the block
    if any(not _DETAIL.match(line) for line in block):
        return None
    return block


def parse(text: str, deadline: float | None = None, only: str | None = None) -> Parsed[JobGpu]:
    """One entry per (running job, node, GPU index), from well-formed records only.

    With `only` (the output of `scontrol -d show job <id>`), records of any other job id are
    ignored: they can only come from text the job's user wrote.
    """
    result: Parsed[JobGpu] = Parsed(deadline=deadline)
    records = _records(result, text)
    if only is not None:
        records = [record for record in records if record[0] == only]
    seen = Counter(job_id for job_id, _, _ in records)
    # Most of a big queue is pending: find the running records' positions at C speed and read
    # only those (and the records whose id repeats, which are refused whatever their state).
    wanted = {number for number, (job_id, _, _) in enumerate(records) if seen[job_id] > 1}
    begins = [begin for _, begin, _ in records]
    found = text.find(_RUNNING)
    while found != -1:
        number = bisect.bisect_right(begins, found) - 1
        if number >= 0:
            wanted.add(number)
            found = text.find(_RUNNING, max(records[number][2], found + 1))
        else:
            found = text.find(_RUNNING, found + 1)
    for number in sorted(wanted):
        if number % 1024 == 0:
            result.check_deadline(number)
        job_id, begin, end = records[number]
        record = text[begin:end]
        if seen[job_id] > 1:
            result.skip(record[:200], f"job {job_id} appears in {seen[job_id]} records")
            continue
        if _RUNNING not in record:
            continue
        lines = record.splitlines()
        states = [m.group(1) for m in map(_STATE.match, lines) if m]
        block = _block(lines) if len(states) == 1 else None
        if block is None:
            result.skip(lines[0], "malformed job record (repeated or stray structural lines)")
            continue
        if states[0] != "RUNNING":
            continue
        try:
            for line in block:
                match = _DETAIL.match(line)
                assert match  # _block checked every line
                nodes = expand(match.group(1))
                for gtype, indices in gpu_indices(match.group(2)).items():
                    for node in nodes:
                        for index in indices:
                            result.items.append(JobGpu(job_id, node, index, gtype))
        except HostlistError as exc:
            result.skip(lines[0], str(exc))
    return result
