"""`power`: draw, enforced limit and energy counter (one batched field read, mW/mJ to SI)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from exporters.gpu.collectors.base import GPU_LABELS, GpuCollector

POWER = "NVML_FI_DEV_POWER_INSTANT"
LIMIT = "NVML_FI_DEV_POWER_CURRENT_LIMIT"
ENERGY = "NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
DEFAULT_LIMIT = "NVML_FI_DEV_POWER_DEFAULT_LIMIT"
MIN_LIMIT = "NVML_FI_DEV_POWER_MIN_LIMIT"
MAX_LIMIT = "NVML_FI_DEV_POWER_MAX_LIMIT"


class PowerCollector(GpuCollector):
    name = "power"
    fields = ((POWER, 0), (LIMIT, 0), (ENERGY, 0), (DEFAULT_LIMIT, 0), (MIN_LIMIT, 0), (MAX_LIMIT, 0))

    def collect(self) -> Iterable[Metric]:
        power = GaugeMetricFamily("nvidia_gpu_power_watts", "Current power draw.", labels=GPU_LABELS)
        limit = GaugeMetricFamily("nvidia_gpu_power_limit_watts", "Enforced power limit.", labels=GPU_LABELS)
        energy = CounterMetricFamily(
            "nvidia_gpu_energy_joules", "Energy consumed since the driver was loaded.", labels=GPU_LABELS
        )
        default = GaugeMetricFamily(
            "nvidia_gpu_power_default_limit_watts", "Power limit the GPU ships with.", labels=GPU_LABELS
        )
        low = GaugeMetricFamily(
            "nvidia_gpu_power_min_limit_watts", "Lowest power limit the GPU accepts.", labels=GPU_LABELS
        )
        high = GaugeMetricFamily(
            "nvidia_gpu_power_max_limit_watts", "Highest power limit the GPU accepts.", labels=GPU_LABELS
        )
        pairs = (
            (power, POWER),
            (limit, LIMIT),
            (energy, ENERGY),
            (default, DEFAULT_LIMIT),
            (low, MIN_LIMIT),
            (high, MAX_LIMIT),
        )
        for _static, sample, labels in self.ctx.readable():
            for family, name in pairs:
                value = sample.field(name)
                if value is not None:
                    family.add_metric(labels, value * 1e-3)  # mW, mJ -> W, J
        return [power, limit, energy, default, low, high]
