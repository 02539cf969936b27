#!/usr/bin/env python3
"""Ingest benchmark for `agent-webhook`: bursts of Alertmanager notifications, half of them duplicates.

Starts the real `agent-webhook` console script (a subprocess, SQLite with synchronous=FULL, the
default) on a free loopback port, then sends `--alerts` distinct alerts, each delivered twice
(group re-sends / HA duplicates, shuffled in), as webhook payloads of 1-5 alerts, in bursts of
`--burst` requests with `--concurrency` connections. Reports POST latency (p50/p99, measured by
the client, so it includes the client's own overhead on this machine) and alerts stored per
second, then checks from the API and the database that nothing was lost and nothing was
investigated twice.

Floors (issue #6): p99 <= 20 ms on a 2-core machine, zero lost, zero duplicate investigations.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

P99_FLOOR_MS = 20.0
AGENT = str(Path(sys.executable).parent / "agent-webhook")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def alert(i: int, status: str = "firing") -> dict[str, Any]:
    node = f"gpu-worker-{i % 64}"
    return {
        "status": status,
        "labels": {
            "alertname": ("GPUXidError", "GPUThermalThrottle", "SlurmNodeDrained", "GPUEccDoubleBit")[i % 4],
            "node": node,
            "gpu": str(i % 8),
            "severity": "critical" if i % 3 == 0 else "warning",
            "instance": f"{node}:9400",
            "job": "gpu",
        },
        "annotations": {"summary": f"alert {i} on {node}", "runbook_url": "docs/runbooks/GPUXidError.md"},
        "startsAt": f"2026-11-22T{(i // 3600) % 24:02d}:{(i // 60) % 60:02d}:{i % 60:02d}.{i % 1000:03d}Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.example:9090/graph?g0.expr=up&g0.tab=1",
        "fingerprint": f"{i:016x}",
    }


def build_requests(alerts: int, rng: random.Random) -> list[list[int]]:
    """Each alert is delivered twice; the copy comes 1-200 deliveries after the original: 50% duplicates."""
    schedule = [(float(i), i) for i in range(alerts)]
    schedule += [(i + rng.uniform(1, 200), i) for i in range(alerts)]
    stream = [i for _, i in sorted(schedule)]
    requests: list[list[int]] = []
    pos = 0
    while pos < len(stream):
        size = rng.randint(1, 5)
        requests.append(stream[pos : pos + size])
        pos += size
    return requests


def payload(indices: list[int]) -> bytes:
    return json.dumps(
        {
            "version": "4",
            "groupKey": '{}:{alertname="bench"}',
            "truncatedAlerts": 0,
            "status": "firing",
            "receiver": "gpu-watchdog",
            "groupLabels": {},
            "commonLabels": {},
            "commonAnnotations": {},
            "externalURL": "http://alertmanager.example:9093",
            "alerts": [alert(i) for i in indices],
        }
    ).encode()


async def send_all(
    url: str, token: str, requests: list[list[int]], burst: int, concurrency: int, pause: float
) -> tuple[list[float], float, int]:
    latencies: list[float] = []
    errors = 0
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    bodies = [payload(r) for r in requests]
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm the connections so the first burst does not measure TCP handshakes.
        await asyncio.gather(*(session.get(f"{url}/healthz") for _ in range(concurrency)))
        sem = asyncio.Semaphore(concurrency)

        async def post(body: bytes) -> None:
            nonlocal errors
            async with sem:
                t0 = time.perf_counter()
                async with session.post(f"{url}/alerts", data=body, headers=headers) as resp:
                    await resp.read()
                    latencies.append(time.perf_counter() - t0)
                    if resp.status != 202:
                        errors += 1

        started = time.perf_counter()
        for start in range(0, len(bodies), burst):
            await asyncio.gather(*(post(b) for b in bodies[start : start + burst]))
            await asyncio.sleep(pause)
        elapsed = time.perf_counter() - started - pause * ((len(bodies) + burst - 1) // burst)
    return latencies, elapsed, errors


def get(url: str, token: str) -> Any:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def metric(url: str, name: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.split()[-1])
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from /proc (load-independent cost)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alerts", type=int, default=2000, help="distinct alerts (each is delivered twice)")
    parser.add_argument("--burst", type=int, default=50, help="requests per burst")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent connections (Alertmanager HA peers)")
    parser.add_argument("--pause", type=float, default=0.05, help="seconds between bursts")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--seed", type=int, default=6)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    requests = build_requests(args.alerts, rng)
    deliveries = sum(len(r) for r in requests)

    with tempfile.TemporaryDirectory(prefix="webhook-bench-") as tmp:
        token = secrets.token_urlsafe(24)
        token_file = Path(tmp) / "token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        db = Path(tmp) / "agent.db"
        log = open(Path(tmp) / "agent.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [
                AGENT,
                "--listen",
                f"127.0.0.1:{port}",
                "--db",
                str(db),
                "--token-file",
                str(token_file),
                "--workers",
                str(args.workers),
                "--log-level",
                "warning",
            ],
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/healthz", timeout=2) as resp:
                        if resp.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    print("agent-webhook did not start:\n" + (Path(tmp) / "agent.log").read_text(), file=sys.stderr)
                    return 1
                time.sleep(0.1)

            cpu_before = cpu_seconds(proc.pid)
            latencies, elapsed, errors = asyncio.run(
                send_all(url, token, requests, args.burst, args.concurrency, args.pause)
            )
            drain_start = time.perf_counter()
            while metric(url, "agent_webhook_queue_depth") > 0:
                time.sleep(0.1)
            drained = time.perf_counter() - drain_start
            server_cpu = cpu_seconds(proc.pid) - cpu_before

            findings: list[dict[str, Any]] = []
            cursor = None
            while True:
                page = get(f"{url}/findings?limit=1000" + (f"&cursor={cursor}" if cursor else ""), token)
                findings += page["findings"]
                cursor = page["next_cursor"]
                if not cursor:
                    break
            fingerprints = [f["fingerprints"][0] for f in findings]
            expected = {f"{i:016x}" for i in range(args.alerts)}
            lost = len(expected - set(fingerprints))
            duplicate_findings = len(fingerprints) - len(set(fingerprints))
            investigations = metric(url, "agent_webhook_investigations_total")
            deduplicated = metric(url, "agent_webhook_alerts_deduplicated_total")
            with sqlite3.connect(db) as conn:
                stored = conn.execute("SELECT COUNT(*) FROM alerts").fetchone()[0]
                jobs = conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
                reruns = conn.execute("SELECT COUNT(*) FROM jobs WHERE attempts > 1").fetchone()[0]
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(15)
            log.close()

    p50 = percentile(latencies, 0.50) * 1000
    p99 = percentile(latencies, 0.99) * 1000
    duplicate_investigations = int(investigations) - args.alerts + reruns
    print(
        f"webhook ingest: {len(requests)} POSTs carrying {deliveries} alert deliveries "
        f"({args.alerts} distinct, {deliveries - args.alerts} duplicates), bursts of {args.burst}, "
        f"{args.concurrency} connections, {os.cpu_count()} CPUs, SQLite synchronous=FULL"
    )
    print(
        f"  POST latency   p50 {p50:6.2f} ms   p99 {p99:6.2f} ms   max {max(latencies) * 1000:6.2f} ms"
        f"   (floor: p99 <= {P99_FLOOR_MS:.0f} ms)"
    )
    print(
        f"  throughput     {args.alerts / elapsed:8.0f} alerts stored/s   {deliveries / elapsed:8.0f} deliveries/s"
        f"   {len(requests) / elapsed:6.0f} requests/s   (mean {statistics.mean(latencies) * 1000:.2f} ms)"
    )
    print(
        f"  server CPU     {server_cpu * 1000 / len(requests):.2f} ms per request, ingest and investigations "
        f"included ({server_cpu:.2f} s); load average {os.getloadavg()[0]:.2f}"
    )
    print(f"  investigations drained {drained:.2f} s after the last POST")
    print(
        f"  stored alerts {stored}, jobs {jobs}, findings {len(findings)}, deduplicated {deduplicated:.0f}, "
        f"non-202 answers {errors}"
    )
    print(
        f"  lost {lost} (floor 0)   duplicate findings {duplicate_findings} (floor 0)   "
        f"duplicate investigations {duplicate_investigations} (floor 0)"
    )
    ok = (
        p99 <= P99_FLOOR_MS
        and lost == 0
        and duplicate_findings == 0
        and duplicate_investigations == 0
        and errors == 0
        and deduplicated == deliveries - args.alerts
    )
    print("  PASS" if ok else "  FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
