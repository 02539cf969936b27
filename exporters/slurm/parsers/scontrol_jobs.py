"""`scontrol -d -o show job`: which GPU indices on which node each running job holds."""

from __future__ import annotations

import re
from dataclasses import dataclass

from exporters.slurm.parsers.common import Parsed, nullable
from exporters.slurm.parsers.gres import gpu_indices
from exporters.slurm.parsers.hostlist import HostlistError, expand

ARGS = ["-d", "-o", "show", "job"]

# Keys are single words followed by `=`; values may contain spaces (job names, reasons).
_KEY = re.compile(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_:/]*)=")


@dataclass(frozen=True)
class JobGpu:
    job_id: str
    user: str
    account: str
    node: str
    gpu: int
    gpu_type: str


def _pairs(line: str) -> list[tuple[str, str]]:
    matches = list(_KEY.finditer(line))
    pairs = []
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(line)
        pairs.append((match.group(1), line[match.end() : end].strip()))
    return pairs


def parse(text: str, deadline: float | None = None) -> Parsed[JobGpu]:
    """One entry per (running job, node, GPU index)."""
    result: Parsed[JobGpu] = Parsed(deadline=deadline)
    for line in result.each_line(text):
        if not line.startswith("JobId="):
            if line.strip() and not line.startswith("No jobs"):
                result.skip(line, "not a job line")
            continue
        if " JobState=RUNNING " not in line:  # most of a big queue is pending: skip it cheaply
            continue
        pairs = _pairs(line)
        fields = dict(pairs)
        if fields.get("JobState") != "RUNNING":
            continue
        job_id = fields.get("JobId", "")
        user = fields.get("UserId", "").split("(")[0]
        account = nullable(fields.get("Account", ""))
        try:
            node_group: list[str] = []
            for key, value in pairs:
                # The detail part repeats `Nodes=<hostlist> CPU_IDs=.. Mem=.. GRES=..` per layout.
                if key == "Nodes":
                    node_group = expand(value)
                elif key == "GRES" and node_group:
                    for gtype, indices in gpu_indices(value).items():
                        for node in node_group:
                            for index in indices:
                                result.items.append(JobGpu(job_id, user, account, node, index, gtype))
        except HostlistError as exc:
            result.skip(line, str(exc))
    return result
