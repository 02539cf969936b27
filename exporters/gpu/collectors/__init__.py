"""The GPU exporter's collectors, one per file; `build_collectors` wires them to one sampler."""

from __future__ import annotations

from exporters.gpu.collectors.activity import ActivityCollector
from exporters.gpu.collectors.base import GpuCollector, GpuContext
from exporters.gpu.collectors.clocks import ClocksCollector
from exporters.gpu.collectors.device import DeviceCollector
from exporters.gpu.collectors.interconnect import InterconnectCollector
from exporters.gpu.collectors.memory import MemoryCollector
from exporters.gpu.collectors.power import PowerCollector
from exporters.gpu.collectors.processes import ProcessesCollector
from exporters.gpu.collectors.xid import XidCollector

# Dependency order: `device` first (it takes the cycle's sample); the poller runs them in this order.
COLLECTOR_CLASSES: tuple[type[GpuCollector], ...] = (
    DeviceCollector,
    ActivityCollector,
    ClocksCollector,
    MemoryCollector,
    PowerCollector,
    InterconnectCollector,
    XidCollector,
    ProcessesCollector,
)

__all__ = ["COLLECTOR_CLASSES", "GpuCollector", "GpuContext"]
