"""`scontrol -o show reservation`: name, nodes, start, end, state and flags of each reservation.

Reservations are created by administrators, so their text is trusted as far as it goes; the
parser still reads each field by its own key and skips a line without a name or times.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from exporters.slurm.parsers.common import Parsed, nullable, parse_int, parse_time

ARGS = ["-o", "show", "reservation"]

_FIELD = {
    key: re.compile(rf"(?:^| ){key}=(\S*)")
    for key in ("ReservationName", "StartTime", "EndTime", "Nodes", "NodeCnt", "Flags", "State")
}


@dataclass(frozen=True)
class Reservation:
    name: str
    start: float
    end: float
    nodes: str  # hostlist
    node_count: int
    flags: frozenset[str]  # lower case: maint, spec_nodes, ...
    state: str  # active / inactive

    @property
    def maintenance(self) -> bool:
        return "maint" in self.flags


def parse(text: str, deadline: float | None = None) -> Parsed[Reservation]:
    result: Parsed[Reservation] = Parsed(deadline=deadline)
    for line in result.each_line(text):
        if line.startswith("No reservations"):
            continue
        fields = {key: (m.group(1) if (m := rx.search(line)) else "") for key, rx in _FIELD.items()}
        start, end = parse_time(fields["StartTime"]), parse_time(fields["EndTime"])
        if not line.startswith("ReservationName=") or not fields["ReservationName"] or start is None or end is None:
            result.skip(line, "no reservation name, start or end")
            continue
        result.items.append(
            Reservation(
                name=fields["ReservationName"],
                start=start,
                end=end,
                nodes=nullable(fields["Nodes"]),
                node_count=parse_int(fields["NodeCnt"]) or 0,
                flags=frozenset(f.lower() for f in nullable(fields["Flags"]).split(",") if f),
                state=nullable(fields["State"]).lower(),
            )
        )
    return result
