"""`runpod_spend_dollars_total`: the cost of pod-time this exporter has observed RUNNING."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

from exporters.runpod.source import RunPodSource


class SpendCollector:
    name = "spend"

    def __init__(self, source: RunPodSource) -> None:
        self.source = source

    def collect(self) -> Iterable[Metric]:
        spend = CounterMetricFamily(
            "runpod_spend_dollars",
            "Accumulated cost of pod-time observed RUNNING (costPerHr x time between polls); "
            "starts at 0 when the exporter starts.",
        )
        spend.add_metric([], self.source.get().spend_dollars)
        return [spend]
