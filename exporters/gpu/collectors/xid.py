"""`xid`: XID errors counted by the event thread (see exporters/gpu/xid.py), not by polling."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from exporters.gpu.collectors.base import GPU_LABELS, GpuCollector


class XidCollector(GpuCollector):
    name = "xid"

    def collect(self) -> Iterable[Metric]:
        if self.ctx.xid is None:
            return []
        state = self.ctx.xid.snapshot()
        uuids = {s.index: s.uuid for s in self.ctx.sampler.static}
        errors = CounterMetricFamily(
            "nvidia_gpu_xid_errors", "XID errors reported by the driver, by XID code.", labels=[*GPU_LABELS, "xid"]
        )
        # An explicit gauge rather than the counter's `_created` sample: whether Prometheus ingests
        # `_created` at all depends on its version, the exposition format it negotiates and its
        # feature flags (created-timestamp-zero-ingestion), and it is not queryable as a series
        # everywhere. The alert rules need this stamp to tell a new XID from an old one on a
        # fresh Prometheus (alert_rules/gpu.rules.yml, node_gpu_xid:...:increase15m).
        first_seen = GaugeMetricFamily(
            "nvidia_gpu_xid_first_seen_timestamp_seconds",
            "Unix time this exporter process counted its first XID of this code on this GPU.",
            labels=[*GPU_LABELS, "xid"],
        )
        last = GaugeMetricFamily(
            "nvidia_gpu_last_xid",
            "Code of the latest XID error since the exporter started, 0 if none.",
            labels=GPU_LABELS,
        )
        registered = GaugeMetricFamily(
            "gpu_exporter_xid_events_registered",
            "1 when the exporter receives this GPU's XID events from NVML, 0 when it cannot.",
            labels=GPU_LABELS,
        )
        events = CounterMetricFamily(
            "nvidia_gpu_nvml_events",
            "NVML events other than XIDs, by type (gpu_unavailable, recovery_action), where pynvml and the "
            "driver support them.",
            labels=[*GPU_LABELS, "type"],
        )
        for (index, kind), count in sorted(state.events.items()):
            events.add_metric([str(index), uuids.get(index, ""), kind], float(count))
        wait_errors = CounterMetricFamily(
            "gpu_exporter_xid_wait_errors",
            "Failed waits for NVML events, by NVML error; each re-creates the event set without the GPU at fault.",
            labels=["error"],
        )
        for error, count in sorted(state.wait_errors.items()):
            wait_errors.add_metric([error], float(count))
        # XID series stay for a lost GPU: the XID that took it down (79) is the evidence.
        for (index, code), count in sorted(state.counts.items()):
            labels = [str(index), uuids.get(index, ""), str(code)]
            errors.add_metric(labels, float(count))
            first_seen.add_metric(labels, state.first_seen[(index, code)])
        for index, uuid in sorted(uuids.items()):
            last.add_metric([str(index), uuid], float(state.last.get(index, 0)))
            registered.add_metric([str(index), uuid], 1.0 if state.registered.get(index) else 0.0)
        return [errors, first_seen, last, registered, events, wait_errors]
