"""One poll per cycle: each Slurm command runs at most once per cycle, whoever needs it.

Several collectors read the same command (sinfo feeds nodes, partitions and GPUs); the
source runs it the first time a collector asks in a cycle and hands the same result to the
rest. A command that fails keeps its last good result, marked stale, so collectors go on
serving it while `slurm_up` drops to 0.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from exporters.slurm.backend import Backend, UnreadableOutput
from exporters.slurm.commands import CommandError
from exporters.slurm.parsers.common import Parsed

log = logging.getLogger(__name__)


@dataclass
class CommandState:
    data: Parsed[Any] | None = None  # last good result
    fresh: bool = False  # data came from this cycle
    generation: int = 0  # +1 per successful fetch; stateful metrics count each result once
    last_success: float | None = None  # unix time
    last_began: float | None = None  # unix time the run that gave `data` started (read-ahead: its own start)
    last_duration: float = 0.0
    failures: int = 0
    parse_errors: int = 0
    error: str = ""


# The one command read ahead: the full job dump the GPU map needs when many GPU jobs share nodes.
AHEAD = "scontrol"


class SlurmSource:
    def __init__(self, backend: Backend, read_ahead: bool = True) -> None:
        self.backend = backend
        # The full `scontrol -d show job` dump (needed when more than the backend's detail_limit
        # running GPU jobs share nodes) is only known to be needed after squeue has been read.
        # Run one after the other they cost squeue + scontrol (7 s at 100k jobs); so when the
        # last poll needed the dump, this one starts it at the beginning of the cycle, beside
        # squeue, and the GPU collector takes its result. A dump not needed after all is dropped.
        self.read_ahead = read_ahead
        self._want_dump = False
        self._ahead: Future[tuple[Parsed[Any], float, float]] | None = None
        self.states: dict[str, CommandState] = {}
        self._ran_this_cycle: set[str] = set()
        self._consumers: set[str] = set()
        self._lock = threading.Lock()
        self._unreachable = ""
        self.after_cycle: list[Callable[[], None]] = []  # run once each cycle has ended

    def begin(self, consumer: str) -> None:
        """A collector starts reading; a collector seen twice means a new cycle began."""
        with self._lock:
            if consumer in self._consumers:
                self._new_cycle()
            if not self._consumers:
                self._start_ahead()
            self._consumers.add(consumer)

    def _start_ahead(self) -> None:
        """Start the full job dump in the background when the last poll needed it."""
        if not (self.read_ahead and self._want_dump) or self._ahead is not None:
            return
        future: Future[tuple[Parsed[Any], float, float]] = Future()

        def run() -> None:
            began, started = time.time(), time.perf_counter()
            try:
                parsed = self.backend.fetch(AHEAD)
            except BaseException as exc:  # handed to the collector, which fails the command
                future.set_exception(exc)
            else:
                future.set_result((parsed, time.perf_counter() - started, began))

        self._ahead = future
        threading.Thread(target=run, name="slurm-read-ahead", daemon=True).start()

    def _full_dump(self, job_ids: Sequence[str] | None) -> bool:
        return job_ids is None or len(job_ids) > getattr(self.backend, "detail_limit", 0)

    def end_cycle(self) -> None:
        with self._lock:
            self._new_cycle()
        for hook in self.after_cycle:
            hook()

    def failing(self) -> dict[str, str]:
        """Commands whose last run failed, with why."""
        with self._lock:
            return {name: state.error for name, state in sorted(self.states.items()) if state.error}

    def _new_cycle(self) -> None:
        if self._ahead is not None and AHEAD not in self._ran_this_cycle:
            self._want_dump = False  # nobody asked for it this cycle: stop reading ahead
        self._ahead = None  # an unused dump is dropped (its thread ends on its own)
        self._consumers.clear()
        self._ran_this_cycle.clear()
        self._unreachable = ""

    def get(self, command: str, job_ids: Sequence[str] | None = None) -> CommandState:
        """This cycle's state of `command`, running it if nobody has yet (`job_ids`: see the backend)."""
        with self._lock:
            state = self.states.setdefault(command, CommandState())
            if command in self._ran_this_cycle:
                return state
            self._ran_this_cycle.add(command)
            began, started = time.time(), time.perf_counter()
            try:
                if self._unreachable:
                    # Every client retries a dead controller for ~9 s: pay that once per cycle.
                    raise CommandError(f"skipped: {self._unreachable}")
                ahead = None
                if command == AHEAD:
                    full = self._full_dump(job_ids)
                    self._want_dump = full
                    ahead, self._ahead = (self._ahead, None) if full else (None, self._ahead)
                if ahead is not None:
                    # The command timeout already bounds the dump's own run.
                    parsed, ran_for, began = ahead.result()
                    started = time.perf_counter() - ran_for
                elif job_ids is not None:
                    parsed = self.backend.fetch(command, job_ids)
                else:
                    parsed = self.backend.fetch(command)
            except CommandError as exc:
                # The last good data stays (state.data); slurm_up goes 0 and its age shows.
                state.fresh = False
                state.failures += 1
                if isinstance(exc, UnreadableOutput):
                    state.parse_errors += exc.parse_errors
                if state.error != str(exc):
                    log.warning("slurm command failed", extra={"command": command, "error": str(exc)})
                state.error = str(exc)
                if not self._unreachable and _controller_unreachable(str(exc)):
                    self._unreachable = f"slurmctld unreachable ({command}: {exc})"
            else:
                if state.error:
                    log.info("slurm command recovered", extra={"command": command})
                state.data, state.fresh, state.error = parsed, True, ""
                state.generation += 1
                state.last_success, state.last_began = time.time(), began
                state.parse_errors += parsed.errors
                if parsed.errors:
                    log.warning(
                        "skipped unparseable slurm output",
                        extra={"command": command, "lines": parsed.errors, "samples": parsed.samples},
                    )
            finally:
                state.last_duration = time.perf_counter() - started
            return state

    def ran_this_cycle(self) -> dict[str, CommandState]:
        with self._lock:
            return {name: self.states[name] for name in self._ran_this_cycle}

    def items(self, command: str) -> list[Any]:
        """The command's last good items ([] if it never succeeded)."""
        state = self.get(command)
        return list(state.data.items) if state.data is not None else []


_UNREACHABLE_MARKERS = ("timed out after", "unable to contact slurm controller", "connection refused")


def _controller_unreachable(error: str) -> bool:
    lower = error.lower()
    return any(marker in lower for marker in _UNREACHABLE_MARKERS)
