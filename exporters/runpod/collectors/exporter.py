"""The exporter's view of the RunPod API: `runpod_api_up`, poll duration, errors, backoff.

Always last in the collector list: it reports the poll the other collectors made in this
cycle (or makes it, when they are all switched off), then closes the cycle.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from exporters.runpod.source import RunPodSource


class ExporterCollector:
    name = "exporter"

    def __init__(self, source: RunPodSource, info: dict[str, str], budget: float | None = None) -> None:
        self.source = source
        self.info = info
        self.budget = budget

    def collect(self) -> Iterable[Metric]:
        state = self.source.get()
        self.source.end_cycle()
        up = GaugeMetricFamily(
            "runpod_api_up",
            "Whether the last RunPod API poll succeeded (1) or failed or is backing off (0); "
            "pod series are then the last good poll.",
        )
        up.add_metric([], 1.0 if state.fresh else 0.0)
        duration = GaugeMetricFamily(
            "runpod_exporter_api_poll_duration_seconds", "Duration of the last RunPod API call."
        )
        duration.add_metric([], state.last_duration)
        errors = CounterMetricFamily(
            "runpod_exporter_api_errors", "RunPod API polls that failed, by reason.", labels=["reason"]
        )
        for reason, count in state.errors.items():
            errors.add_metric([reason], count)
        families: list[Metric] = [up, duration, errors]
        if state.last_success is not None:
            last = GaugeMetricFamily(
                "runpod_exporter_api_last_success_timestamp_seconds",
                "Unix time of the last successful poll: the age of the pod data served.",
            )
            last.add_metric([], state.last_success)
            families.append(last)
        backoff = GaugeMetricFamily(
            "runpod_exporter_api_backoff_seconds", "Seconds until the next API call is allowed after failures."
        )
        backoff.add_metric([], self.source.backoff_remaining())
        pods = GaugeMetricFamily("runpod_exporter_pods", "Pods in the served pod list (after --name-prefix).")
        pods.add_metric([], len(state.pods))
        info = GaugeMetricFamily("runpod_exporter_info", "Exporter settings (always 1).", labels=sorted(self.info))
        info.add_metric([self.info[k] for k in sorted(self.info)], 1)
        if self.budget is not None:
            # Configuration, not a measurement: it rides along so the deploy sets the budget in
            # one place (the exporter's flags) instead of editing the rule files.
            budget = GaugeMetricFamily(
                "runpod_budget_dollars_per_hour", "The hourly spend budget set with --budget-dollars-per-hour."
            )
            budget.add_metric([], self.budget)
            families.append(budget)
        return [*families, backoff, pods, info]
