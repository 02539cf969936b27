"""`memory`: framebuffer use, ECC error counters, row remapping and retired pages."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from exporters.gpu.backend import READ_ECC_MODE, READ_MEMORY, READ_MIG
from exporters.gpu.collectors.base import GPU_LABELS, GpuCollector

# (type, counter) -> field id
ECC_FIELDS: dict[tuple[str, str], str] = {
    ("correctable", "volatile"): "NVML_FI_DEV_ECC_SBE_VOL_TOTAL",
    ("uncorrectable", "volatile"): "NVML_FI_DEV_ECC_DBE_VOL_TOTAL",
    ("correctable", "aggregate"): "NVML_FI_DEV_ECC_SBE_AGG_TOTAL",
    ("uncorrectable", "aggregate"): "NVML_FI_DEV_ECC_DBE_AGG_TOTAL",
}
REMAP_FIELDS: dict[str, str] = {
    "correctable": "NVML_FI_DEV_REMAPPED_COR",
    "uncorrectable": "NVML_FI_DEV_REMAPPED_UNC",
    "pending": "NVML_FI_DEV_REMAPPED_PENDING",
    "failure": "NVML_FI_DEV_REMAPPED_FAILURE",
}
RETIRED_FIELDS: dict[str, str] = {
    "single_bit_ecc": "NVML_FI_DEV_RETIRED_SBE",
    "double_bit_ecc": "NVML_FI_DEV_RETIRED_DBE",
}


class MemoryCollector(GpuCollector):
    name = "memory"
    reads = frozenset({READ_MEMORY, READ_ECC_MODE, READ_MIG})
    fields = tuple(
        (f, 0)
        for f in [
            *ECC_FIELDS.values(),
            *REMAP_FIELDS.values(),
            *RETIRED_FIELDS.values(),
            "NVML_FI_DEV_RETIRED_PENDING",
        ]
    )

    def collect(self) -> Iterable[Metric]:
        used = GaugeMetricFamily(
            "nvidia_gpu_memory_used_bytes",
            "Device memory in use (v2 memory API: without the driver's reserved memory, as nvidia-smi shows it).",
            labels=GPU_LABELS,
        )
        reserved = GaugeMetricFamily(
            "nvidia_gpu_memory_reserved_bytes",
            "Device memory the driver reserves for itself (v2 memory API only).",
            labels=GPU_LABELS,
        )
        total = GaugeMetricFamily("nvidia_gpu_memory_total_bytes", "Device memory installed.", labels=GPU_LABELS)
        ecc = CounterMetricFamily(
            "nvidia_gpu_ecc_errors",
            "ECC errors: type correctable (single-bit) or uncorrectable (double-bit); counter volatile "
            "(since the last driver load or reset) or aggregate (lifetime).",
            labels=[*GPU_LABELS, "type", "counter"],
        )
        remap = GaugeMetricFamily(
            "nvidia_gpu_remapped_rows",
            "Row remapping (Ampere and newer): rows remapped for correctable/uncorrectable errors; "
            "pending 1 = a remap waits for a GPU reset; failure 1 = a row could not be remapped (replace the GPU).",
            labels=[*GPU_LABELS, "state"],
        )
        retired = GaugeMetricFamily(
            "nvidia_gpu_retired_pages",
            "Pages retired (pre-Ampere dynamic page retirement), by cause.",
            labels=[*GPU_LABELS, "cause"],
        )
        pending = GaugeMetricFamily(
            "nvidia_gpu_retired_pages_pending",
            "1 when a page waits for retirement at the next reset.",
            labels=GPU_LABELS,
        )
        ecc_mode = GaugeMetricFamily(
            "nvidia_gpu_ecc_mode_enabled",
            "1 when ECC is on: state current (now) or pending (after the next reboot or reset).",
            labels=[*GPU_LABELS, "state"],
        )
        mig_labels = [*GPU_LABELS, "gpu_instance_id", "compute_instance_id", "mig_uuid"]
        mig_used = GaugeMetricFamily(
            "nvidia_gpu_mig_memory_used_bytes",
            "Device memory in use in a MIG instance (MIG mode only).",
            labels=mig_labels,
        )
        mig_total = GaugeMetricFamily(
            "nvidia_gpu_mig_memory_total_bytes", "Device memory of a MIG instance (MIG mode only).", labels=mig_labels
        )
        for _static, sample, labels in self.ctx.readable():
            for inst in sample.mig_instances:
                inst_labels = [*labels, str(inst.gpu_instance_id), str(inst.compute_instance_id), inst.uuid]
                if inst.memory_used_bytes is not None:
                    mig_used.add_metric(inst_labels, inst.memory_used_bytes)
                if inst.memory_total_bytes is not None:
                    mig_total.add_metric(inst_labels, inst.memory_total_bytes)
            if sample.ecc_mode_current is not None:
                ecc_mode.add_metric([*labels, "current"], float(sample.ecc_mode_current))
            if sample.ecc_mode_pending is not None:
                ecc_mode.add_metric([*labels, "pending"], float(sample.ecc_mode_pending))
            if sample.memory_used_bytes is not None:
                used.add_metric(labels, sample.memory_used_bytes)
            if sample.memory_total_bytes is not None:
                total.add_metric(labels, sample.memory_total_bytes)
            if sample.memory_reserved_bytes is not None:
                reserved.add_metric(labels, sample.memory_reserved_bytes)
            for (kind, counter), field_id in ECC_FIELDS.items():
                value = sample.field(field_id)
                if value is not None:
                    ecc.add_metric([*labels, kind, counter], value)
            for state, field_id in REMAP_FIELDS.items():
                value = sample.field(field_id)
                if value is not None:
                    remap.add_metric([*labels, state], value)
            for cause, field_id in RETIRED_FIELDS.items():
                value = sample.field(field_id)
                if value is not None:
                    retired.add_metric([*labels, cause], value)
            value = sample.field("NVML_FI_DEV_RETIRED_PENDING")
            if value is not None:
                pending.add_metric(labels, value)
        return [used, total, reserved, mig_used, mig_total, ecc_mode, ecc, remap, retired, pending]
