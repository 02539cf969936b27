"""Start real daemons for tests: free loopback ports, temp dirs, readiness waits, logs, cleanup.

Every process is started in its own session (process group) with stdout/stderr in a log file,
is stopped by its own pid/pgid only (never by name), and its log tail is attached to the pytest
report of a failing test (see tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LOOPBACK = "127.0.0.1"


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port nothing listens on right now (the OS picks; race window is tiny on loopback)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], object], timeout: float, interval: float = 0.1, what: str = "condition"
) -> object:
    """Poll until predicate returns a truthy value; TimeoutError naming `what` otherwise."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # readiness probes fail in many ways while starting up
            last_exc = exc
        time.sleep(interval)
    detail = f" (last error: {last_exc!r})" if last_exc else ""
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")


def http_get(
    url: str, timeout: float = 5.0, headers: Mapping[str, str] | None = None, context: ssl.SSLContext | None = None
) -> tuple[int, bytes]:
    """(status, body) for a GET; HTTP error statuses are returned, not raised."""
    req = urllib.request.Request(url, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class ManagedProcess:
    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes]
    _log_file: object = field(repr=False, default=None)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, max_bytes: int = 16_000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-max_bytes:].decode(errors="replace")

    def wait_ready(self, probe: Callable[[], object], timeout: float = 30.0, what: str | None = None) -> None:
        """Wait for probe() to succeed, failing fast (with the log) if the process exits first."""

        def check() -> object:
            if not self.alive():
                raise ProcessExited(self)
            return probe()

        try:
            wait_until(check, timeout, what=what or f"{self.name} to become ready")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- {self.name} log tail ---\n{self.log_tail(4000)}") from None

    def wait_http(
        self, url: str, timeout: float = 30.0, context: ssl.SSLContext | None = None, status: int = 200
    ) -> None:
        self.wait_ready(
            lambda: http_get(url, timeout=2, context=context)[0] == status, timeout, what=f"{self.name} at {url}"
        )

    def send_signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def stop(self, timeout: float = 10.0, sig: int = signal.SIGTERM) -> int | None:
        """Stop this process and its group: `sig`, then SIGKILL after `timeout`. Returns its exit code."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(5)
        else:
            # The leader is gone; children it left in its group still belong to us.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        close = getattr(self._log_file, "close", None)
        if callable(close):
            close()
        return self.popen.returncode

    def kill(self) -> None:
        """kill -9 the whole group, as a crash would."""
        self.stop(timeout=0.1, sig=signal.SIGKILL)


class ProcessExited(RuntimeError):
    def __init__(self, proc: ManagedProcess) -> None:
        super().__init__(
            f"{proc.name} exited with code {proc.popen.returncode} while starting\n"
            f"--- {proc.name} log tail ---\n{proc.log_tail(4000)}"
        )


class ProcessManager:
    """Starts processes for a test (or a session) and stops every one of them at the end."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.processes: list[ManagedProcess] = []

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
        extra_env: Mapping[str, str] | None = None,
    ) -> ManagedProcess:
        log_path = self.log_dir / f"{name}.log"
        counter = 1
        while log_path.exists():  # a restarted process keeps its earlier log
            counter += 1
            log_path = self.log_dir / f"{name}.{counter}.log"
        log_file = open(log_path, "wb")  # noqa: SIM115 - closed in ManagedProcess.stop
        full_env = dict(os.environ if env is None else env)
        full_env.update(extra_env or {})
        full_env.setdefault("PYTHONUNBUFFERED", "1")
        popen = subprocess.Popen(
            list(argv),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
        )
        proc = ManagedProcess(name=name, argv=list(argv), log_path=log_path, popen=popen, _log_file=log_file)
        self.processes.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()

    def log_sections(self) -> list[tuple[str, str]]:
        return [(f"process log: {p.name} (pid {p.pid}, {p.log_path})", p.log_tail()) for p in self.processes]
