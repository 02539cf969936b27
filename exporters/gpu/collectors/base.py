"""What every GPU collector shares: the context (sampler, XID watcher, job resolver) and helpers.

Collectors do not call NVML themselves. Each declares the reads and field ids it needs; the
`device` collector, which always runs first, takes one sample of every GPU per cycle (one
batched field-values call plus a few plain calls per GPU) and the others turn that sample into
metric families. That keeps NVML calls per GPU per cycle fixed however many collectors run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import ClassVar

from prometheus_client.metrics_core import Metric

from exporters.gpu.attribution import JobResolver
from exporters.gpu.backend import FieldKey, GpuSample, GpuStatic
from exporters.gpu.sampler import GpuSampler
from exporters.gpu.xid import XidWatcher

GPU_LABELS = ["gpu", "uuid"]


@dataclass
class GpuContext:
    sampler: GpuSampler
    xid: XidWatcher | None
    jobs: JobResolver
    nvlink_per_link: bool = False  # --nvlink-per-link: NVLink counters keep their `link` label

    def readable(self) -> Iterator[tuple[GpuStatic, GpuSample, list[str]]]:
        """(static, sample, [gpu, uuid]) for each GPU that answered this cycle.

        A lost or hung GPU gets no value series at all: stale numbers from a dead GPU are worse
        than none, and `nvidia_gpu_up 0` says why they are missing.
        """
        for static, sample in zip(self.sampler.static, self.sampler.samples, strict=True):
            if sample.up:
                yield static, sample, [str(static.index), static.uuid]


class GpuCollector:
    name: str
    reads: ClassVar[frozenset[str]] = frozenset()
    fields: ClassVar[tuple[FieldKey, ...]] = ()
    # Read every 10 s only, last values carried between (sampler.py): many, slow-moving counters.
    slow_fields: ClassVar[tuple[FieldKey, ...]] = ()

    def __init__(self, ctx: GpuContext) -> None:
        self.ctx = ctx

    def collect(self) -> Iterable[Metric]:
        raise NotImplementedError


def per_link(names: Iterable[str], links: int) -> tuple[FieldKey, ...]:
    return tuple((f, link) for f in names for link in range(links))
