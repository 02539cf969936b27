"""Expand Slurm hostlists (`gpu[01-03,07],login1`) into node names."""

from __future__ import annotations

import re

from exporters.slurm.parsers.common import nullable

_BRACKET = re.compile(r"\[([^\]]*)\]")
MAX_HOSTS = 100_000  # a malformed range must not eat the exporter's memory


class HostlistError(ValueError):
    pass


def _split(text: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p for p in (p.strip() for p in parts) if p]


def _expand_one(pattern: str) -> list[str]:
    match = _BRACKET.search(pattern)
    if not match:
        if "[" in pattern or "]" in pattern:
            raise HostlistError(f"unbalanced brackets in {pattern!r}")
        return [pattern]
    prefix, suffix = pattern[: match.start()], pattern[match.end() :]
    names: list[str] = []
    for part in match.group(1).split(","):
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise HostlistError(f"bad range {part!r} in {pattern!r}")
        width = len(lo)
        stop = int(hi) if sep else int(lo)
        if stop - int(lo) > MAX_HOSTS:
            raise HostlistError(f"range {part!r} too large")
        for number in range(int(lo), stop + 1):
            names.extend(_expand_one(f"{prefix}{number:0{width}d}{suffix}"))
    return names


def expand(hostlist: str) -> list[str]:
    """All node names of a hostlist; HostlistError when it is malformed."""
    text = nullable(hostlist)
    if not text:
        return []
    names: list[str] = []
    for part in _split(text):
        names.extend(_expand_one(part))
        if len(names) > MAX_HOSTS:
            raise HostlistError("hostlist too large")
    return names
