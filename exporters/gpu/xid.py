"""XID errors from NVML's event API, on a dedicated thread.

`nvmlEventSetWait_v2` blocks until an event or a timeout; waiting with a short timeout lets
the thread stop promptly. Events that happen before registration are lost (NVML does not
replay them), so the thread registers at start-up, before the first collection. When several
XIDs arrive between two waits NVML reports the last code for all of them: we count each event.

A GPU that falls off the bus poisons the event set: every wait then raises GpuIsLost. The thread
counts wait errors by NVML error, frees the set and registers every GPU that still answers into a
new one, so the others' XIDs keep arriving. GPUs it could not register are retried every
`retry_s`, and a GPU that answers again after being down (a reset drops its registrations) is
registered again. Where the installed pynvml and the driver know them, the GPU-unavailable and
recovery-action event types are registered with the XIDs; a driver that refuses them gets XIDs only.

Each (GPU, XID) also keeps the wall-clock time of its first event in this process. The alert
rules need it: the counter series appears at its first XID already at 1, which increase() cannot
see, and only the exporter knows whether that first XID is recent or was counted long before
Prometheus started scraping it (docs/alert-rules.md).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pynvml

from exporters.gpu.backend import NvmlBackend, handle_key

log = logging.getLogger(__name__)

WAIT_MS = 500
RETRY_S = 5.0

XID = pynvml.nvmlEventTypeXidCriticalError
# Newer event types by label value, where the installed pynvml has them (13.x does, 12.535 not).
NEWER_EVENTS: dict[str, int] = {
    label: getattr(pynvml, name)
    for label, name in (
        ("gpu_unavailable", "nvmlEventTypeGpuUnavailableError"),
        ("recovery_action", "nvmlEventTypeGpuRecoveryAction"),
    )
    if hasattr(pynvml, name)
}


@dataclass
class XidState:
    counts: dict[tuple[int, int], int] = field(default_factory=dict)  # (gpu, xid) -> events
    first_seen: dict[tuple[int, int], float] = field(default_factory=dict)  # (gpu, xid) -> Unix time
    last: dict[int, int] = field(default_factory=dict)  # gpu -> latest xid
    registered: dict[int, bool] = field(default_factory=dict)  # gpu -> events registered
    events: dict[tuple[int, str], int] = field(default_factory=dict)  # (gpu, newer event type) -> events
    wait_errors: dict[str, int] = field(default_factory=dict)  # NVML error of a failed wait -> count
    rebuilds: int = 0  # event sets re-created after a failed wait


class XidWatcher:
    def __init__(self, backend: NvmlBackend, wait_ms: int = WAIT_MS, retry_s: float = RETRY_S) -> None:
        self.backend = backend
        self.wait_ms = wait_ms
        self.retry_s = retry_s
        self._lock = threading.Lock()
        self._state = XidState()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._event_set: Any = None
        self._by_handle: dict[int, int] = {}
        self._mask = XID | sum(NEWER_EVENTS.values())
        self._reregister: set[int] = set()  # GPUs that came back: register again (thread side)
        self._next_retry = 0.0

    @property
    def wait_errors(self) -> int:
        with self._lock:
            return sum(self._state.wait_errors.values())

    def register(self) -> None:
        """Create the event set and register every GPU (before the first cycle: NVML does not replay)."""
        nvml = self.backend.nvml
        try:
            self._event_set = nvml.nvmlEventSetCreate()
        except pynvml.NVMLError as exc:
            log.warning("XID events unavailable: cannot create an NVML event set", extra={"error": str(exc)})
            return
        self._by_handle = {}
        for index in range(self.backend.count):
            self._register(index)
        self._next_retry = time.monotonic() + self.retry_s

    def _register(self, index: int) -> bool:
        handle = self.backend.handles[index]
        ok = False
        if handle is not None:
            nvml = self.backend.nvml
            try:
                try:
                    nvml.nvmlDeviceRegisterEvents(handle, self._mask, self._event_set)
                except pynvml.NVMLError_NotSupported:
                    if self._mask == XID:
                        raise
                    # An older driver refuses the newer types: XIDs are what matter most.
                    log.info("driver refuses newer NVML event types; XIDs only", extra={"gpu": index})
                    self._mask = XID
                    nvml.nvmlDeviceRegisterEvents(handle, XID, self._event_set)
                ok = True
                self._by_handle[handle_key(handle)] = index
            except pynvml.NVMLError as exc:
                log.warning("XID events unavailable for GPU", extra={"gpu": index, "error": str(exc)})
        with self._lock:
            self._state.registered[index] = ok
        return ok

    def gpu_recovered(self, index: int) -> None:
        """A GPU answers again after being down: a reset dropped its registration, register again."""
        with self._lock:
            self._reregister.add(index)

    def start(self) -> None:
        if self._event_set is None or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="nvml-xid-events", daemon=True)
        self._thread.start()

    def _rebuild(self) -> None:
        """Free the (poisoned) event set and register every GPU that answers into a new one."""
        old, self._event_set = self._event_set, None
        if old is not None:
            with contextlib.suppress(pynvml.NVMLError):
                self.backend.nvml.nvmlEventSetFree(old)
        with self._lock:
            self._state.rebuilds += 1
            self._reregister.clear()
        self.register()

    def _housekeeping(self) -> None:
        with self._lock:
            again, self._reregister = self._reregister, set()
        if self._event_set is None:
            if time.monotonic() >= self._next_retry:
                self.register()
                self._next_retry = time.monotonic() + self.retry_s
            return
        if time.monotonic() >= self._next_retry:
            again |= {i for i, ok in self.snapshot().registered.items() if not ok}
            self._next_retry = time.monotonic() + self.retry_s
        for index in sorted(again):
            if self._register(index):
                log.info("XID events registered again", extra={"gpu": index})

    def _run(self) -> None:
        nvml = self.backend.nvml
        while not self._stop.is_set():
            self._housekeeping()
            if self._event_set is None:
                self._stop.wait(self.wait_ms / 1000)
                continue
            try:
                data = nvml.nvmlEventSetWait_v2(self._event_set, self.wait_ms)
            except pynvml.NVMLError_Timeout:
                continue
            except pynvml.NVMLError as exc:
                # GpuIsLost and friends: count it, back off rather than spin, then rebuild the set
                # without the GPU that poisoned it so the other GPUs' XIDs keep coming.
                name = type(exc).__name__.removeprefix("NVMLError_") or "NVMLError"
                with self._lock:
                    self._state.wait_errors[name] = self._state.wait_errors.get(name, 0) + 1
                log.warning("waiting for NVML events failed; re-creating the event set", extra={"error": str(exc)})
                self._stop.wait(self.wait_ms / 1000)
                if not self._stop.is_set():
                    self._rebuild()
                continue
            index = self._by_handle.get(handle_key(data.device))
            if index is None:
                continue
            if data.eventType & XID:
                self._count_xid(index, int(data.eventData))
            for label, bit in NEWER_EVENTS.items():
                if data.eventType & bit:
                    with self._lock:
                        key = (index, label)
                        self._state.events[key] = self._state.events.get(key, 0) + 1
                    log.warning("NVML event", extra={"gpu": index, "type": label, "data": int(data.eventData)})

    def _count_xid(self, index: int, xid: int) -> None:
        now = time.time()  # wall clock, not monotonic: the rules compare it with Prometheus's time()
        with self._lock:
            key = (index, xid)
            self._state.counts[key] = self._state.counts.get(key, 0) + 1
            self._state.first_seen.setdefault(key, now)
            self._state.last[index] = xid
        log.warning("XID error", extra={"gpu": index, "xid": xid})

    def snapshot(self) -> XidState:
        with self._lock:
            return XidState(
                counts=dict(self._state.counts),
                first_seen=dict(self._state.first_seen),
                last=dict(self._state.last),
                registered=dict(self._state.registered),
                events=dict(self._state.events),
                wait_errors=dict(self._state.wait_errors),
                rebuilds=self._state.rebuilds,
            )

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.wait_ms / 1000 * 4)
            self._thread = None
        if self._event_set is not None:
            with contextlib.suppress(pynvml.NVMLError):
                self.backend.nvml.nvmlEventSetFree(self._event_set)
            self._event_set = None
