#!/usr/bin/env python3
"""Scrape latency beside stalled connections, for gpu-exporter and agent-webhook (issue #19).

Each server runs as its real console script with an open-files limit of 1,024 (`ulimit -n`, the
common default) and the default settings (header timeout 10 s, cap from the open-files limit).
For each: p50/p99/max of 500 scrapes of /metrics, each on a new connection, first with no other
client (the baseline), then beside 1,000 and 1,500 stalled connections (half silent, half
stopped mid-header), the second past the cap, so the oldest stalled make room. The issue's
figure before the fix: 1,015 stalled connections made every scrape time out.

Floor: p99 < 50 ms beside 1,000 stalled connections. Exit 1 if missed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.common.stall import allow_open_files, close_all, open_stalled, percentile, scrape_ms  # noqa: E402

BIN = Path(sys.executable).parent
SCRAPES = 500
FLOOR_P99_MS = 50.0
LIMITED = ["sh", "-c", 'ulimit -n 1024 && exec "$@"', "limited"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            scrape_ms(port, "/metrics", 1)
            return
        except (OSError, AssertionError):
            time.sleep(0.1)
    raise SystemExit(f"server on port {port} did not come up")


def start(name: str, tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    if name == "gpu-exporter":
        argv = [str(BIN / "gpu-exporter"), "--backend=sim", "--sim-gpus=8", f"--listen=127.0.0.1:{port}"]
    else:
        (tmp / "agent.yml").write_text(json.dumps({"listen": f"127.0.0.1:{port}", "db": str(tmp / "a.db")}))
        argv = [str(BIN / "agent-webhook"), "--config", str(tmp / "agent.yml"), "--log-level", "error"]
    proc = subprocess.Popen(
        [*LIMITED, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    wait_ready(port)
    return proc, port


def row(program: str, stalled: int, times: list[float]) -> str:
    return f"{program:<14} {stalled:>8} {percentile(times, 50):>8.2f} {percentile(times, 99):>8.2f} {max(times):>8.2f}"


def main() -> int:
    allow_open_files(2000)
    print(f"scrapes of /metrics, {SCRAPES} per row, new connection each; servers under ulimit -n 1024")
    print(f"{'program':<14} {'stalled':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        for program in ("gpu-exporter", "agent-webhook"):
            proc, port = start(program, Path(tmp))
            try:
                scrape_ms(port, "/metrics", 50)  # warm up
                for stalled_count in (0, 1000, 1500):
                    stalled = open_stalled(port, stalled_count)
                    try:
                        times = scrape_ms(port, "/metrics", SCRAPES)
                    finally:
                        close_all(stalled)
                    print(row(program, stalled_count, times), flush=True)
                    if stalled_count == 1000 and percentile(times, 99) >= FLOOR_P99_MS:
                        ok = False
                    time.sleep(0.5)
            finally:
                os.killpg(proc.pid, 15)
                proc.wait(10)
    print(f"floor: p99 < {FLOOR_P99_MS:.0f} ms beside 1,000 stalled connections: {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
