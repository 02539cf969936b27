"""The exporter's own view of Slurm: `slurm_up` and, per command, duration, success and age.

Always last in the collector list: it reads what the other collectors made the commands do
in this cycle, then closes the cycle.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from exporters.slurm.source import SlurmSource


class ExporterCollector:
    name = "exporter"

    def __init__(self, source: SlurmSource, info: dict[str, str]) -> None:
        self.source = source
        self.info = info

    def collect(self) -> Iterable[Metric]:
        ran = self.source.ran_this_cycle()
        self.source.end_cycle()
        up = GaugeMetricFamily(
            "slurm_up", "Whether every Slurm command of the last poll succeeded (1) or any failed/timed out (0)."
        )
        up.add_metric([], 1.0 if ran and all(s.fresh for s in ran.values()) else 0.0)
        duration = GaugeMetricFamily(
            "slurm_exporter_collect_duration_seconds", "Duration of the command's last run.", labels=["command"]
        )
        success = GaugeMetricFamily(
            "slurm_exporter_command_success", "Whether the command's last run succeeded.", labels=["command"]
        )
        last_ok = GaugeMetricFamily(
            "slurm_exporter_command_last_success_timestamp_seconds",
            "Unix time of the command's last success: the age of the data served for it.",
            labels=["command"],
        )
        failures = CounterMetricFamily(
            "slurm_exporter_command_failures", "Command runs that failed or timed out.", labels=["command"]
        )
        parse_errors = CounterMetricFamily(
            "slurm_exporter_parse_errors", "Output lines skipped because they could not be parsed.", labels=["command"]
        )
        for name, state in sorted(self.source.states.items()):
            if name in ran:
                duration.add_metric([name], state.last_duration)
                success.add_metric([name], 1.0 if state.fresh else 0.0)
            if state.last_success is not None:
                last_ok.add_metric([name], state.last_success)
            failures.add_metric([name], state.failures)
            parse_errors.add_metric([name], state.parse_errors)
        info = GaugeMetricFamily(
            "slurm_exporter_info", "Backend and Slurm version in use (always 1).", labels=sorted(self.info)
        )
        info.add_metric([self.info[k] for k in sorted(self.info)], 1)
        return [up, duration, success, last_ok, failures, parse_errors, info]
