"""`clocks`: SM and memory clocks, why clocks are held down now, and for how long in total."""

from __future__ import annotations

from collections.abc import Iterable

import pynvml
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from exporters.gpu.backend import READ_CLOCK_REASONS, READ_CLOCKS
from exporters.gpu.collectors.base import GPU_LABELS, GpuCollector

# nvmlDeviceGetCurrentClocksEventReasons bits, by the `reason` label value (also the sim's names).
REASON_BITS: dict[str, int] = {
    "idle": pynvml.nvmlClocksEventReasonGpuIdle,
    "applications_clocks": pynvml.nvmlClocksEventReasonApplicationsClocksSetting,
    "power_cap": pynvml.nvmlClocksEventReasonSwPowerCap,
    "hw_slowdown": pynvml.nvmlClocksEventReasonHwSlowdown,
    "sync_boost": pynvml.nvmlClocksEventReasonSyncBoost,
    "sw_thermal": pynvml.nvmlClocksEventReasonSwThermalSlowdown,
    "thermal": pynvml.nvmlClocksEventReasonHwThermalSlowdown,
    "hw_power_brake": pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown,
    "display_clocks": pynvml.nvmlClocksEventReasonDisplayClockSetting,
}

# Accumulated time (ns) clocks were held down, as NVML fields (by name: the ids moved, fields.py).
DURATION_FIELDS: dict[str, str] = {
    "power_cap": "NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_POWER_CAP",
    "sync_boost": "NVML_FI_DEV_CLOCKS_EVENT_REASON_SYNC_BOOST",
    "sw_thermal": "NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN",
    "thermal": "NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN",
    "hw_power_brake": "NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN",
}

MHZ = 1_000_000.0


class ClocksCollector(GpuCollector):
    name = "clocks"
    reads = frozenset({READ_CLOCKS, READ_CLOCK_REASONS})
    fields = tuple((f, 0) for f in DURATION_FIELDS.values())

    def collect(self) -> Iterable[Metric]:
        sm = GaugeMetricFamily("nvidia_gpu_sm_clock_hertz", "Current SM clock.", labels=GPU_LABELS)
        mem = GaugeMetricFamily("nvidia_gpu_memory_clock_hertz", "Current memory clock.", labels=GPU_LABELS)
        reasons = GaugeMetricFamily(
            "nvidia_gpu_clocks_event_reasons",
            "1 when this reason currently holds the clocks down (throttling), else 0.",
            labels=[*GPU_LABELS, "reason"],
        )
        durations = CounterMetricFamily(
            "nvidia_gpu_clocks_event_duration_seconds",
            "Total time clocks were held down for this reason since the driver loaded.",
            labels=[*GPU_LABELS, "reason"],
        )
        for _static, sample, labels in self.ctx.readable():
            if sample.sm_clock_mhz is not None:
                sm.add_metric(labels, sample.sm_clock_mhz * MHZ)
            if sample.memory_clock_mhz is not None:
                mem.add_metric(labels, sample.memory_clock_mhz * MHZ)
            if sample.clocks_event_reasons is not None:
                for reason, bit in REASON_BITS.items():
                    reasons.add_metric([*labels, reason], 1.0 if sample.clocks_event_reasons & bit else 0.0)
            for reason, field_id in DURATION_FIELDS.items():
                value = sample.field(field_id)
                if value is not None:
                    durations.add_metric([*labels, reason], value / 1e9)
        return [sm, mem, reasons, durations]
