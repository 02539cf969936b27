"""`interconnect`: PCIe replays and per-link NVLink error counters."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

from exporters.gpu.collectors.base import GPU_LABELS, GpuCollector, per_link

# H100 SXM has 18 NVLinks; the sampler asks each GPU only for the links it reports.
MAX_NVLINKS = 18
NVLINK_ERROR_FIELDS: dict[str, str] = {
    "crc": "NVML_FI_DEV_NVLINK_ERROR_DL_CRC",
    "replay": "NVML_FI_DEV_NVLINK_ERROR_DL_REPLAY",
    "recovery": "NVML_FI_DEV_NVLINK_ERROR_DL_RECOVERY",
}
PCIE_REPLAY = "NVML_FI_DEV_PCIE_REPLAY_COUNTER"


class InterconnectCollector(GpuCollector):
    name = "interconnect"
    fields = ((PCIE_REPLAY, 0), *per_link(NVLINK_ERROR_FIELDS.values(), MAX_NVLINKS))

    def collect(self) -> Iterable[Metric]:
        pcie = CounterMetricFamily(
            "nvidia_gpu_pcie_replay_errors",
            "PCIe link replays (retransmissions) since the driver loaded.",
            labels=GPU_LABELS,
        )
        nvlink = CounterMetricFamily(
            "nvidia_gpu_nvlink_errors",
            "NVLink data-link errors by link and type (crc, replay, recovery).",
            labels=[*GPU_LABELS, "link", "type"],
        )
        for static, sample, labels in self.ctx.readable():
            value = sample.field(PCIE_REPLAY)
            if value is not None:
                pcie.add_metric(labels, value)
            for link in range(static.nvlink_count):
                for kind, field_id in NVLINK_ERROR_FIELDS.items():
                    value = sample.field(field_id, link)
                    if value is not None:
                        nvlink.add_metric([*labels, str(link), kind], value)
        return [pcie, nvlink]
