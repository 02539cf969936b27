"""Reservations from `scontrol show reservation`: nodes, start, end, state and maintenance flag."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from exporters.slurm.collectors.base import SourceCollector
from exporters.slurm.parsers.reservations import Reservation


class ReservationsCollector(SourceCollector):
    name = "reservations"

    def families(self) -> Iterable[Metric]:
        items: list[Reservation] = self.items("reservations")
        info = GaugeMetricFamily(
            "slurm_reservation_info",
            "A reservation, its state (active/inactive) and node list (always 1).",
            labels=["reservation", "state", "nodes"],
        )
        nodes = GaugeMetricFamily("slurm_reservation_nodes", "Nodes in the reservation.", labels=["reservation"])
        start = GaugeMetricFamily(
            "slurm_reservation_start_time_seconds", "Unix time the reservation starts.", labels=["reservation"]
        )
        end = GaugeMetricFamily(
            "slurm_reservation_end_time_seconds", "Unix time the reservation ends.", labels=["reservation"]
        )
        maint = GaugeMetricFamily(
            "slurm_reservation_maintenance",
            "1 when the reservation has the MAINT flag (planned maintenance), else 0.",
            labels=["reservation"],
        )
        for res in sorted(items, key=lambda r: r.name):
            info.add_metric([res.name, res.state, res.nodes], 1)
            nodes.add_metric([res.name], res.node_count)
            start.add_metric([res.name], res.start)
            end.add_metric([res.name], res.end)
            maint.add_metric([res.name], 1 if res.maintenance else 0)
        return [info, nodes, start, end, maint]
