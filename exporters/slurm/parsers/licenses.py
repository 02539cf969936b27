"""`scontrol -o show license`: total, used, free and reserved count of each license."""

from __future__ import annotations

import re
from dataclasses import dataclass

from exporters.slurm.parsers.common import Parsed, parse_int

ARGS = ["-o", "show", "license"]

_LINE = re.compile(r"^LicenseName=(\S+) Total=(\d+) Used=(\d+) Free=(\d+)(?: Reserved=(\d+))?")


@dataclass(frozen=True)
class License:
    name: str
    total: int
    used: int
    free: int
    reserved: int


def parse(text: str, deadline: float | None = None) -> Parsed[License]:
    result: Parsed[License] = Parsed(deadline=deadline)
    for line in result.each_line(text):
        if "No licenses configured" in line:
            continue
        match = _LINE.match(line)
        if not match:
            result.skip(line, "not a license line")
            continue
        name, total, used, free, reserved = match.groups()
        result.items.append(License(name, int(total), int(used), int(free), parse_int(reserved or "0") or 0))
    return result
