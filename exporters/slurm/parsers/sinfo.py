"""`sinfo -N` node lines: state, CPUs, memory, GPUs, reason, partitions."""

from __future__ import annotations

from dataclasses import dataclass, field

from exporters.slurm.parsers.common import Parsed, nullable, parse_int, parse_mebibytes
from exporters.slurm.parsers.gres import gpus_by_type

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
    "Reason",
)
ARGS = ["-h", "-N", "-a", "-O", ",".join(f"{f}:|" for f in FIELDS)]

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
    cpus_total: int
    cpus_allocated: int
    memory_mb: float
    memory_allocated_mb: float
    gpus_total: dict[str, int]
    gpus_allocated: dict[str, int]
    reason: str
    partitions: list[str] = field(default_factory=list)


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


def parse(text: str) -> Parsed[Node]:
    result: Parsed[Node] = Parsed()
    by_name: dict[str, Node] = {}
    for line, cols in result.rows(text, len(FIELDS)):
        name, partition, complete, long_state, cpus, memory, alloc_mem, gres, gres_used, reason = cols
        name = name.strip()
        partition = nullable(partition).rstrip("*")
        if name in by_name:  # the same node again, for another partition
            if partition and partition not in by_name[name].partitions:
                by_name[name].partitions.append(partition)
            continue
        cpu_parts = [parse_int(c) for c in cpus.split("/")]
        total_mem = parse_mebibytes(memory)
        gpus_total = gpus_by_type(gres)
        gpus_used = gpus_by_type(gres_used)
        if not name or len(cpu_parts) != 4 or any(c is None for c in cpu_parts) or total_mem is None:
            result.skip(line, "bad node name, CPUsState or Memory")
            continue
        if gpus_total is None or gpus_used is None:
            result.skip(line, "bad Gres or GresUsed")
            continue
        state, flags = split_state(long_state, complete)
        reason = reason[:-1] if reason.endswith("|") else reason
        reason = nullable(reason)
        node = Node(
            name=name,
            state=state,
            flags=flags,
            cpus_total=cpu_parts[3] or 0,
            cpus_allocated=cpu_parts[0] or 0,
            memory_mb=total_mem,
            memory_allocated_mb=parse_mebibytes(alloc_mem) or 0.0,
            gpus_total=gpus_total,
            gpus_allocated=gpus_used,
            reason="" if reason.lower() == "none" else reason,
            partitions=[partition] if partition else [],
        )
        by_name[name] = node
        result.items.append(node)
    return result
