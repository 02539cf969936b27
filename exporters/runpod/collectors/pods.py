"""Per-pod inventory: info, status state set, cost per hour, GPUs and uptime."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from exporters.runpod.source import KNOWN_STATUSES, RunPodSource


class PodsCollector:
    name = "pods"

    def __init__(self, source: RunPodSource) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        pods = self.source.get().pods
        info = GaugeMetricFamily(
            "runpod_pod_info",
            "RunPod pod facts (always 1); role is head/worker from WATCHDOG_ROLE or the pod name, "
            "node the Slurm node name (WATCHDOG_NODE_NAME, else the pod name).",
            labels=["pod_id", "name", "gpu_type", "image", "role", "node"],
        )
        status = GaugeMetricFamily(
            "runpod_pod_status",
            "The pod's desiredStatus as a state set: 1 for the current status, 0 for the others.",
            labels=["pod_id", "status"],
        )
        cost = GaugeMetricFamily(
            "runpod_pod_cost_per_hour_dollars", "What the pod costs per hour (costPerHr).", labels=["pod_id"]
        )
        gpus = GaugeMetricFamily("runpod_pod_gpus", "GPUs rented with the pod.", labels=["pod_id"])
        uptime = GaugeMetricFamily(
            "runpod_pod_uptime_seconds",
            "Seconds the pod's container has been up (0 while not running).",
            labels=["pod_id"],
        )
        for pod in pods:
            info.add_metric([pod.id, pod.name, pod.gpu_type, pod.image, pod.role, pod.node], 1)
            # An unknown status (new in the API) still gets its series rather than vanishing.
            statuses = KNOWN_STATUSES if pod.status in KNOWN_STATUSES else (*KNOWN_STATUSES, pod.status)
            for value in statuses:
                status.add_metric([pod.id, value], 1.0 if value == pod.status else 0.0)
            cost.add_metric([pod.id], pod.cost_per_hr)
            gpus.add_metric([pod.id], pod.gpus)
            uptime.add_metric([pod.id], pod.uptime_seconds)
        return [info, status, cost, gpus, uptime]
