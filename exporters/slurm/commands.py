"""Run a Slurm client command with a hard timeout, killing its whole process group on expiry.

Slurm clients retry a dead controller for about 9 s and can hang on a wedged one; the poll
thread must get control back after `timeout` seconds whatever the command does, and no stray
child may outlive it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


class CommandError(RuntimeError):
    """The command is missing, failed, or timed out; the message says which (no output dump)."""


@dataclass
class CommandRunner:
    bin_dir: str | None = None
    timeout: float = 10.0
    env: Mapping[str, str] | None = None

    def resolve(self, name: str) -> str | None:
        if self.bin_dir:
            path = Path(self.bin_dir) / name
            return str(path) if path.is_file() and os.access(path, os.X_OK) else None
        return shutil.which(name)

    def run(self, name: str, args: Sequence[str], timeout: float | None = None) -> str:
        binary = self.resolve(name)
        if binary is None:
            where = self.bin_dir or "PATH"
            raise CommandError(f"{name} not found in {where}")
        limit = self.timeout if timeout is None else timeout
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
        try:
            out, err = proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=2)
            raise CommandError(f"{name} timed out after {limit:g}s") from None
        if proc.returncode != 0:
            message = err.decode(errors="replace").strip().splitlines()
            detail = message[-1][:300] if message else "no error output"
            raise CommandError(
                f"{name} exited with code {proc.returncode} after {time.monotonic() - started:.1f}s: {detail}"
            )
        return out.decode(errors="replace")
