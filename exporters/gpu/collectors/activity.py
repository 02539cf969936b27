"""`activity`: DCGM-class activity ratios and link throughput from NVML GPM (Hopper and later).

`nvidia_gpu_utilization_ratio` says only that some kernel ran; an H100 running one small kernel
reads 100 %. GPM says how much of the GPU worked: SMs active, warps resident, tensor/FP pipes,
DRAM bandwidth, PCIe and NVLink bytes. Values are averages over the interval between two
collection cycles. GPUs without GPM (pre-Hopper, old drivers) export none of these series.
Mapping to dcgm-exporter's DCGM_FI_PROF_* names: docs/gpu-exporter.md.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from exporters.gpu.backend import READ_GPM, READ_MIG
from exporters.gpu.collectors.base import GPU_LABELS, GpuCollector

MIB = 1024 * 1024

# family name -> (GPM key, help): percent in NVML, a 0-1 ratio here.
RATIOS: dict[str, tuple[str, str]] = {
    "nvidia_gpu_graphics_engine_active_ratio": (
        "graphics_active",
        "Fraction of time the graphics/compute engine was active (DCGM_FI_PROF_GR_ENGINE_ACTIVE).",
    ),
    "nvidia_gpu_sm_active_ratio": (
        "sm_active",
        "Fraction of time at least one warp was active on an SM, averaged over SMs (DCGM_FI_PROF_SM_ACTIVE).",
    ),
    "nvidia_gpu_sm_occupancy_ratio": (
        "sm_occupancy",
        "Resident warps as a fraction of the SMs' maximum, averaged over time (DCGM_FI_PROF_SM_OCCUPANCY).",
    ),
    "nvidia_gpu_tensor_active_ratio": (
        "tensor_active",
        "Fraction of time any tensor core pipe was active (DCGM_FI_PROF_PIPE_TENSOR_ACTIVE).",
    ),
    "nvidia_gpu_dram_active_ratio": (
        "dram_active",
        "Device memory bandwidth used as a fraction of the maximum (DCGM_FI_PROF_DRAM_ACTIVE).",
    ),
}
PIPES = {"fp64": "fp64_active", "fp32": "fp32_active", "fp16": "fp16_active"}
THROUGHPUT = {
    "nvidia_gpu_pcie_throughput_bytes_per_second": ("pcie_tx", "pcie_rx", "PCIe"),
    "nvidia_gpu_nvlink_throughput_bytes_per_second": ("nvlink_tx", "nvlink_rx", "NVLink (all links)"),
}


class ActivityCollector(GpuCollector):
    name = "activity"
    reads = frozenset({READ_GPM, READ_MIG})

    def collect(self) -> Iterable[Metric]:
        ratios = {name: GaugeMetricFamily(name, text, labels=GPU_LABELS) for name, (_key, text) in RATIOS.items()}
        pipes = GaugeMetricFamily(
            "nvidia_gpu_pipe_active_ratio",
            "Fraction of time the non-tensor FP64/FP32/FP16 pipe was active (DCGM_FI_PROF_PIPE_FP64_ACTIVE, ...).",
            labels=[*GPU_LABELS, "pipe"],
        )
        throughput = {
            name: GaugeMetricFamily(
                name,
                f"{what} bytes per second, tx from the GPU / rx to it, averaged over the last cycle "
                f"(DCGM_FI_PROF_{'PCIE' if what == 'PCIe' else 'NVLINK'}_TX_BYTES/_RX_BYTES).",
                labels=[*GPU_LABELS, "direction"],
            )
            for name, (_tx, _rx, what) in THROUGHPUT.items()
        }
        mig_sm = GaugeMetricFamily(
            "nvidia_gpu_mig_sm_active_ratio",
            "SM activity of one MIG GPU instance (GPM per instance; DCGM_FI_PROF_SM_ACTIVE per instance).",
            labels=[*GPU_LABELS, "gpu_instance_id"],
        )
        mig_tensor = GaugeMetricFamily(
            "nvidia_gpu_mig_tensor_active_ratio",
            "Tensor pipe activity of one MIG GPU instance (GPM per instance).",
            labels=[*GPU_LABELS, "gpu_instance_id"],
        )
        for _static, sample, labels in self.ctx.readable():
            seen: set[int] = set()
            for inst in sample.mig_instances:
                if inst.gpu_instance_id in seen:  # one GPU instance may hold several compute instances
                    continue
                seen.add(inst.gpu_instance_id)
                for family, key in ((mig_sm, "sm_active"), (mig_tensor, "tensor_active")):
                    if key in inst.gpm:
                        family.add_metric([*labels, str(inst.gpu_instance_id)], inst.gpm[key] / 100.0)
            gpm = sample.gpm
            if not gpm:
                continue
            for name, (key, _text) in RATIOS.items():
                if key in gpm:
                    ratios[name].add_metric(labels, gpm[key] / 100.0)
            for pipe, key in PIPES.items():
                if key in gpm:
                    pipes.add_metric([*labels, pipe], gpm[key] / 100.0)
            for name, (tx, rx, _what) in THROUGHPUT.items():
                for direction, key in (("tx", tx), ("rx", rx)):
                    if key in gpm:
                        throughput[name].add_metric([*labels, direction], gpm[key] * MIB)
        return [*ratios.values(), pipes, *throughput.values(), mig_sm, mig_tensor]
