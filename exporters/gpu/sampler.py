"""One collection cycle's GPU readings, taken in parallel with a per-GPU watchdog.

A wedged GPU can block an NVML call indefinitely. Each GPU therefore has its own worker
thread: a cycle hands every idle worker a sampling job and waits until a deadline. A GPU whose
worker has not answered by then is reported down (`nvidia_gpu_up 0`, reason "timeout") and is
not asked again until its stuck call returns, so one hung GPU costs the others nothing and
never holds the cycle past the deadline. None of this runs in the scrape path.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from typing import Any

from exporters.gpu.backend import (
    REASON_EXPORTER_ERROR,
    REASON_NOT_READ_YET,
    REASON_TIMEOUT,
    FieldKey,
    GpuSample,
    GpuStatic,
    NvmlBackend,
)

log = logging.getLogger(__name__)


class _GpuWorker:
    """One daemon thread per GPU: a call stuck in the driver blocks only this GPU, and never exit."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...]] | None] = (
            queue.SimpleQueue()
        )
        # daemon: a call that never returns must not keep the process alive at shutdown
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            future, func, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(func(*args))
            except BaseException as exc:
                future.set_exception(exc)

    def submit(self, func: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._jobs.put((future, func, args))
        return future

    def shutdown(self) -> None:
        self._jobs.put(None)


class GpuSampler:
    """Holds the latest `GpuSample` per GPU; `refresh()` takes a new set (one cycle)."""

    def __init__(
        self,
        backend: NvmlBackend,
        reads: Iterable[str],
        fields: Iterable[FieldKey],
        timeout: float,
        *,
        before_cycle: Callable[[], None] | None = None,
        on_recovered: Callable[[int], None] | None = None,
    ) -> None:
        self.backend = backend
        self.reads = frozenset(reads)
        self.timeout = timeout
        self.before_cycle = before_cycle
        # Called with a GPU's index when it answers again after being down (a reset, a reload):
        # the XID watcher re-registers its events then.
        self.on_recovered = on_recovered
        self._base_fields = sorted(set(fields))
        self._workers = [_GpuWorker(f"nvml-gpu{i}") for i in range(backend.count)]
        self._pending: dict[int, Future[GpuSample]] = {}
        self._lock = threading.Lock()
        self.samples: list[GpuSample] = [
            GpuSample(index=i, up=False, error="not read yet", reason=REASON_NOT_READ_YET) for i in range(backend.count)
        ]
        self.timeouts_total = [0] * backend.count
        self.late_discarded_total = [0] * backend.count
        self.last_duration = 0.0

    @property
    def static(self) -> list[GpuStatic]:
        return self.backend.static

    def fields_for(self, index: int) -> list[FieldKey]:
        """NVLink fields exist per link: ask each GPU only for the links it has (it may change
        when a GPU whose handle was unavailable at start-up is acquired later)."""
        links = max(1, self.backend.static[index].nvlink_count)
        return [(f, s) for f, s in self._base_fields if s < links or s == 0]

    def refresh(self) -> list[GpuSample]:
        started = time.perf_counter()
        if self.before_cycle:
            self.before_cycle()
        futures: dict[int, Future[GpuSample]] = {}
        for index, worker in enumerate(self._workers):
            pending = self._pending.get(index)
            if pending is not None:
                if not pending.done():
                    continue  # still stuck in last cycle's call: do not pile more work on it
                # The stuck call came back, but its readings are from before the deadline it
                # missed: never publish them as this cycle's. Take a fresh sample instead.
                del self._pending[index]
                self.late_discarded_total[index] += 1
                log.info("late NVML sample discarded", extra={"gpu": index})
            futures[index] = worker.submit(self.backend.sample, index, self.reads, self.fields_for(index))
        if futures:
            wait_futures(futures.values(), timeout=self.timeout)
        samples: list[GpuSample] = []
        for index in range(self.backend.count):
            future = futures.get(index) or self._pending.get(index)
            if future is not None and index in futures and future.done():
                try:
                    samples.append(future.result())
                except Exception as exc:  # a bug in one GPU's read must not hide the others
                    log.exception("sampling GPU failed", extra={"gpu": index})
                    samples.append(
                        GpuSample(
                            index=index, up=False, error=f"{type(exc).__name__}: {exc}", reason=REASON_EXPORTER_ERROR
                        )
                    )
                continue
            if future is not None:
                if index not in self._pending:
                    self.timeouts_total[index] += 1
                    log.warning(
                        "NVML call did not return in time; GPU reported down",
                        extra={"gpu": index, "timeout_s": self.timeout},
                    )
                self._pending[index] = future
            samples.append(
                GpuSample(index=index, up=False, error="timeout: an NVML call did not return", reason=REASON_TIMEOUT)
            )
        if self.on_recovered is not None:
            for before, after in zip(self.samples, samples, strict=True):
                if after.up and not before.up and before.reason != REASON_NOT_READ_YET:
                    self.on_recovered(after.index)
        self.samples = samples
        self.last_duration = time.perf_counter() - started
        return samples

    def close(self) -> None:
        for worker in self._workers:
            worker.shutdown()  # a hung call cannot be interrupted; its daemon thread is left behind
