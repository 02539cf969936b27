"""The snapshot poller: per-collector success and duration, errors contained, rendering cached."""

from __future__ import annotations

import time
from collections.abc import Iterable

import pytest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from gpu_watchdog_core.poller import CollectorSelectionError, SnapshotPoller, select_collectors
from gpu_watchdog_core.snapshot import render_scrape, wants_openmetrics


class Const:
    def __init__(self, name: str, value: float = 1.0) -> None:
        self.name = name
        self.value = value
        self.calls = 0

    def collect(self) -> Iterable[Metric]:
        self.calls += 1
        g = GaugeMetricFamily(f"toy_{self.name}", "A toy gauge.")
        g.add_metric([], self.value)
        return [g]


class Broken:
    name = "broken"

    def collect(self) -> Iterable[Metric]:
        raise RuntimeError("source unreachable")


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_failing_collector_does_not_affect_others() -> None:
    poller = SnapshotPoller("toy_exporter", [Const("a", 3), Broken()], interval=1)
    poller.collect_once()
    snap = poller.collect_once()
    got = samples(snap.text())
    assert got[("toy_a", ())] == 3
    assert got[("toy_exporter_collector_success", (("collector", "a"),))] == 1
    assert got[("toy_exporter_collector_success", (("collector", "broken"),))] == 0
    assert got[("toy_exporter_collect_errors_total", (("collector", "broken"),))] == 2
    assert got[("toy_exporter_collect_errors_total", (("collector", "a"),))] == 0
    assert ("toy_exporter_collect_duration_seconds", ()) in got
    assert got[("toy_exporter_last_collect_timestamp_seconds", ())] == pytest.approx(time.time(), abs=5)
    ok, reason = poller.health()
    assert ok and "broken" in reason


def test_scrapes_never_call_collectors() -> None:
    source = Const("a")
    poller = SnapshotPoller("toy_exporter", [source], interval=1)
    snap = poller.collect_once()
    for _ in range(50):
        render_scrape(poller.snapshot, False, poller.dynamic_families)
        render_scrape(poller.snapshot, True, poller.dynamic_families)
    assert source.calls == 1
    assert poller.snapshot is snap


def test_dynamic_age_is_rendered_per_scrape() -> None:
    poller = SnapshotPoller("toy_exporter", [Const("a")], interval=1)
    poller.collect_once()
    time.sleep(0.05)
    body, ctype = render_scrape(poller.snapshot, False, poller.dynamic_families)
    assert ctype.startswith("text/plain; version=0.0.4")
    assert samples(body)[("toy_exporter_snapshot_age_seconds", ())] >= 0.05
    om, om_type = render_scrape(poller.snapshot, True, poller.dynamic_families)
    assert om_type.startswith("application/openmetrics-text")
    assert om.endswith(b"# EOF\n") and om.count(b"# EOF") == 1
    assert b"toy_exporter_snapshot_age_seconds" in om


def test_health_before_first_cycle_and_when_stale() -> None:
    poller = SnapshotPoller("toy_exporter", [Const("a")], interval=1, stale_after=0.01)
    assert poller.health()[0] is False
    poller.collect_once()
    time.sleep(0.02)
    ok, reason = poller.health()
    assert not ok and "stale" in reason


def test_background_loop_collects_on_interval() -> None:
    source = Const("a")
    poller = SnapshotPoller("toy_exporter", [source], interval=0.05)
    poller.start()
    try:
        time.sleep(0.5)
    finally:
        poller.stop()
    assert 5 <= source.calls <= 12


def test_select_collectors() -> None:
    a, b = Const("a"), Const("b")
    assert select_collectors([a, b], None) == [a, b]
    assert select_collectors([a, b], ["b"]) == [b]
    assert select_collectors([a, b], ["b,a"]) == [b, a]
    with pytest.raises(CollectorSelectionError, match="unknown collector"):
        select_collectors([a, b], ["c"])


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, False),
        ("text/plain", False),
        ("application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5", True),
        ("text/plain;version=0.0.4;q=0.5,*/*;q=0.1", False),
    ],
)
def test_content_negotiation(accept: str | None, expected: bool) -> None:
    assert wants_openmetrics(accept) is expected
