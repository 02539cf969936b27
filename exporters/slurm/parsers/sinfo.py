"""`sinfo -N` node lines: state, CPUs, memory, GPUs, reason, partitions."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from exporters.slurm.parsers.common import Parsed, nullable, parse_int, parse_mebibytes, parse_time
from exporters.slurm.parsers.gres import gpu_indices, gpus_by_type

# One line per (node, partition). `:|` after a field name means "no width limit, then a `|`":
# without it sinfo cuts values at 20 characters, long node names included.
FIELDS = (
    "NodeList",
    "Partition",
    "StateComplete",
    "StateLong",
    "CPUsState",
    "Memory",
    "AllocMem",
    "Gres",
    "GresUsed",
    "Timestamp",  # when the reason was set: drained/down since
    "Reason",
)
ARGS = ["-h", "-N", "-a", "-O", ",".join(f"{f}:|" for f in FIELDS)]

# A node name is a hostname; anything else means the line is not a node line at all.
_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# StateLong suffixes (sinfo(1) "NODE STATE CODES"): the flag each one stands for.
_SUFFIX_FLAGS = {
    "*": "not_responding",
    "~": "powered_down",
    "#": "powering_up",
    "!": "powering_down",
    "%": "powering_down",
    "$": "maintenance",
    "@": "reboot_requested",
    "^": "reboot_issued",
    "-": "planned",
}


@dataclass
class Node:
    name: str
    state: str  # sinfo's long state without suffixes: idle, mixed, drained, down, ...
    flags: frozenset[str]  # every flag StateComplete or the suffix names: drain, not_responding, ...
    # None: the field could not be read. Only that field's series go missing; the node stays.
    cpus_total: int | None
    cpus_allocated: int | None
    memory_mb: float | None
    memory_allocated_mb: float | None
    gpus_total: dict[str, int] | None
    gpus_allocated: dict[str, int] | None
    reason: str
    partitions: list[str] = field(default_factory=list)
    reason_time: float | None = None  # unix time the reason was set (sinfo's Timestamp)
    gpu_indices_used: dict[str, tuple[int, ...]] | None = None  # GresUsed's IDX per GPU type


def split_state(long_state: str, complete: str) -> tuple[str, frozenset[str]]:
    """(base state, flags) from StateLong (`drained*`) and StateComplete (`idle+drain+not_responding`)."""
    long_state = long_state.strip().lower()
    flags: set[str] = set()
    while long_state and long_state[-1] in _SUFFIX_FLAGS:
        flags.add(_SUFFIX_FLAGS[long_state[-1]])
        long_state = long_state[:-1]
    parts = [p for p in nullable(complete).lower().split("+") if p]
    if parts:
        flags.update(parts[1:])
        if not long_state:
            long_state = parts[0]
    return long_state or "unknown", frozenset(flags)


def parse(text: str, deadline: float | None = None) -> Parsed[Node]:
    """One Node per node name. A line is skipped only without a node name; any other field that
    cannot be read is counted as one error and left unset, so the node keeps its other series."""
    result: Parsed[Node] = Parsed(deadline=deadline)
    by_name: dict[str, Node] = {}
    for line, cols in result.rows(text, len(FIELDS)):
        name, partition, complete, long_state, cpus, memory, alloc_mem, gres, gres_used, stamp, reason = cols
        name = name.strip()
        partition = nullable(partition).rstrip("*")
        if not _NODE_NAME.match(name):
            result.skip(line, "bad node name")
            continue
        if name in by_name:  # the same node again, for another partition
            if partition and partition not in by_name[name].partitions:
                by_name[name].partitions.append(partition)
            continue
        cpu_parts = [parse_int(c) for c in cpus.split("/")]
        if len(cpu_parts) != 4 or any(c is None for c in cpu_parts):
            result.skip(line, "bad CPUsState")
            cpu_parts = [None, None, None, None]
        total_mem = parse_mebibytes(memory)
        if total_mem is None:
            result.skip(line, "bad Memory")
        alloc_mb = parse_mebibytes(alloc_mem) if nullable(alloc_mem) else 0.0
        if alloc_mb is None:
            result.skip(line, "bad AllocMem")
        gpus_total = gpus_by_type(gres)
        if gpus_total is None:
            result.skip(line, "bad Gres")
        gpus_used = gpus_by_type(gres_used)
        if gpus_used is None:
            result.skip(line, "bad GresUsed")
        state, flags = split_state(long_state, complete)
        reason = reason[:-1] if reason.endswith("|") else reason
        reason = nullable(reason)
        node = Node(
            name=name,
            state=state,
            flags=flags,
            cpus_total=cpu_parts[3],
            cpus_allocated=cpu_parts[0],
            memory_mb=total_mem,
            memory_allocated_mb=alloc_mb,
            gpus_total=gpus_total,
            gpus_allocated=gpus_used,
            reason="" if reason.lower() == "none" else reason,
            partitions=[partition] if partition else [],
            reason_time=parse_time(stamp),
            gpu_indices_used=gpu_indices(gres_used) if gpus_used is not None else None,
        )
        by_name[name] = node
        result.items.append(node)
    return result
