"""Collection in a separate process: the serving process only swaps a reference and writes bytes.

With collection in a thread of the serving process, every collection cycle (NVML reads,
parsing 100,000 Slurm jobs, rendering thousands of series, gzip) holds Python's GIL in slices,
and a scrape that arrives meanwhile waits for it at every handoff: scrape p99 grew with the
GPU count and the job count (issues #16 and #17). Here the exporter re-runs its own command
line as a *collection process* (``GPU_WATCHDOG_COLLECTION_CHILD`` set), which runs the
collectors, renders both exposition formats, gzips them once per cycle and sends the finished
bytes down a pipe; the serving process reads them in a thread (the pipe read releases the
GIL) and swaps the snapshot it serves.

The serving process watches the collection process: one that exits or sends nothing for
``hang_after`` seconds is killed and started again (with back-off), and meanwhile the last good
snapshot is served with its growing ``_snapshot_age_seconds``, ``_collection_process_up 0`` and
a restart counter. SIGTERM to the serving process is passed on as SIGTERM (then SIGKILL after
a grace period) so the collection process can kill what it started (Slurm commands); a serving
process that dies outright takes the collection process with it (PR_SET_PDEATHSIG, and EOF on
the collection process's stdin).

Frame format, collection -> serving (the collection process's stdout; its fd 1 is pointed at
stderr so nothing else can write into the pipe): one JSON header line, then the payloads named
in it back to back.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from gpu_watchdog_core.poller import SnapshotPoller
from gpu_watchdog_core.snapshot import EMPTY_SNAPSHOT, Packed, Snapshot

log = logging.getLogger(__name__)

CHILD_ENV = "GPU_WATCHDOG_COLLECTION_CHILD"  # set (to the serving process's pid) in the child
DEADLINE_ENV = "GPU_WATCHDOG_STARTUP_DEADLINE"  # time.monotonic() value: shared across processes
HANG_ENV = "GPU_WATCHDOG_COLLECTION_HANG_AFTER"  # seconds without a snapshot before a restart
FRAME_VERSION = 1
MAX_HEADER = 64 * 1024
KILL_GRACE_S = 5.0
WATCH_EVERY_S = 0.25
MAX_BACKOFF_S = 30.0
PR_SET_PDEATHSIG = 1
NICE_ENV = "GPU_WATCHDOG_COLLECTION_NICE"
# Separate processes compete for CPU, not for the GIL: on a small or busy node a collection
# burst would still delay a scrape by a scheduler slice. At nice 10 the kernel runs the
# serving process first whenever both want a core; collection takes what is left.
DEFAULT_NICE = 10


def is_child() -> bool:
    return bool(os.environ.get(CHILD_ENV))


def startup_deadline(budget: float) -> float:
    """Monotonic deadline for everything before the first snapshot: the serving process's, when
    it passed one down (CLOCK_MONOTONIC is system-wide), so the port still opens within one
    budget of the exporter's start however long the collection process took to import."""
    inherited = os.environ.get(DEADLINE_ENV) if is_child() else None
    if inherited:
        try:
            return float(inherited)
        except ValueError:
            pass
    return time.monotonic() + budget


class ChildStartupFailed(RuntimeError):
    def __init__(self, code: int) -> None:
        super().__init__(f"collection process exited with status {code} before its first snapshot")
        self.code = code


# -- the collection process ---------------------------------------------------------------------


def _die_with_parent(parent: int) -> None:
    """SIGTERM when the serving process dies, even by SIGKILL (so Slurm commands are killed)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _frame(snapshot: Snapshot, health: tuple[bool, str], cycles: int) -> list[bytes]:
    text, om = snapshot.packed_text(), snapshot.packed_openmetrics()
    payloads = [text.body, text.gzip_prefix, om.body, om.gzip_prefix]
    header = {
        "v": FRAME_VERSION,
        "collected_at": snapshot.collected_at,
        "cycles": cycles,
        "health": [health[0], health[1]],
        "crc": [text.crc, om.crc],
        "sizes": [len(p) for p in payloads],
    }
    return [json.dumps(header).encode() + b"\n", *payloads]


def run_child(
    poller: SnapshotPoller,
    extra_health: Callable[[], tuple[bool, str]] | None,
    on_shutdown: Callable[[], None] | None,
) -> None:
    """The collection process's main: collect, render and send every cycle until told to stop."""
    frames = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # print() and friends go to stderr, never into the frame pipe
    sys.stdout = sys.stderr
    _die_with_parent(int(os.environ.get(CHILD_ENV) or 0))
    try:
        os.nice(int(os.environ.get(NICE_ENV) or DEFAULT_NICE))
    except (OSError, ValueError) as exc:
        log.warning("cannot lower the collection process's priority", extra={"error": str(exc)})
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, _frame: sys.exit(128 + signum))
    lock = threading.Lock()

    def send(snapshot: Snapshot) -> None:
        ok, reason = poller.health()
        if ok and extra_health is not None:
            ok, reason = extra_health()
        parts = _frame(snapshot, (ok, reason), poller.cycles)
        try:
            with lock:
                frames.writelines(parts)
                frames.flush()
        except (BrokenPipeError, ValueError):  # the serving process is gone
            os.kill(os.getpid(), signal.SIGTERM)

    poller.publish = send
    try:
        poller.collect_once()
        poller.start()
        # EOF on stdin: the serving process is gone (or closed it to stop us).
        while os.read(0, 4096):
            pass
    finally:
        poller.stop(2.0)
        if on_shutdown:
            on_shutdown()


# -- the serving process ------------------------------------------------------------------------


def _read_frame(stream: IO[bytes]) -> tuple[dict[str, Any], list[bytes]] | None:
    line = stream.readline(MAX_HEADER)
    if not line.endswith(b"\n"):
        return None
    header = json.loads(line)
    if header.get("v") != FRAME_VERSION:
        raise ValueError(f"unknown frame version {header.get('v')!r}")
    sizes = [int(n) for n in header["sizes"]]
    data = stream.read(sum(sizes))
    if len(data) < sum(sizes):
        return None
    payloads, at = [], 0
    for n in sizes:
        payloads.append(data[at : at + n])
        at += n
    return header, payloads


class ChildProcessPoller:
    """The serving process's side: starts, feeds from and watches the collection process."""

    def __init__(
        self,
        prefix: str,
        interval: float,
        *,
        argv: list[str] | None = None,
        startup_budget: float | None = None,
        startup_deadline: float | None = None,
        hang_after: float | None = None,
        stale_after: float | None = None,
    ) -> None:
        self.prefix = prefix
        self.interval = interval
        # The same command line, so the collection process parses the same flags and environment.
        self.argv = argv or [sys.executable, *sys.orig_argv[1:]]
        # Monotonic deadline of the first start-up (port open within one budget of the exporter's
        # start); a restarted collection process gets the same budget from its own start.
        self.startup_budget = startup_budget
        self.startup_deadline = startup_deadline
        if startup_deadline is None and startup_budget is not None:
            self.startup_deadline = time.monotonic() + startup_budget
        self.stale_after = stale_after if stale_after is not None else max(3 * interval, interval + 30)
        self.hang_after = hang_after if hang_after is not None else self.stale_after
        override = os.environ.get(HANG_ENV, "").strip()
        if override:
            try:
                self.hang_after = max(0.5, float(override))
            except ValueError:
                log.warning("ignoring %s=%r: not a number of seconds", HANG_ENV, override)
        self._snapshot: Snapshot = EMPTY_SNAPSHOT
        self._child_health: tuple[bool, str] = (False, "no collection cycle has finished yet")
        self._lock = threading.Lock()
        self._first = threading.Event()
        self._stop = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._spawned_at = 0.0
        self._last_frame = 0.0
        self._up = False
        self._restarts = 0
        self._failures = 0  # consecutive starts without a snapshot: back-off
        self._cycles = 0
        self._monitor: threading.Thread | None = None

    # -- process handling -----------------------------------------------------------------

    def _spawn(self) -> None:
        env = dict(os.environ)
        env[CHILD_ENV] = str(os.getpid())
        if self.startup_budget is not None:
            first = self._restarts == 0 and self.startup_deadline is not None
            deadline = self.startup_deadline if first else time.monotonic() + self.startup_budget
            env[DEADLINE_ENV] = repr(deadline)
        proc = subprocess.Popen(self.argv, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        with self._lock:
            self._proc = proc
            self._spawned_at = time.monotonic()
            self._up = True
        threading.Thread(target=self._reader, args=(proc,), name=f"{self.prefix}-frames", daemon=True).start()
        # Quiet the first time: a start-up error should be the one line on stderr (the child's).
        log.log(
            logging.INFO if self._restarts else logging.DEBUG, "collection process started", extra={"pid": proc.pid}
        )

    def _reader(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        while True:
            try:
                frame = _read_frame(proc.stdout)
            except (ValueError, KeyError, TypeError, OSError) as exc:
                log.error("bad frame from the collection process", extra={"pid": proc.pid, "error": str(exc)})
                self._kill(proc)
                return
            if frame is None:
                return
            header, (text, text_gz, om, om_gz) = frame
            crc_text, crc_om = header["crc"]
            snapshot = Snapshot.prerendered(
                float(header["collected_at"]), Packed(text, text_gz, int(crc_text)), Packed(om, om_gz, int(crc_om))
            )
            with self._lock:
                if proc is not self._proc:
                    return
                self._snapshot = snapshot
                self._child_health = (bool(header["health"][0]), str(header["health"][1]))
                self._last_frame = time.monotonic()
                self._up = True
                self._failures = 0
                self._cycles += 1
            self._first.set()

    def _kill(self, proc: subprocess.Popen[bytes]) -> None:
        """SIGTERM (the collection process kills what it started), SIGKILL after a grace period."""
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                log.error("collection process ignored SIGTERM; killing it", extra={"pid": proc.pid})
                proc.kill()
                proc.wait()
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()

    def _restart(self, why: str) -> None:
        with self._lock:
            proc = self._proc
            self._up = False
            self._restarts += 1
            self._failures += 1
            failures = self._failures
        log.error("collection process %s; restarting it", why, extra={"pid": proc.pid if proc else None})
        if proc is not None:
            self._kill(proc)
        # Back off when it keeps failing before its first snapshot (a broken config, a driver gone).
        if self._stop.wait(min(MAX_BACKOFF_S, 2.0 ** (failures - 1) - 1)):
            return
        self._spawn()

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_EVERY_S):
            with self._lock:
                proc, since = self._proc, max(self._last_frame, self._spawned_at)
            if proc is None:
                continue
            code = proc.poll()
            if code is not None:
                self._restart(f"exited with status {code}")
            elif time.monotonic() - since > self.hang_after:
                self._restart(f"sent no snapshot for {self.hang_after:g}s (hung)")

    # -- the poller interface ---------------------------------------------------------------

    def collect_once(self) -> Snapshot:
        """Start the collection process and wait for its first snapshot (at most the startup
        budget, a little more for the frame to arrive; else `hang_after`), so Prometheus does not
        see an empty exporter at start-up. A process that exits before it sent anything is a
        start-up error (bad flags, no driver): ChildStartupFailed with its exit status."""
        self._spawn()
        if self.startup_deadline is not None:
            deadline = self.startup_deadline + 0.5  # the frame's own way here
        else:
            deadline = time.monotonic() + self.hang_after
        proc = self._proc
        assert proc is not None
        while not self._first.wait(0.05):
            code = proc.poll()
            if code is not None and not self._first.is_set():
                self._kill(proc)
                raise ChildStartupFailed(code)
            if time.monotonic() > deadline:
                log.warning("no snapshot yet from the collection process; serving without one", extra={"pid": proc.pid})
                break
        return self._snapshot

    def start(self) -> None:
        if self._monitor is None:
            self._monitor = threading.Thread(target=self._watch, name=f"{self.prefix}-watch", daemon=True)
            self._monitor.start()

    def stop(self, timeout: float = KILL_GRACE_S) -> None:
        self._stop.set()
        if self._monitor is not None:
            self._monitor.join(timeout + KILL_GRACE_S)
            self._monitor = None
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is not None:
            self._kill(proc)

    @property
    def snapshot(self) -> Snapshot:
        return self._snapshot

    @property
    def cycles(self) -> int:
        return self._cycles

    @property
    def restarts(self) -> int:
        return self._restarts

    @property
    def child_pid(self) -> int | None:
        proc = self._proc
        return proc.pid if proc is not None else None

    def _child_up(self) -> bool:
        with self._lock:
            proc = self._proc
            return bool(self._up and proc is not None and proc.poll() is None)

    def dynamic_families(self, snapshot: Snapshot) -> list[Metric]:
        age = GaugeMetricFamily(
            f"{self.prefix}_snapshot_age_seconds", "Seconds since the served snapshot was collected."
        )
        age.add_metric([], snapshot.age_seconds() if snapshot.collected_at else float("nan"))
        up = GaugeMetricFamily(
            f"{self.prefix}_collection_process_up",
            "Whether the collection process is running (1) or being restarted (0); while 0 the last "
            "snapshot is served and its age grows.",
        )
        up.add_metric([], 1.0 if self._child_up() else 0.0)
        restarts = CounterMetricFamily(
            f"{self.prefix}_collection_process_restarts",
            "Times the collection process exited or hung and was started again.",
        )
        restarts.add_metric([], float(self._restarts))
        return [age, up, restarts]

    def health(self) -> tuple[bool, str]:
        snap = self._snapshot
        up = self._child_up()
        if not snap.collected_at:
            return False, "no collection cycle has finished yet" + ("" if up else " (collection process restarting)")
        age = snap.age_seconds()
        if age > self.stale_after:
            return False, f"snapshot is stale: {age:.1f}s old (interval {self.interval}s)" + (
                "" if up else f"; collection process restarting ({self._restarts} restarts)"
            )
        if not up:
            return True, f"degraded: collection process restarting; serving the snapshot from {age:.1f}s ago"
        return self._child_health
