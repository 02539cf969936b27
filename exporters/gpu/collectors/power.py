"""`power`: draw, enforced limit and energy counter (one batched field read, mW/mJ to SI)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from exporters.gpu.collectors.base import GPU_LABELS, GpuCollector

POWER = "NVML_FI_DEV_POWER_INSTANT"
LIMIT = "NVML_FI_DEV_POWER_CURRENT_LIMIT"
ENERGY = "NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION"


class PowerCollector(GpuCollector):
    name = "power"
    fields = ((POWER, 0), (LIMIT, 0), (ENERGY, 0))

    def collect(self) -> Iterable[Metric]:
        power = GaugeMetricFamily("nvidia_gpu_power_watts", "Current power draw.", labels=GPU_LABELS)
        limit = GaugeMetricFamily("nvidia_gpu_power_limit_watts", "Enforced power limit.", labels=GPU_LABELS)
        energy = CounterMetricFamily(
            "nvidia_gpu_energy_joules", "Energy consumed since the driver was loaded.", labels=GPU_LABELS
        )
        for _static, sample, labels in self.ctx.readable():
            for family, field_id, scale in ((power, POWER, 1e-3), (limit, LIMIT, 1e-3), (energy, ENERGY, 1e-3)):
                value = sample.field(field_id)
                if value is not None:
                    family.add_metric(labels, value * scale)
        return [power, limit, energy]
