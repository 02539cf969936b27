"""Stalled clients and timed scrapes over raw sockets: shared by tests/common/test_slow_clients.py
and bench/slow_clients.py, so the test and the figures measure the same thing."""

from __future__ import annotations

import contextlib
import resource
import socket
import time

LOOPBACK = "127.0.0.1"


def allow_open_files(n: int) -> None:
    """This process opens `n` client sockets: raise its own soft limit if that needs it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 256
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard) if hard != resource.RLIM_INFINITY else want, hard))


def open_stalled(port: int, count: int) -> list[socket.socket]:
    """`count` connections that never finish a request: half silent, half mid-header (slowloris)."""
    stalled = []
    for i in range(count):
        sock = socket.create_connection((LOOPBACK, port), timeout=5)
        if i % 2:
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        stalled.append(sock)
    return stalled


def closed_by_server(sock: socket.socket) -> bool:
    sock.settimeout(0.01)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:  # reset: closed as well
        return True


def close_all(socks: list[socket.socket]) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.close()


def scrape_ms(port: int, path: str, count: int, authorization: str | None = None) -> list[float]:
    """Latency of `count` GETs, each on a new connection (the accept path is what stalls), in ms."""
    request = f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}\r\nConnection: close\r\n"
    if authorization:
        request += f"Authorization: {authorization}\r\n"
    raw = (request + "\r\n").encode()
    times = []
    for _ in range(count):
        started = time.perf_counter()
        with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
            sock.sendall(raw)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        times.append((time.perf_counter() - started) * 1000)
        assert data.startswith(b"HTTP/1.1 200"), data[:200]
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]
