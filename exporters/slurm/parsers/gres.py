"""GRES and TRES strings in every shape Slurm 22.05 to 24.11 prints them.

GRES (sinfo `Gres`/`GresUsed`, scontrol `GRES=`)::

    gpu:h100:4            gpu:4               gpu:h100:4(S:0-1)
    gpu:h100:2(IDX:0-1)   gpu:h100:0(IDX:N/A) gpu:a100:2(S:0,1),gpu:h100:1(S:1)
    gpu:(null):8(IDX:0-7) gpu:(null):0(IDX:N/A)   (untyped GPUs: 21.08 and 24.05 print the
                                                   missing type as `(null)`)

TRES (squeue `tres-alloc`, `tres-per-node`, `tres-per-job`, `tres-per-task`)::

    cpu=2,mem=8G,node=1,billing=2,gres/gpu=1,gres/gpu:h100=1      (tres-alloc)
    gres:gpu:h100:2  (22.05)      gres/gpu:h100:2  (23.02+)      gpu:2
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from exporters.slurm.parsers.common import nullable, parse_mebibytes, split_top_level

UNTYPED = ""


@dataclass(frozen=True)
class Gres:
    name: str
    type: str  # "" when the GRES has no type
    count: int
    indices: tuple[int, ...] = ()


_GRES = re.compile(r"^(?P<body>[^()]+?)(?:\((?P<detail>[^)]*)\))?$")


def parse_index_list(text: str) -> tuple[int, ...]:
    """`0-1,3` -> (0, 1, 3); `N/A` or junk -> ()."""
    out: list[int] = []
    for raw in text.split(","):
        part = raw.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            return ()
        out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    return tuple(out)


def parse_gres(text: str) -> list[Gres] | None:
    """All GRES entries of a GRES string; None when it cannot be read (the caller counts an error)."""
    text = nullable(text)
    if not text or text.lower() == "none":
        return []
    entries: list[Gres] = []
    for item in split_top_level(text):
        # `(null)` is Slurm's printf of an unset type; its parentheses are not a detail part.
        match = _GRES.match(item.replace(":(null)", ":"))
        if not match:
            return None
        fields = [f for f in match.group("body").split(":") if f and f != "no_consume"]
        if not fields:
            return None
        name, rest = fields[0], fields[1:]
        count = 1
        if rest and _is_count(rest[-1]):
            count = _count(rest.pop())
        gtype = rest[0] if rest else UNTYPED
        indices: tuple[int, ...] = ()
        detail = match.group("detail") or ""
        if detail.startswith("IDX:"):
            indices = parse_index_list(detail[4:])
        entries.append(Gres(name=name, type=gtype, count=count, indices=indices))
    return entries


_COUNT = re.compile(r"^(\d+)([KMG]?)$")


def _is_count(text: str) -> bool:
    return bool(_COUNT.match(text))


def _count(text: str) -> int:
    match = _COUNT.match(text)
    assert match
    return int(match.group(1)) * {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3}[match.group(2)]


def gpus_by_type(text: str) -> dict[str, int] | None:
    """GPU count per type from a GRES string (`{"h100": 4}`; untyped GPUs under "")."""
    entries = parse_gres(text)
    if entries is None:
        return None
    out: dict[str, int] = {}
    for entry in entries:
        if entry.name == "gpu":
            out[entry.type] = out.get(entry.type, 0) + entry.count
    return out


def gpu_indices(text: str) -> dict[str, tuple[int, ...]]:
    """GPU indices per type from a GRES string with `(IDX:...)` details."""
    out: dict[str, tuple[int, ...]] = {}
    for entry in parse_gres(text) or []:
        if entry.name == "gpu" and entry.indices:
            out[entry.type] = out.get(entry.type, ()) + entry.indices
    return out


def tres_alloc_gpus(text: str) -> tuple[int, str] | None:
    """(GPU count, type) from a `tres-alloc` TRES string, None if it names no GPUs.

    tres-alloc carries GPUs only when slurm.conf's AccountingStorageTRES includes gres/gpu;
    the caller falls back to the request fields otherwise.
    """
    total: int | None = None
    typed: dict[str, int] = {}
    for item in nullable(text).split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not key.startswith("gres/gpu"):
            continue
        try:
            count = int(value)
        except ValueError:
            continue
        if key == "gres/gpu":
            total = count
        elif key.startswith("gres/gpu:"):
            typed[key[len("gres/gpu:") :]] = count
    if total is None and not typed:
        return None
    gtype = next(iter(typed)) if len(typed) == 1 else ""
    return (total if total is not None else sum(typed.values())), gtype


def tres_request_gpus(text: str) -> tuple[int, str] | None:
    """(GPU count, type) from a per-node/job/task TRES request (`gres:gpu:h100:2`, `gres/gpu:2`)."""
    text = nullable(text)
    if not text:
        return None
    total, gtype, found = 0, "", False
    for raw in text.split(","):
        item = raw.strip()
        for prefix in ("gres:", "gres/"):
            if item.startswith(prefix):
                item = item[len(prefix) :]
                break
        fields = item.split(":")
        if fields[0] != "gpu":
            continue
        rest = fields[1:]
        count = 1
        if rest and _is_count(rest[-1]):
            count = _count(rest.pop())
        if rest:
            gtype = rest[0]
        total += count
        found = True
    return (total, gtype) if found else None


def tres_cpus_memory(text: str) -> tuple[int, float]:
    """(CPUs, memory in MiB) from a `tres-alloc` TRES string (`cpu=2,mem=8G,...`); 0 when absent."""
    cpus, memory = 0, 0.0
    for item in nullable(text).split(","):
        key, sep, value = item.strip().partition("=")
        if not sep:
            continue
        if key == "cpu" and value.isdigit():
            cpus = int(value)
        elif key == "mem":
            memory = parse_mebibytes(value) or 0.0
    return cpus, memory
