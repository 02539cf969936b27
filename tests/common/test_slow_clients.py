"""1,000 stalled connections against a real exporter and the real agent: scrapes go on (p99 < 50 ms).

Each server runs with an open-files limit of 1,024 (`ulimit -n`, the common default), the
setting under which 1,015 stalled connections used to exhaust its descriptors. The header
timeout is 3 s so the test can also see the stalled connections closed, and the connection cap
is 500 so it also sees the oldest stalled connections make room for scrapers. Figures for the same
scenario, beside the unstalled baseline: bench/slow_clients.py.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.agent.conftest import TOKEN
from tests.common.stall import (
    allow_open_files,
    close_all,
    closed_by_server,
    open_stalled,
    percentile,
    scrape_ms,
)
from tests.harness.processes import LOOPBACK, ManagedProcess, ProcessManager, free_port

BIN = Path(sys.executable).parent
STALLED = 1000
SCRAPES = 200
LIMITED = ["sh", "-c", 'ulimit -n 1024 && exec "$@"', "limited"]
# A cap of 500 below the 1,000 stalled: scrapes get in only because the oldest stalled make room.
ENV = {
    "GPU_WATCHDOG_HTTP_HEADER_TIMEOUT": "3",
    "GPU_WATCHDOG_HTTP_MAX_CONNECTIONS": "500",
    "GPU_WATCHDOG_HTTP_BODY_TIMEOUT": "1",
}


def _gpu(procs: ProcessManager, tmp_path: Path, port: int) -> ManagedProcess:
    argv = [str(BIN / "gpu-exporter"), "--backend=sim", "--sim-gpus=8", f"--listen={LOOPBACK}:{port}"]
    return procs.start("gpu-exporter", [*LIMITED, *argv], extra_env=ENV)


def _agent(procs: ProcessManager, tmp_path: Path, port: int) -> ManagedProcess:
    (tmp_path / "token").write_text(TOKEN)
    config = {"listen": f"{LOOPBACK}:{port}", "db": str(tmp_path / "a.db"), "token_file": str(tmp_path / "token")}
    (tmp_path / "agent.yml").write_text(json.dumps(config))
    argv = [str(BIN / "agent-webhook"), "--config", str(tmp_path / "agent.yml")]
    return procs.start("agent-webhook", [*LIMITED, *argv], extra_env=ENV)


@pytest.mark.parametrize("start", [_gpu, _agent], ids=["gpu-exporter", "agent-webhook"])
def test_scrapes_go_on_beside_1000_stalled_connections(
    procs: ProcessManager, tmp_path: Path, start: Callable[[ProcessManager, Path, int], ManagedProcess]
) -> None:
    allow_open_files(STALLED + SCRAPES)
    port = free_port()
    proc = start(procs, tmp_path, port)
    proc.wait_http(f"http://{LOOPBACK}:{port}/metrics")
    stalled = open_stalled(port, STALLED)
    try:
        opened = time.monotonic()
        latencies = scrape_ms(port, "/metrics", SCRAPES)
        p99 = percentile(latencies, 99)
        assert p99 < 50, f"p99 {p99:.1f} ms with {STALLED} stalled connections"
        # Past the header timeout every stalled connection has been closed by the server.
        time.sleep(max(0.0, opened + 4.5 - time.monotonic()))
        still_open = [s for s in stalled if not closed_by_server(s)]
        assert not still_open, f"{len(still_open)} stalled connections still open after the header timeout"
    finally:
        close_all(stalled)
    log = proc.log_tail()
    assert log.count("cannot accept") <= 2, log[-2000:]
    assert proc.alive()


def test_agent_answers_408_to_a_body_that_stops_coming(procs: ProcessManager, tmp_path: Path) -> None:
    port = free_port()
    proc = _agent(procs, tmp_path, port)
    proc.wait_http(f"http://{LOOPBACK}:{port}/healthz")
    head = (
        f"POST /alerts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(head.encode() + b'{"alerts": [')
        started = time.monotonic()
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert 0.8 < time.monotonic() - started < 5
    assert b"did not arrive within 1 s" in answer


def test_limits_come_from_the_environment_or_exit_2(tmp_path: Path) -> None:
    import subprocess

    from gpu_watchdog_core.limits import LimitsError, limits_from_env

    assert limits_from_env({"GPU_WATCHDOG_HTTP_MAX_CONNECTIONS": "7"}).cap() == 7
    for bad in ({"GPU_WATCHDOG_HTTP_HEADER_TIMEOUT": "soon"}, {"GPU_WATCHDOG_HTTP_IDLE_TIMEOUT": "-1"}):
        with pytest.raises(LimitsError, match=next(iter(bad))):
            limits_from_env(bad)
    result = subprocess.run(
        [str(BIN / "gpu-exporter"), "--backend=sim", f"--listen={LOOPBACK}:{free_port()}"],
        env={**__import__("os").environ, "GPU_WATCHDOG_HTTP_BODY_TIMEOUT": "nan"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "GPU_WATCHDOG_HTTP_BODY_TIMEOUT" in result.stderr


def test_accept_errors_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    import asyncio
    import errno
    import logging

    from gpu_watchdog_core.limits import AcceptErrorLog

    now = [0.0]
    handler = AcceptErrorLog(10.0, clock=lambda: now[0])
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.ERROR, logger="gpu_watchdog_core.limits"):
            for i in range(1000):
                now[0] = i * 0.025  # 40 failed accepts a second for 25 s
                handler(
                    loop,
                    {
                        "message": "socket.accept() out of system resource",
                        "exception": OSError(errno.EMFILE, "Too many open files"),
                    },
                )
    finally:
        loop.close()
    lines = [r for r in caplog.records if "cannot accept" in r.getMessage()]
    assert len(lines) == 3  # at 0 s, 10 s and 20 s
    assert lines[1].not_logged_since_last == 399  # type: ignore[attr-defined]


async def test_at_the_cap_stalled_make_room_and_busy_ones_refuse() -> None:
    import asyncio

    from aiohttp import web

    from gpu_watchdog_core.limits import ConnectionLimits, ConnectionTracker

    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="done")

    app = web.Application()
    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    assert runner.server is not None
    tracker = ConnectionTracker(ConnectionLimits(max_connections=2), runner.server)
    listener = await asyncio.get_running_loop().create_server(tracker, LOOPBACK, 0)
    port = listener.sockets[0].getsockname()[1]
    request = b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n"
    try:
        stalled_r, stalled_w = await asyncio.open_connection(LOOPBACK, port)
        busy_r, busy_w = await asyncio.open_connection(LOOPBACK, port)
        busy_w.write(request)
        await asyncio.sleep(0.2)
        # Third client: the stalled one is evicted for it.
        third_r, third_w = await asyncio.open_connection(LOOPBACK, port)
        third_w.write(request)
        assert await asyncio.wait_for(stalled_r.read(), 5) == b""
        await asyncio.sleep(0.2)
        # Fourth: both connections are in a request, nothing to evict: 503 and closed.
        fourth_r, _ = await asyncio.open_connection(LOOPBACK, port)
        answer = await asyncio.wait_for(fourth_r.read(), 5)
        assert answer.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in answer
        assert (tracker.evicted, tracker.refused, tracker.open_connections) == (1, 1, 2)
        release.set()
        assert (await asyncio.wait_for(busy_r.readuntil(b"done"), 5)).startswith(b"HTTP/1.1 200")
        assert (await asyncio.wait_for(third_r.readuntil(b"done"), 5)).startswith(b"HTTP/1.1 200")
        for writer in (stalled_w, busy_w, third_w):
            writer.close()
    finally:
        listener.close()
        await runner.cleanup()
