"""`sdiag`: scheduler cycle times, queue lengths, job counters and RPC counts by type and user."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from exporters.slurm.parsers.common import Parsed

ARGS: list[str] = []

_VALUE = re.compile(r"^\s*([A-Za-z][A-Za-z ()/_-]*?):\s+(-?\d+)\s*$")
_RPC = re.compile(r"^\s*(\S+)\s+\(\s*(\d+)\)\s+count:(\d+)\s+ave_time:(\d+)\s+total_time:(\d+)")


@dataclass
class SchedulerStats:
    general: dict[str, int] = field(default_factory=dict)  # "Jobs submitted": 14, ...
    main: dict[str, int] = field(default_factory=dict)  # "Last cycle": 611 (microseconds), ...
    backfill: dict[str, int] = field(default_factory=dict)
    rpc_by_type: dict[str, tuple[int, int]] = field(default_factory=dict)  # type: (count, total_time µs)
    rpc_by_user: dict[str, tuple[int, int]] = field(default_factory=dict)


def parse(text: str, deadline: float | None = None) -> Parsed[SchedulerStats]:
    result: Parsed[SchedulerStats] = Parsed(deadline=deadline)
    stats = SchedulerStats()
    section = stats.general
    rpc_target: dict[str, tuple[int, int]] | None = None
    for line in result.each_line(text):
        stripped = line.strip()
        if not stripped or stripped.startswith("*"):
            continue
        lower = stripped.lower()
        if lower.startswith("main schedule statistics"):
            section, rpc_target = stats.main, None
            continue
        if lower.startswith("backfilling stats"):
            section, rpc_target = stats.backfill, None
            continue
        if lower.startswith("remote procedure call statistics by message type"):
            rpc_target = stats.rpc_by_type
            continue
        if lower.startswith("remote procedure call statistics by user"):
            rpc_target = stats.rpc_by_user
            continue
        if lower.startswith(("pending rpc statistics", "remote procedure call statistics by")):
            rpc_target = None
            section = {}
            continue
        if rpc_target is not None:
            match = _RPC.match(line)
            if match:
                rpc_target[match.group(1)] = (int(match.group(3)), int(match.group(5)))
            else:
                result.skip(line, "unreadable RPC line")
            continue
        match = _VALUE.match(line)
        if match:
            section[match.group(1).strip()] = int(match.group(2))
        # Other lines (dates, "Latency for 1000 calls ...", section notes) carry nothing we export.
    if not stats.general and not stats.main:
        result.skip(text[:200], "no sdiag statistics found")
    else:
        result.items.append(stats)
    return result
