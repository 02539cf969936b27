"""`processes`: which processes (and which Slurm jobs) hold each GPU, and their memory."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from exporters.gpu.backend import READ_PROCESSES
from exporters.gpu.collectors.base import GPU_LABELS, GpuCollector


class ProcessesCollector(GpuCollector):
    name = "processes"
    reads = frozenset({READ_PROCESSES})

    def collect(self) -> Iterable[Metric]:
        info = GaugeMetricFamily(
            "nvidia_gpu_process_info",
            "A compute process on the GPU and its Slurm job (slurm_job_id empty outside a job); always 1.",
            labels=[*GPU_LABELS, "pid", "slurm_job_id"],
        )
        memory = GaugeMetricFamily(
            "nvidia_gpu_process_memory_used_bytes",
            "Device memory used by the process.",
            labels=["gpu", "pid", "slurm_job_id"],
        )
        mig = GaugeMetricFamily(
            "nvidia_gpu_process_mig_instance_info",
            "The MIG GPU and compute instance a process runs in (MIG mode only); always 1.",
            labels=[*GPU_LABELS, "pid", "gpu_instance_id", "compute_instance_id"],
        )
        for static, sample, labels in self.ctx.readable():
            # A pid with contexts in several MIG instances is listed once per instance: one series each.
            used: dict[int, float | None] = {}
            for proc in sample.processes:
                if proc.used_memory_bytes is None:
                    used.setdefault(proc.pid, None)
                else:
                    used[proc.pid] = (used.get(proc.pid) or 0.0) + proc.used_memory_bytes
            for pid_number, used_bytes in used.items():
                pid = str(pid_number)
                job = self.ctx.jobs.job_id(pid_number)
                info.add_metric([*labels, pid, job], 1.0)
                if used_bytes is not None:
                    memory.add_metric([str(static.index), pid, job], used_bytes)
            for proc in sample.processes:
                if proc.gpu_instance_id is not None:
                    pid = str(proc.pid)
                    mig.add_metric([*labels, pid, str(proc.gpu_instance_id), str(proc.compute_instance_id or 0)], 1.0)
        return [info, memory, mig]
