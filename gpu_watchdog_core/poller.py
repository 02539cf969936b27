"""The background collection loop every exporter shares.

Like node_exporter, an exporter is a set of named collectors, each switchable and each
reporting its own success and duration. Unlike node_exporter, collection runs on a timer in a
background thread rather than per scrape: a scrape only reads the last :class:`Snapshot`, so
slow sources (NVML, slurmctld, a cloud API) never sit in the scrape path and their load does
not grow with the number of Prometheus servers.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, runtime_checkable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from gpu_watchdog_core.snapshot import EMPTY_SNAPSHOT, Snapshot

log = logging.getLogger(__name__)


@runtime_checkable
class Collector(Protocol):
    """One source of metric families. `collect()` may raise: the poller contains it."""

    name: str

    def collect(self) -> Iterable[Metric]: ...


@runtime_checkable
class SnapshotSource(Protocol):
    """What the HTTP side reads: the poller in this process, or the one fed by a collection
    process (childproc.py)."""

    @property
    def snapshot(self) -> Snapshot: ...

    def dynamic_families(self, snapshot: Snapshot) -> list[Metric]: ...

    def health(self) -> tuple[bool, str]: ...


class CollectorSelectionError(ValueError):
    pass


def select_collectors(available: Sequence[Collector], wanted: Sequence[str] | None) -> list[Collector]:
    """Pick collectors by name (`--collectors a,b`); None or empty means all of them."""
    names = [n.strip() for item in (wanted or ()) for n in item.split(",") if n.strip()]
    if not names:
        return list(available)
    by_name = {c.name: c for c in available}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise CollectorSelectionError(f"unknown collector(s) {', '.join(unknown)}; available: {', '.join(by_name)}")
    return [by_name[n] for n in names]


class SnapshotPoller:
    """Runs every collector once per interval and publishes an immutable snapshot.

    Self metrics, prefixed with the exporter's name (e.g. ``gpu_exporter``):
    ``_collector_success{collector}``, ``_collector_duration_seconds{collector}``,
    ``_collect_errors_total{collector}``, ``_last_collect_timestamp_seconds``, the whole
    cycle's duration (``cycle_duration_name``) and, rendered per scrape,
    ``_snapshot_age_seconds``.
    """

    def __init__(
        self,
        prefix: str,
        collectors: Sequence[Collector],
        interval: float,
        *,
        cycle_duration_name: str | None = None,
        stale_after: float | None = None,
        publish: Callable[[Snapshot], None] | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.prefix = prefix
        self.collectors = list(collectors)
        self.interval = interval
        self.cycle_duration_name = cycle_duration_name or f"{prefix}_collect_duration_seconds"
        self.stale_after = stale_after if stale_after is not None else max(3 * interval, interval + 30)
        self._errors: dict[str, int] = {c.name: 0 for c in self.collectors}
        self._last_error: dict[str, str] = {}
        self._snapshot: Snapshot = EMPTY_SNAPSHOT
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._cycles = 0
        # Called with every new snapshot, in the collecting thread (the collection process
        # sends it to the serving process from there).
        self.publish = publish

    # -- collection ---------------------------------------------------------------------

    def collect_once(self) -> Snapshot:
        """Run one cycle synchronously, publish and return its snapshot."""
        started = time.perf_counter()
        families: list[Metric] = []
        success = GaugeMetricFamily(
            f"{self.prefix}_collector_success",
            "Whether the collector's last run succeeded (1) or failed (0).",
            labels=["collector"],
        )
        duration = GaugeMetricFamily(
            f"{self.prefix}_collector_duration_seconds",
            "Duration of the collector's last run.",
            labels=["collector"],
        )
        for collector in self.collectors:
            t0 = time.perf_counter()
            ok = True
            try:
                families.extend(collector.collect())
            except Exception as exc:  # one broken source must not take down the others
                ok = False
                self._errors[collector.name] += 1
                message = f"{type(exc).__name__}: {exc}"
                if self._last_error.get(collector.name) != message:
                    log.warning("collector failed", extra={"collector": collector.name, "error": message})
                self._last_error[collector.name] = message
            else:
                if collector.name in self._last_error:
                    log.info("collector recovered", extra={"collector": collector.name})
                    del self._last_error[collector.name]
            success.add_metric([collector.name], 1.0 if ok else 0.0)
            duration.add_metric([collector.name], time.perf_counter() - t0)
        errors = CounterMetricFamily(
            f"{self.prefix}_collect_errors", "Collector runs that failed, by collector.", labels=["collector"]
        )
        for name, count in self._errors.items():
            errors.add_metric([name], float(count))
        finished = time.time()
        cycle = GaugeMetricFamily(self.cycle_duration_name, "Duration of the last full collection cycle.")
        cycle.add_metric([], time.perf_counter() - started)
        last = GaugeMetricFamily(
            f"{self.prefix}_last_collect_timestamp_seconds", "Unix time the last collection cycle finished."
        )
        last.add_metric([], finished)
        families.extend([success, duration, errors, cycle, last])
        snapshot = Snapshot(families=tuple(families), collected_at=finished)
        snapshot.text()  # render now, in this thread, so no scrape pays for it
        self._snapshot = snapshot
        self._cycles += 1
        if self.publish is not None:
            self.publish(snapshot)
        return snapshot

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def cycles(self) -> int:
        return self._cycles

    def dynamic_families(self, snapshot: Snapshot) -> list[Metric]:
        age = GaugeMetricFamily(
            f"{self.prefix}_snapshot_age_seconds", "Seconds since the served snapshot was collected."
        )
        age.add_metric([], snapshot.age_seconds() if snapshot.collected_at else float("nan"))
        return [age]

    def health(self) -> tuple[bool, str]:
        snap = self._snapshot
        if not snap.collected_at:
            return False, "no collection cycle has finished yet"
        age = snap.age_seconds()
        if age > self.stale_after:
            return False, f"snapshot is stale: {age:.1f}s old (interval {self.interval}s)"
        failing = sorted(self._last_error)
        if failing:
            return True, f"ok; failing collectors: {', '.join(failing)}"
        return True, "ok"

    # -- background loop ------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"{self.prefix}-poller", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        # A cycle already ran at start-up (see serve_exporter): wait one interval first.
        next_at = time.monotonic() + (self.interval if self._cycles else 0.0)
        while True:
            delay = next_at - time.monotonic()
            if self._stop.wait(max(0.0, delay)):
                return
            try:
                self.collect_once()
            except Exception:  # never let the loop die; the age metric shows the gap
                log.exception("collection cycle failed")
            # After a slow cycle, skip ahead instead of bursting to catch up.
            next_at = max(next_at + self.interval, time.monotonic())

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for collector in self.collectors:
            close = getattr(collector, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:
                    log.exception("closing collector failed", extra={"collector": collector.name})
