"""The snapshot's own renderers must write exactly what prometheus_client writes.

They replace prometheus_client's generate_latest (text 0.0.4 and OpenMetrics) only for speed, so
every byte is compared against the library's output on a snapshot that uses every family type,
escaping in label values and HELP, special float values, timestamps and OpenMetrics-only
samples; and on a real GPU exporter snapshot (sim backend).
"""

from __future__ import annotations

import math
from pathlib import Path

from prometheus_client import exposition
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeHistogramMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
    SummaryMetricFamily,
    UnknownMetricFamily,
)
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.samples import Exemplar

from gpu_watchdog_core.snapshot import render_openmetrics, render_text

SPECIAL_VALUES = [
    0.0,
    -0.0,
    1.0,
    -1.5,
    3,
    10**7,
    123456789.0,
    1234567.125,
    1e22,
    -1e22,
    1e-10,
    5e-324,
    1.7976931348623157e308,
    math.inf,
    -math.inf,
    math.nan,
    0.1 + 0.2,
]
AWKWARD_LABELS = [
    "plain",
    "",
    'say "hi"',
    "back\\slash",
    "new\nline",
    'all \\ "three"\n',
    "ünïcødé ✓",
    "GPU-0a1b2c3d-0000-1111-2222-333344445555",
]


class _Families:
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def rich_families() -> list[Metric]:
    gauge = GaugeMetricFamily(
        "test_gauge_celsius", 'Help with "quotes", back\\slash and\na newline.', labels=["gpu", "uuid"]
    )
    for i, value in enumerate(SPECIAL_VALUES):
        gauge.add_metric([str(i), AWKWARD_LABELS[i % len(AWKWARD_LABELS)]], value)
    # A sample with a timestamp (the text format writes milliseconds, OpenMetrics seconds).
    gauge.add_metric(["99", "stamped"], 4.5, timestamp=1700000000.25)
    # Labels given out of order, and with a name that needs escaping: sorted and escaped.
    unsorted = Metric("test_unsorted", "Labels in any order.", "gauge")
    unsorted.add_sample("test_unsorted", {"zeta": "z", "alpha": 'a"b', "mid": "m"}, 1.0)
    unsorted.add_sample("test_unsorted", {}, 2.0)
    unsorted.add_sample("test_unsorted", {"odd.label-name": "x", "gpu": "0"}, 3.0)

    counter = CounterMetricFamily("test_errors", "Errors seen.", labels=["kind"], created=1700000000.0)
    counter.add_metric(["xid"], 7, created=1700000001.5)
    counter.add_metric(['q"uote\\'], 0)
    info = InfoMetricFamily("test_device", "Device facts.", labels=["gpu"])
    info.add_metric(["0"], {"serial": "1650\n123", "vbios": 'v"1\\'})
    stateset = StateSetMetricFamily("test_mode", "Mode.", labels=["gpu"])
    stateset.add_metric(["0"], {"on": True, "off": False})
    histogram = HistogramMetricFamily("test_latency_seconds", "Latency.", labels=["route"])
    histogram.add_metric(["/metrics"], [("0.005", 3), ("0.1", 8), ("+Inf", 9)], 0.42)
    gauge_histogram = GaugeHistogramMetricFamily("test_queue", "Queue.", labels=["q"])
    gauge_histogram.add_metric(["a"], [("1.0", 2), ("+Inf", 5)], gsum_value=7.5)
    summary = SummaryMetricFamily("test_summary_seconds", "Summary.", labels=["x"])
    summary.add_metric(["y"], count_value=4, sum_value=1.25)
    unknown = UnknownMetricFamily("test_unknown", "Unknown.", value=-3.25)
    with_unit = GaugeMetricFamily("test_memory_bytes", "Memory.", value=1 << 40, unit="bytes")
    no_help = GaugeMetricFamily("test_empty_help", "", value=math.nan)
    return [
        gauge,
        unsorted,
        counter,
        info,
        stateset,
        histogram,
        gauge_histogram,
        summary,
        unknown,
        with_unit,
        no_help,
    ]


def assert_same(families: list[Metric]) -> None:
    # Twice: the second render comes from the cross-cycle caches of names and label sets.
    for _ in range(2):
        assert render_text(families) == exposition.generate_latest(_Families(families))
        assert render_openmetrics(families) == om_exposition.generate_latest(_Families(families))


def test_rich_snapshot_is_byte_identical() -> None:
    families = rich_families()
    text = render_text(families).decode()
    # The snapshot does exercise what it claims to (a renderer that skipped them would still fail
    # the comparison, but this keeps the fixture honest).
    for needle in ('\\"hi\\"', "back\\\\slash", "new\\nline", "+Inf", "-Inf", "NaN", "1e+22", "test_errors_created"):
        assert needle in text, needle
    assert_same(families)


def test_openmetrics_exemplars_fall_back_to_prometheus_client() -> None:
    counter = CounterMetricFamily("test_requests", "Requests.", labels=["code"])
    counter.add_metric(["200"], 5)
    counter.samples[0] = counter.samples[0]._replace(exemplar=Exemplar({"trace_id": "abc"}, 1.0, 1700000000.0))
    families: list[Metric] = [counter, GaugeMetricFamily("test_after", "After.", value=1)]
    assert render_openmetrics(families) == om_exposition.generate_latest(_Families(families))


def test_gpu_exporter_snapshot_is_byte_identical(tmp_path: Path) -> None:
    from exporters.gpu.backend import NvmlBackend
    from exporters.gpu.cli import build, choose_collectors
    from exporters.gpu.sim import SimNvml
    from gpu_watchdog_core.poller import SnapshotPoller

    backend = NvmlBackend(SimNvml(gpus=4, faults_path=tmp_path / "none.yml"))
    backend.open()
    ctx, collectors = build(backend, choose_collectors(()), timeout=10, proc_roots=["/proc"])
    try:
        snapshot = SnapshotPoller("gpu_exporter", list(collectors), interval=60).collect_once()
        families = list(snapshot.families)
        assert len(families) > 30
        assert_same(families)
    finally:
        if ctx.xid:
            ctx.xid.stop()
        ctx.sampler.close()
        backend.close()
