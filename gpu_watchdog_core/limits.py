"""What a listener does about slow and many clients: timeouts, a connection cap, quiet accept errors.

aiohttp alone holds a connection that never sends a request for its whole keep-alive time and
accepts connections until the process runs out of file descriptors; then asyncio's accept loop
logs every failed accept(). So every listener of the suite (the exporters and the agent, through
:func:`gpu_watchdog_core.server.run_app`) gets:

- header timeout: a connection must deliver its first request head within this many seconds
  of being accepted, or it is closed; with TLS the handshake gets as long again before that
  (asyncio's ``ssl_handshake_timeout``), as the app protocol only starts after it;
- idle timeout: aiohttp's keep-alive time, which also bounds a request head that trickles in
  on a kept-alive connection;
- body timeout: for handlers that read a body (the agent's ``POST /alerts``), see
  :func:`read_body_deadline`; aiohttp drains unread bodies for at most ``lingering_time``;
- a per-listener connection cap below the open-file limit (raised to its hard limit at start, as
  Go does): at the cap the longest-waiting connection that has not sent a request head yet makes
  room, so stalled clients cannot lock scrapers out; when none is stalled the new connection is
  answered 503 and closed;
- accept() errors logged at most once per interval, with a count of those not logged.

Settings come from ``GPU_WATCHDOG_HTTP_*`` environment variables (all programs read the same),
see docs/web-config.md; a bad value is a start-up error naming the variable.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import os
import resource
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

_ENV = "GPU_WATCHDOG_HTTP_"
# Descriptors kept back from the cap for everything that is not a client: the database, log
# files, outgoing HTTP (Prometheus, sinks, Slurm commands), the listening socket.
_RESERVED_FDS = 128
_MAX_CAP = 10_000
_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\nRetry-After: 1\r\n\r\n"
_ACCEPT_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}


class LimitsError(ValueError):
    """A GPU_WATCHDOG_HTTP_* variable is invalid; the message names it."""


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float = 10.0
    idle_timeout: float = 75.0
    body_timeout: float = 30.0
    max_connections: int = 0  # 0: derived from the open-file limit
    accept_log_interval: float = 10.0

    def cap(self) -> int:
        if self.max_connections > 0:
            return self.max_connections
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY:
            return _MAX_CAP
        return max(16, min(_MAX_CAP, soft - _RESERVED_FDS))


def limits_from_env(env: Mapping[str, str] | None = None) -> ConnectionLimits:
    env = os.environ if env is None else env

    def number(key: str, default: float, *, integer: bool = False) -> Any:
        raw = env.get(_ENV + key)
        if raw is None or raw.strip() == "":
            return default
        try:
            value = int(raw) if integer else float(raw)
        except ValueError:
            raise LimitsError(
                f"{_ENV}{key}: expected a {'whole ' if integer else ''}number, got {raw[:40]!r}"
            ) from None
        if not math.isfinite(value) or value < 0 or (value == 0 and not integer):
            raise LimitsError(f"{_ENV}{key}: must be a positive finite number, got {raw[:40]!r}")
        return value

    return ConnectionLimits(
        header_timeout=number("HEADER_TIMEOUT", 10.0),
        idle_timeout=number("IDLE_TIMEOUT", 75.0),
        body_timeout=number("BODY_TIMEOUT", 30.0),
        max_connections=number("MAX_CONNECTIONS", 0, integer=True),
    )


def raise_open_file_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (Go's runtime does this at start); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return int(soft)


class _Guarded(asyncio.Protocol):
    """Wraps aiohttp's RequestHandler: notes when the first request head is complete."""

    def __init__(self, inner: asyncio.Protocol, tracker: ConnectionTracker) -> None:
        self.inner = inner
        self.tracker = tracker
        self.transport: asyncio.Transport | None = None
        self.awaiting_head = True
        self._tail = b""
        self._timer: asyncio.TimerHandle | None = None
        self.started = False  # aiohttp's handler saw connection_made

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self.tracker.admit(self):
            transport.write(_BUSY)  # type: ignore[attr-defined]
            transport.close()
            return
        self.inner.connection_made(transport)
        self.started = True
        self._timer = asyncio.get_running_loop().call_later(self.tracker.limits.header_timeout, self._too_slow)

    def _too_slow(self) -> None:
        self._timer = None
        if self.awaiting_head and self.transport is not None:
            self.tracker.timed_out += 1
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self.awaiting_head:
            seen = self._tail + data
            if b"\r\n\r\n" in seen:
                self.awaiting_head = False
                self.tracker.head_received(self)
                if self._timer is not None:
                    self._timer.cancel()
                    self._timer = None
            else:
                self._tail = seen[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.tracker.release(self)
        if self.started:
            self.inner.connection_lost(exc)


class ConnectionTracker:
    """One listener's connections: the cap, and which ones still owe their first request head."""

    def __init__(self, limits: ConnectionLimits, inner_factory: Callable[[], asyncio.Protocol]) -> None:
        self.limits = limits
        self.cap = limits.cap()
        self._inner_factory = inner_factory
        self._open: set[_Guarded] = set()
        self._stalled: OrderedDict[_Guarded, None] = OrderedDict()  # oldest first
        self.evicted = 0
        self.refused = 0
        self.timed_out = 0

    def __call__(self) -> asyncio.Protocol:
        return _Guarded(self._inner_factory(), self)

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def admit(self, conn: _Guarded) -> bool:
        if len(self._open) >= self.cap:
            if not self._stalled:
                self.refused += 1
                return False
            oldest, _ = self._stalled.popitem(last=False)
            self.evicted += 1
            if oldest.transport is not None:
                oldest.transport.abort()  # its connection_lost comes later; drop it from the count now
            self._open.discard(oldest)
        self._open.add(conn)
        self._stalled[conn] = None
        return True

    def head_received(self, conn: _Guarded) -> None:
        self._stalled.pop(conn, None)

    def release(self, conn: _Guarded) -> None:
        self._stalled.pop(conn, None)
        self._open.discard(conn)

    def stop(self) -> None:
        for conn in list(self._open):
            if conn.transport is not None:
                conn.transport.abort()


class AcceptErrorLog:
    """A loop exception handler that lets through one accept() error per interval, with a count."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self.suppressed = 0
        self._last = -float("inf")

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in _ACCEPT_ERRNOS:
            now = self.clock()
            if now - self._last < self.interval:
                self.suppressed += 1
                return
            self._last = now
            log.error(
                "cannot accept connections: out of file descriptors or memory",
                extra={"error": str(exc), "not_logged_since_last": self.suppressed},
            )
            self.suppressed = 0
            return
        loop.default_exception_handler(context)
