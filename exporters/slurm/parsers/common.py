"""Pieces every Slurm output parser shares: results with error counts, times, sizes."""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
N = TypeVar("N", int, float)

# Slurm prints these where a value is not set.
NULL_VALUES = frozenset({"", "N/A", "n/a", "(null)", "None", "NONE", "Unknown", "UNKNOWN", "(N/A)"})


class ParseTimeout(RuntimeError):
    """Parsing ran past its deadline (the command's timeout covers reading and parsing)."""


_CHECK_EVERY = 1024  # lines between deadline checks: cheap, yet a few ms apart at most


@dataclass
class Parsed(Generic[T]):
    """What a parser read: the items, how many input lines it had to skip, and why (first few).

    `lines` counts the non-blank lines looked at, so a caller can tell output that was mostly
    unreadable from output that was mostly fine. `deadline` (monotonic) bounds the parse.
    """

    items: list[T] = field(default_factory=list)
    errors: int = 0
    samples: list[str] = field(default_factory=list)
    lines: int = 0
    deadline: float | None = None
    records: int = 0  # for record-based output (scontrol): how many records were found

    def check_deadline(self, done: int) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise ParseTimeout(f"parsing stopped after {done} lines: past the command timeout")

    def each_line(self, text: str) -> Iterator[str]:
        """The non-blank lines of `text`, counted, raising ParseTimeout past the deadline."""
        for number, line in enumerate(text.splitlines()):
            if number % _CHECK_EVERY == 0:
                self.check_deadline(number)
            if line.strip():
                self.lines += 1
                yield line

    def skip(self, line: str, why: str) -> None:
        self.errors += 1
        if len(self.samples) < 3:
            self.samples.append(f"{why}: {line[:200]!r}")

    def rows(self, text: str, width: int, *, free_text_last: bool = True) -> Iterator[tuple[str, list[str]]]:
        """Each non-blank line of `|`-separated output with its `width` fields; others are skipped.

        With `free_text_last` the last field keeps any further `|` (a reason an admin typed);
        without, a line with more fields is malformed.
        """
        for line in self.each_line(text):
            cols = line.split("|", width - 1) if free_text_last else line.split("|")
            if len(cols) != width:
                self.skip(line, f"expected {width} fields")
                continue
            yield line, cols


def nullable(value: str) -> str:
    value = value.strip()
    return "" if value in NULL_VALUES else value


def parse_time(value: str) -> float | None:
    """Unix time of a Slurm timestamp (`2024-05-01T10:00:00`, local time of slurmctld), else None.

    Slurm prints times without a zone in the controller's local time; the exporter runs on the
    head node, so its local zone is the right one.
    """
    value = value.strip()
    return _local_time(value) if len(value) == 19 else None


@functools.lru_cache(maxsize=1 << 16)
def _local_time(value: str) -> float | None:
    # By hand, not strptime: a 100k-job squeue has 300k timestamps, and strptime took 60 % of
    # its parse. Many repeat (jobs submitted together), hence the cache.
    if value[4] != "-" or value[7] != "-" or value[10] != "T" or value[13] != ":" or value[16] != ":":
        return None
    try:
        year, month, day = int(value[0:4]), int(value[5:7]), int(value[8:10])
        hour, minute, second = int(value[11:13]), int(value[14:16]), int(value[17:19])
    except ValueError:
        return None
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 62):
        return None
    return time.mktime((year, month, day, hour, minute, second, 0, 0, -1))


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([KMGTP]?)B?$", re.IGNORECASE)
_SIZE_FACTOR = {"": 1, "M": 1, "G": 1024, "T": 1024**2, "P": 1024**3}  # to MiB; K is divided


def parse_mebibytes(value: str) -> float | None:
    """Slurm memory sizes (`16000`, `100M`, `8G`, `1.50T`) in MiB; plain numbers are MiB already."""
    value = nullable(value)
    match = _SIZE.match(value)
    if not match:
        return None
    number, unit = float(match.group(1)), match.group(2).upper()
    if unit == "K":
        return number / 1024
    return number * _SIZE_FACTOR[unit]


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside parentheses: `gpu:a100:2(S:0,1),gpu:h100:1` has two entries."""
    parts: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth = max(0, depth - 1)
        if char == sep and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _number(value: str, kind: type[N]) -> N | None:
    value = nullable(value)
    try:
        return kind(value)
    except ValueError:
        return None


def parse_int(value: str) -> int | None:
    return _number(value, int)


def parse_float(value: str) -> float | None:
    return _number(value, float)
