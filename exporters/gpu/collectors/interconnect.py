"""`interconnect`: PCIe link state and replays, NVLink error counters.

NVLink errors are summed over a GPU's links by default: per link they were 432 of 769 series at
8 GPUs, nearly all zero. `--nvlink-per-link` keeps the `link` label for finding the bad link.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from exporters.gpu.backend import READ_PCIE
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
    reads = frozenset({READ_PCIE})
    fields = ((PCIE_REPLAY, 0),)
    # 54 per-link fields per H100, nearly always 0: read every 10 s, not every cycle.
    slow_fields = per_link(NVLINK_ERROR_FIELDS.values(), MAX_NVLINKS)

    def collect(self) -> Iterable[Metric]:
        per_link_labels = self.ctx.nvlink_per_link
        gen = GaugeMetricFamily(
            "nvidia_gpu_pcie_link_generation",
            "PCIe generation the link runs at now (idle GPUs drop to a lower one to save power).",
            labels=GPU_LABELS,
        )
        width = GaugeMetricFamily("nvidia_gpu_pcie_link_width", "PCIe lanes the link runs with now.", labels=GPU_LABELS)
        max_gen = GaugeMetricFamily(
            "nvidia_gpu_pcie_link_max_generation",
            "Highest PCIe generation GPU and slot together support.",
            labels=GPU_LABELS,
        )
        max_width = GaugeMetricFamily(
            "nvidia_gpu_pcie_link_max_width", "Most PCIe lanes GPU and slot together support.", labels=GPU_LABELS
        )
        pcie = CounterMetricFamily(
            "nvidia_gpu_pcie_replay_errors",
            "PCIe link replays (retransmissions) since the driver loaded.",
            labels=GPU_LABELS,
        )
        nvlink = CounterMetricFamily(
            "nvidia_gpu_nvlink_errors",
            "NVLink data-link errors by type (crc, replay, recovery), summed over the GPU's links "
            "(per link with --nvlink-per-link).",
            labels=[*GPU_LABELS, "link", "type"] if per_link_labels else [*GPU_LABELS, "type"],
        )
        for static, sample, labels in self.ctx.readable():
            for family, number in (
                (gen, sample.pcie_generation),
                (width, sample.pcie_width),
                (max_gen, static.pcie_max_generation),
                (max_width, static.pcie_max_width),
            ):
                if number is not None:
                    family.add_metric(labels, float(number))
            value = sample.field(PCIE_REPLAY)
            if value is not None:
                pcie.add_metric(labels, value)
            for kind, name in NVLINK_ERROR_FIELDS.items():
                values = [(link, sample.field(name, link)) for link in range(static.nvlink_count)]
                if per_link_labels:
                    for link, v in values:
                        if v is not None:
                            nvlink.add_metric([*labels, str(link), kind], v)
                else:
                    read = [v for _link, v in values if v is not None]
                    if read:
                        nvlink.add_metric([*labels, kind], sum(read))
        return [gen, width, max_gen, max_width, pcie, nvlink]
