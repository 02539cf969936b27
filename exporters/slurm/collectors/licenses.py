"""Licenses from `scontrol show license`: total, used, free and reserved per license."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from exporters.slurm.collectors.base import SourceCollector
from exporters.slurm.parsers.licenses import License


class LicensesCollector(SourceCollector):
    name = "licenses"

    def families(self) -> Iterable[Metric]:
        items: list[License] = self.items("licenses")
        # Gauges, so no `_total` suffix on the count (promtool check metrics rejects it).
        specs = (
            ("slurm_licenses", "Licenses configured.", "total"),
            ("slurm_licenses_used", "Licenses held by jobs.", "used"),
            ("slurm_licenses_free", "Licenses free.", "free"),
            ("slurm_licenses_reserved", "Licenses held by reservations.", "reserved"),
        )
        families: list[Metric] = []
        for name, doc, attr in specs:
            family = GaugeMetricFamily(name, doc, labels=["license"])
            for lic in sorted(items, key=lambda x: x.name):
                family.add_metric([lic.name], getattr(lic, attr))
            families.append(family)
        return families
