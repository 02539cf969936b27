"""One collection cycle's GPU readings, taken in parallel with a per-GPU watchdog.

A wedged GPU can block an NVML call indefinitely. Each GPU therefore has its own worker
thread: a cycle hands every idle worker a sampling job and waits. A GPU whose read has run
longer than the timeout is reported down (`nvidia_gpu_up 0`, reason "timeout") and is not asked
again until its stuck call returns, so one hung GPU costs the others nothing. None of this runs
in the scrape path.

At most `parallelism` GPUs are read at once (a gate). With 64 worker threads all runnable, the
HTTP event loop was one of 65 threads queueing for the GIL and scrape p99 grew tenfold
(bench/gpu_scrape.py). The timeout runs from when a read gets through the gate, and a read that
times out gives its place back at once, so a hung GPU does not hold the gate shut.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future
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


class _Pass:
    """A job's place in the gate: given back once, by the job when it ends or by the sampler
    when the job overran its time (a hung call may never end)."""

    def __init__(self, gate: threading.Semaphore) -> None:
        self._gate = gate
        self._lock = threading.Lock()
        self.started: float | None = None  # monotonic time the job got through the gate
        self._held = False

    def enter(self) -> None:
        self._gate.acquire()
        with self._lock:
            self._held = True
            self.started = time.monotonic()

    def leave(self) -> None:
        with self._lock:
            if not self._held:
                return
            self._held = False
        self._gate.release()


class _GpuWorker:
    """One daemon thread per GPU: a call stuck in the driver blocks only this GPU, and never exit."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[Any], _Pass, Callable[..., Any], tuple[Any, ...]] | None] = (
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
            future, gate_pass, func, args = job
            if not future.set_running_or_notify_cancel():
                continue
            gate_pass.enter()
            try:
                result = func(*args)
            except BaseException as exc:
                gate_pass.leave()
                future.set_exception(exc)
            else:
                gate_pass.leave()
                future.set_result(result)

    def submit(self, gate_pass: _Pass, func: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._jobs.put((future, gate_pass, func, args))
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
        parallelism: int = 4,
        slow_fields: Iterable[FieldKey] = (),
        slow_every_s: float = 10.0,
    ) -> None:
        self.backend = backend
        self.reads = frozenset(reads)
        self.timeout = timeout
        self.before_cycle = before_cycle
        # Called with a GPU's index when it answers again after being down (a reset, a reload):
        # the XID watcher re-registers its events then.
        self.on_recovered = on_recovered
        self._base_fields = sorted(set(fields))
        # Slow-moving counters with many series (per-link NVLink errors: 54 fields per H100) are
        # read every `slow_every_s` only and their last values carried in between: they were most
        # of each GPU's batched field call (and of the exporter's CPU) for numbers that are
        # nearly always 0.
        self._slow_fields = sorted(set(slow_fields) - set(self._base_fields))
        self.slow_every_s = slow_every_s
        self._slow_values: dict[int, dict[FieldKey, float]] = {}
        self._slow_read_at: dict[int, float] = {}
        self._workers = [_GpuWorker(f"nvml-gpu{i}") for i in range(backend.count)]
        self._gate = threading.Semaphore(max(1, parallelism))
        self._passes: dict[int, _Pass] = {}
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

    def fields_for(self, index: int, slow: bool = True) -> list[FieldKey]:
        """NVLink fields exist per link: ask each GPU only for the links it has (it may change
        when a GPU whose handle was unavailable at start-up is acquired later)."""
        links = max(1, self.backend.static[index].nvlink_count)
        wanted = [*self._base_fields, *self._slow_fields] if slow else self._base_fields
        return [(f, s) for f, s in wanted if s < links or s == 0]

    def _slow_due(self, index: int, now: float) -> bool:
        return bool(self._slow_fields) and now - self._slow_read_at.get(index, -1e18) >= self.slow_every_s

    def _carry_slow(self, sample: GpuSample, read_slow: bool, now: float) -> None:
        if not sample.up or not self._slow_fields:
            return
        slow = set(self._slow_fields)
        if read_slow:
            self._slow_values[sample.index] = {k: v for k, v in sample.fields.items() if k in slow}
            self._slow_read_at[sample.index] = now
        else:
            sample.fields.update(self._slow_values.get(sample.index, {}))

    def refresh(self) -> list[GpuSample]:
        started = time.perf_counter()
        if self.before_cycle:
            self.before_cycle()
        futures: dict[int, Future[GpuSample]] = {}
        now = time.monotonic()
        slow_due = {i for i in range(self.backend.count) if self._slow_due(i, now)}
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
            gate_pass = _Pass(self._gate)
            self._passes[index] = gate_pass
            fields = self.fields_for(index, slow=index in slow_due)
            futures[index] = worker.submit(gate_pass, self.backend.sample, index, self.reads, fields)
        self._wait(futures)
        samples: list[GpuSample] = []
        for index in range(self.backend.count):
            future = futures.get(index) or self._pending.get(index)
            if future is not None and index in futures and future.done():
                try:
                    sample = future.result()
                    self._carry_slow(sample, index in slow_due, now)
                    samples.append(sample)
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

    def _wait(self, futures: dict[int, Future[GpuSample]]) -> None:
        """Until every read is done or has run `timeout` past its entry through the gate; an
        overrunning read gives its gate place back. Reads still queued at the gate after
        `parallelism`-many timeouts in a row count as timed out too (a bound on the cycle)."""
        started = time.monotonic()
        cap = started + self.timeout * 3
        while True:
            waiting = {i: f for i, f in futures.items() if not f.done()}
            if not waiting:
                return
            now = time.monotonic()
            next_check = now + self.timeout
            for index in list(waiting):
                entered = self._passes[index].started
                if entered is None:
                    continue
                if now - entered >= self.timeout:
                    self._passes[index].leave()  # hung: let the others through
                    del waiting[index]
                else:
                    next_check = min(next_check, entered + self.timeout)
            if not waiting or now >= cap:
                return
            wait_futures(waiting.values(), timeout=max(0.001, min(next_check, cap) - now), return_when=FIRST_COMPLETED)

    def close(self) -> None:
        for worker in self._workers:
            worker.shutdown()  # a hung call cannot be interrupted; its daemon thread is left behind
