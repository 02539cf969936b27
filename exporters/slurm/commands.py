"""Run a Slurm client command with a hard timeout and an output cap, killing its whole process group.

Slurm clients retry a dead controller for about 9 s and can hang on a wedged one; the poll
thread must get control back after `timeout` seconds whatever the command does, and no stray
child may outlive it, not even when the exporter is stopped while the command hangs. A command
that prints more than `max_output` bytes is stopped the moment it crosses the cap: a runaway
dump must not cost the exporter's memory.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MAX_OUTPUT = 256 * 1024 * 1024
_STDERR_KEEP = 64 * 1024  # only the last line is reported; keep a little in case it is long


class CommandError(RuntimeError):
    """The command is missing, failed, or timed out; the message says which (no output dump)."""


@dataclass
class CommandRunner:
    bin_dir: str | None = None
    timeout: float = 10.0
    env: Mapping[str, str] | None = None
    max_output: int = DEFAULT_MAX_OUTPUT
    # While set (monotonic time), no command may run past it: the start-up budget, so the port
    # opens within one command timeout of start even when every command hangs.
    deadline: float | None = None
    _running: set[int] = field(default_factory=set, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def resolve(self, name: str) -> str | None:
        if self.bin_dir:
            path = Path(self.bin_dir) / name
            return str(path) if path.is_file() and os.access(path, os.X_OK) else None
        return shutil.which(name)

    def limit(self, timeout: float | None = None) -> float:
        """Seconds the next command may take: its timeout, cut to what is left of the deadline."""
        limit = self.timeout if timeout is None else timeout
        if self.deadline is not None:
            limit = min(limit, self.deadline - time.monotonic())
        return limit

    def run(self, name: str, args: Sequence[str], timeout: float | None = None) -> str:
        binary = self.resolve(name)
        if binary is None:
            where = self.bin_dir or "PATH"
            raise CommandError(f"{name} not found in {where}")
        limit = self.limit(timeout)
        if limit <= 0:
            raise CommandError(f"{name} skipped: the start-up budget of {self.timeout:g}s is spent")
        started = time.monotonic()
        try:
            proc = subprocess.Popen(
                [binary, *args],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                env=dict(self.env) if self.env is not None else None,
                start_new_session=True,  # its own group, so a timeout kills its children too
            )
        except OSError as exc:
            raise CommandError(f"{name}: cannot run: {exc.strerror or exc}") from None
        with self._lock:
            self._running.add(proc.pid)
        try:
            out, err = self._read(proc, name, started + limit, limit)
        finally:
            # Whatever ended the read (done, timeout, cap, a signal raising SystemExit), the
            # group goes: a finished command's leftover children are strays too.
            _kill_group(proc.pid)
            with self._lock:
                self._running.discard(proc.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        if proc.returncode != 0:
            message = err.decode(errors="replace").strip().splitlines()
            detail = message[-1][:300] if message else "no error output"
            raise CommandError(
                f"{name} exited with code {proc.returncode} after {time.monotonic() - started:.1f}s: {detail}"
            )
        return out.decode(errors="replace")

    def _read(self, proc: subprocess.Popen[bytes], name: str, deadline: float, limit: float) -> tuple[bytes, bytes]:
        """stdout and the tail of stderr, read until both close; CommandError past the deadline or cap."""
        assert proc.stdout is not None and proc.stderr is not None
        out: list[bytes] = []
        size = 0
        err = b""
        with selectors.DefaultSelector() as selector:
            selector.register(proc.stdout, selectors.EVENT_READ, "out")
            selector.register(proc.stderr, selectors.EVENT_READ, "err")
            while selector.get_map():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CommandError(f"{name} timed out after {limit:g}s")
                for key, _ in selector.select(timeout=min(remaining, 0.5)):
                    chunk = os.read(key.fd, 1 << 20)
                    if not chunk:
                        selector.unregister(key.fileobj)
                    elif key.data == "out":
                        size += len(chunk)
                        if size > self.max_output:
                            raise CommandError(
                                f"{name} printed more than {self.max_output} bytes, the output cap "
                                f"(--command-max-output); stopped it"
                            )
                        out.append(chunk)
                    else:
                        err = (err + chunk)[-_STDERR_KEEP:]
        # Wait for the exit without reaping it, so the finally in run() can still kill the
        # group by this pid (a reaped pid may already belong to someone else).
        while not _exited(proc.pid):
            if time.monotonic() >= deadline:
                raise CommandError(f"{name} timed out after {limit:g}s")
            time.sleep(0.005)
        return b"".join(out), err

    def kill_all(self) -> None:
        """Kill every command in flight, with its children (shutdown while a command hangs)."""
        with self._lock:
            running = list(self._running)
        for pid in running:
            _kill_group(pid)


def _exited(pid: int) -> bool:
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return info is not None


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
