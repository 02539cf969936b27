"""XID errors from NVML's event API, on a dedicated thread.

`nvmlEventSetWait_v2` blocks until an event or a timeout; waiting with a short timeout lets
the thread stop promptly. Events that happen before registration are lost (NVML does not
replay them), so the thread registers at start-up, before the first collection. When several
XIDs arrive between two waits NVML reports the last code for all of them: we count each event.

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


@dataclass
class XidState:
    counts: dict[tuple[int, int], int] = field(default_factory=dict)  # (gpu, xid) -> events
    first_seen: dict[tuple[int, int], float] = field(default_factory=dict)  # (gpu, xid) -> Unix time
    last: dict[int, int] = field(default_factory=dict)  # gpu -> latest xid
    registered: dict[int, bool] = field(default_factory=dict)  # gpu -> events registered


class XidWatcher:
    def __init__(self, backend: NvmlBackend, wait_ms: int = WAIT_MS) -> None:
        self.backend = backend
        self.wait_ms = wait_ms
        self._lock = threading.Lock()
        self._state = XidState()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._event_set: Any = None
        self._by_handle: dict[int, int] = {}
        self.wait_errors = 0

    def register(self) -> None:
        """Create the event set and register every GPU for XID critical errors."""
        nvml = self.backend.nvml
        try:
            self._event_set = nvml.nvmlEventSetCreate()
        except pynvml.NVMLError as exc:
            log.warning("XID events unavailable: cannot create an NVML event set", extra={"error": str(exc)})
            return
        for index, handle in enumerate(self.backend.handles):
            ok = False
            try:
                nvml.nvmlDeviceRegisterEvents(handle, pynvml.nvmlEventTypeXidCriticalError, self._event_set)
                ok = True
                self._by_handle[handle_key(handle)] = index
            except pynvml.NVMLError as exc:
                log.warning("XID events unavailable for GPU", extra={"gpu": index, "error": str(exc)})
            self._state.registered[index] = ok

    def start(self) -> None:
        if self._event_set is None or not self._by_handle or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="nvml-xid-events", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        nvml = self.backend.nvml
        while not self._stop.is_set():
            try:
                data = nvml.nvmlEventSetWait_v2(self._event_set, self.wait_ms)
            except pynvml.NVMLError_Timeout:
                continue
            except pynvml.NVMLError as exc:
                # GpuIsLost and friends: back off briefly rather than spin, keep watching the others.
                self.wait_errors += 1
                log.debug("waiting for NVML events failed", extra={"error": str(exc)})
                self._stop.wait(self.wait_ms / 1000)
                continue
            if not data.eventType & pynvml.nvmlEventTypeXidCriticalError:
                continue
            index = self._by_handle.get(handle_key(data.device))
            if index is None:
                continue
            xid = int(data.eventData)
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
