"""`device`: identity, up/down, utilization and temperature; it also takes the cycle's sample."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from exporters.gpu.backend import READ_CODEC, READ_FAN, READ_MIG, READ_PSTATE, READ_TEMPERATURE, READ_UTILIZATION
from exporters.gpu.collectors.base import GPU_LABELS, GpuCollector, GpuContext
from exporters.gpu.fields import short_name

_MIG_MODES = {0: "disabled", 1: "enabled"}
MEMORY_TEMP = "NVML_FI_DEV_MEMORY_TEMP"
# Drivers 570+ (Blackwell and later GPUs mostly): what the driver says must happen to the GPU.
RECOVERY_ACTION = "NVML_FI_DEV_GET_GPU_RECOVERY_ACTION"


class DeviceCollector(GpuCollector):
    name = "device"
    reads = frozenset({READ_UTILIZATION, READ_TEMPERATURE, READ_MIG, READ_PSTATE, READ_FAN, READ_CODEC})
    fields = ((MEMORY_TEMP, 0), (RECOVERY_ACTION, 0))

    def __init__(self, ctx: GpuContext) -> None:
        super().__init__(ctx)
        self._mig: dict[int, str] = {}
        self._errors: dict[tuple[int, str], int] = {}
        self._field_errors: dict[tuple[str, str], int] = {}

    def collect(self) -> Iterable[Metric]:
        sampler = self.ctx.sampler
        samples = sampler.refresh()
        backend = sampler.backend
        info = GaugeMetricFamily(
            "nvidia_gpu_info",
            "GPU identity; always 1.",
            labels=[
                *GPU_LABELS,
                "name",
                "pci_bus_id",
                "driver_version",
                "cuda_version",
                "mig_mode",
                "serial",
                "vbios_version",
                "board_part_number",
                "minor_number",
            ],
        )
        up = GaugeMetricFamily(
            "nvidia_gpu_up", "1 when the GPU answered NVML this cycle, 0 when lost or unreadable.", labels=GPU_LABELS
        )
        down = GaugeMetricFamily(
            "nvidia_gpu_down_reason",
            "1 for a GPU reported down (nvidia_gpu_up 0), with why: gpu_is_lost, no_permission, unknown or "
            "another NVML error (from the handle lookup or every call failing), timeout, not_read_yet.",
            labels=[*GPU_LABELS, "reason"],
        )
        calls = GaugeMetricFamily(
            "gpu_exporter_nvml_calls", "NVML calls made for this GPU in the last cycle.", labels=["gpu"]
        )
        for static, sample in zip(sampler.static, samples, strict=True):
            labels = [str(static.index), static.uuid]
            if sample.mig_mode is not None:
                self._mig[static.index] = _MIG_MODES.get(sample.mig_mode, str(sample.mig_mode))
            info.add_metric(
                [
                    *labels,
                    static.name,
                    static.pci_bus_id,
                    backend.driver_version,
                    backend.cuda_version,
                    self._mig.get(static.index, ""),
                    static.serial,
                    static.vbios_version,
                    static.board_part_number,
                    static.minor_number,
                ],
                1.0,
            )
            up.add_metric(labels, 1.0 if sample.up else 0.0)
            if not sample.up:
                down.add_metric([*labels, sample.reason or "unknown"], 1.0)
            calls.add_metric([str(static.index)], float(sample.calls))
            for error, count in sample.errors.items():
                key = (static.index, error)
                self._errors[key] = self._errors.get(key, 0) + count
            for field_key, count in sample.field_errors.items():
                self._field_errors[field_key] = self._field_errors.get(field_key, 0) + count
        errors = CounterMetricFamily(
            "gpu_exporter_nvml_errors",
            "NVML calls that failed (other than not supported), by GPU and NVML error.",
            labels=["gpu", "error"],
        )
        for (index, error), count in sorted(self._errors.items()):
            errors.add_metric([str(index), error], float(count))
        field_errors = CounterMetricFamily(
            "gpu_exporter_field_errors",
            "NVML field values that could not be read, summed over GPUs: by field (NVML_FI_DEV_ name without "
            "the prefix) and error (NotSupported, ..., NotInPynvml, NotInDriver); those series are left out.",
            labels=["field", "error"],
        )
        for (name, error), count in sorted(self._field_errors.items()):
            field_errors.add_metric([short_name(name), error], float(count))
        timeouts = CounterMetricFamily(
            "gpu_exporter_nvml_timeouts",
            "Cycles in which a GPU's NVML calls did not return within the watchdog timeout.",
            labels=["gpu"],
        )
        for index, count in enumerate(sampler.timeouts_total):
            timeouts.add_metric([str(index)], float(count))
        late = CounterMetricFamily(
            "gpu_exporter_nvml_late_samples_discarded",
            "Samples whose NVML calls returned after the watchdog deadline and were thrown away, not published.",
            labels=["gpu"],
        )
        for index, count in enumerate(sampler.late_discarded_total):
            late.add_metric([str(index)], float(count))
        sample_time = GaugeMetricFamily(
            "gpu_exporter_sample_duration_seconds", "Wall time of the last cycle's NVML reads, all GPUs in parallel."
        )
        sample_time.add_metric([], sampler.last_duration)

        util = GaugeMetricFamily(
            "nvidia_gpu_utilization_ratio",
            "Fraction of the last sample period during which a kernel ran on the GPU (0-1).",
            labels=GPU_LABELS,
        )
        mem_util = GaugeMetricFamily(
            "nvidia_gpu_memory_utilization_ratio",
            "Fraction of the last sample period during which device memory was read or written (0-1).",
            labels=GPU_LABELS,
        )
        temp = GaugeMetricFamily("nvidia_gpu_temperature_celsius", "GPU core temperature.", labels=GPU_LABELS)
        mem_temp = GaugeMetricFamily(
            "nvidia_gpu_memory_temperature_celsius", "HBM (device memory) temperature.", labels=GPU_LABELS
        )
        pstate = GaugeMetricFamily(
            "nvidia_gpu_pstate", "Performance state: 0 (P0, maximum performance) to 15 (minimum).", labels=GPU_LABELS
        )
        fan = GaugeMetricFamily(
            "nvidia_gpu_fan_speed_ratio",
            "Intended fan speed as a fraction of its maximum (GPUs with their own fan only).",
            labels=GPU_LABELS,
        )
        encoder = GaugeMetricFamily(
            "nvidia_gpu_encoder_utilization_ratio",
            "Fraction of time the video encoder (NVENC) was busy.",
            labels=GPU_LABELS,
        )
        decoder = GaugeMetricFamily(
            "nvidia_gpu_decoder_utilization_ratio",
            "Fraction of time the video decoder (NVDEC) was busy.",
            labels=GPU_LABELS,
        )
        recovery = GaugeMetricFamily(
            "nvidia_gpu_recovery_action",
            "What the driver says the GPU needs (NVML_GPU_RECOVERY_ACTION): 0 none, 1 GPU reset, 2 node reboot, "
            "3 drain P2P, 4 drain and reset (drivers that have the field).",
            labels=GPU_LABELS,
        )
        for _static, sample, labels in self.ctx.readable():
            if sample.utilization_gpu is not None:
                util.add_metric(labels, sample.utilization_gpu / 100.0)
            if sample.utilization_memory is not None:
                mem_util.add_metric(labels, sample.utilization_memory / 100.0)
            if sample.temperature_celsius is not None:
                temp.add_metric(labels, sample.temperature_celsius)
            for family, value in (
                (mem_temp, sample.field(MEMORY_TEMP)),
                (recovery, sample.field(RECOVERY_ACTION)),
                (pstate, None if sample.pstate is None else float(sample.pstate)),
                (fan, None if sample.fan_speed_percent is None else sample.fan_speed_percent / 100.0),
                (encoder, None if sample.encoder_utilization is None else sample.encoder_utilization / 100.0),
                (decoder, None if sample.decoder_utilization is None else sample.decoder_utilization / 100.0),
            ):
                if value is not None:
                    family.add_metric(labels, value)
        health = [mem_temp, pstate, fan, encoder, decoder, recovery]
        return [info, up, down, util, mem_util, temp, *health, calls, errors, field_errors, timeouts, late, sample_time]
