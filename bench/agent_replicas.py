#!/usr/bin/env python3
"""Agent replicas: ingest and investigation throughput, 1/2/3 replicas on PostgreSQL vs 1 on SQLite.

All in one run, on this machine: a real PostgreSQL 15 (Debian's, started like the tests' fixture,
tests/harness/postgres.py) and the real `agent-webhook` console script, N processes per setup.
The Prometheus the agents query for evidence and the sink they post to are one loopback server
in this script.

Per setup:

1. ingest: `--alerts` distinct firing alerts (each on its own node: its own incident, so each is
   investigated), in webhook payloads of 5, sent over `--concurrency` connections spread
   round-robin over the replicas. The evidence server holds every query during this phase, so
   the workers wait on the network and ingest is measured alone. Reported: alerts stored per
   second, POST latency p50/p99 (measured by the client).
2. investigation: the evidence server is released (each query then takes `--query-ms`); the time
   until every alert has its finding gives findings per second. Each replica runs `--workers`
   investigations at a time: replicas add workers, and that is what scales.

Checked every time: exactly one finding per alert, no job left. PostgreSQL runs with its
defaults (fsync on; synchronous_commit on) and the SQLite agent with its own (synchronous=FULL).
The machine's cores are shared
by every process here (agents, PostgreSQL, this client): on a 2-core machine the figures show
the database's overhead and how far replicas help before the CPU is the limit, not what
separate hosts would do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psycopg
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.agent.conftest import make_payload
from tests.harness.postgres import PostgresServer, start_postgres
from tests.harness.postgres import remove as remove_postgres
from tests.harness.processes import ManagedProcess, ProcessManager, free_port, http_get, wait_until

AGENT = str(Path(sys.executable).parent / "agent-webhook")
TOKEN = "bench-token-0123456789abcdef"
SETUPS = (("sqlite", 1), ("postgresql", 1), ("postgresql", 2), ("postgresql", 3))


@dataclass
class Result:
    engine: str
    replicas: int
    ingest_alerts_per_s: float
    post_p50_ms: float
    post_p99_ms: float
    findings_per_s: float


class Evidence:
    """Prometheus (empty answers, held while `gate` is closed, then `delay` each) and the sink."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.gate = asyncio.Event()
        self.posts = 0

    async def query(self, request: web.Request) -> web.Response:
        await self.gate.wait()
        await asyncio.sleep(self.delay)
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": []}})

    async def sink(self, request: web.Request) -> web.Response:
        await request.read()
        self.posts += 1
        return web.json_response({})

    async def start(self) -> tuple[web.AppRunner, str]:
        app = web.Application()
        app.router.add_post("/sink", self.sink)
        app.router.add_route("*", "/{tail:.*}", self.query)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner, f"http://127.0.0.1:{port}"


def alert(i: int) -> dict[str, Any]:
    node = f"node-{i}"
    return {
        "status": "firing",
        "labels": {"alertname": "GPUXidError", "node": node, "gpu": "0", "severity": "critical"},
        "annotations": {"summary": f"XID on {node}"},
        "startsAt": "2026-11-22T10:00:00.000Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus.example:9090/graph",
        "fingerprint": f"{i:016x}",
    }


def payload(alerts: list[dict[str, Any]]) -> bytes:
    """An Alertmanager webhook body (the tests' own builder)."""
    return json.dumps(make_payload(alerts)).encode()


def _row(target: str, sql: str) -> tuple[Any, ...]:
    """One row read straight from the agents' database (either engine)."""
    if target.startswith("postgresql://"):
        with psycopg.connect(target) as conn:
            row = conn.execute(sql.encode()).fetchone()
    else:
        with sqlite3.connect(target) as sconn:
            row = sconn.execute(sql).fetchone()
    assert row is not None
    return tuple(row)


def findings_count(target: str) -> int:
    total, alerts = _row(target, "SELECT COUNT(*), COUNT(DISTINCT alert_id) FROM findings")
    assert total == alerts, f"a second finding for an alert: {total} findings for {alerts} alerts"
    return int(total)


def jobs_left(target: str) -> int:
    return int(_row(target, "SELECT COUNT(*) FROM jobs WHERE state<>'done'")[0])


def start_agents(
    procs: ProcessManager, workdir: Path, target: str, n: int, workers: int, evidence_url: str, label: str
) -> list[str]:
    token_file = workdir / "token"
    token_file.write_text(TOKEN)
    urls: list[str] = []
    started: list[tuple[str, ManagedProcess]] = []
    for i in range(n):
        port = free_port()
        config = workdir / f"{label}-{i}.yml"
        config.write_text(
            json.dumps(
                {
                    "listen": f"127.0.0.1:{port}",
                    "db": target,
                    "token_file": str(token_file),
                    "workers": workers,
                    "prometheus_url": evidence_url,
                    "sinks": [{"type": "webhook", "url": f"{evidence_url}/sink"}],
                }
            )
        )
        proc = procs.start(f"{label}-{i}", [AGENT, "--config", str(config), "--log-level", "warning"])
        started.append((f"http://127.0.0.1:{port}", proc))
    for url, proc in started:
        proc.wait_ready(lambda url=url: http_get(f"{url}/healthz", timeout=2)[0] == 200, 60)
        urls.append(url)
    return urls


async def ingest(urls: list[str], alerts: int, concurrency: int) -> tuple[float, list[float]]:
    bodies = [payload([alert(i) for i in range(s, min(s + 5, alerts))]) for s in range(0, alerts, 5)]
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
    for i, body in enumerate(bodies):
        queue.put_nowait((i, body))

    async def client(session: aiohttp.ClientSession) -> None:
        while not queue.empty():
            i, body = queue.get_nowait()
            t0 = time.perf_counter()
            async with session.post(f"{urls[i % len(urls)]}/alerts", data=body, headers=headers) as resp:
                await resp.read()
                assert resp.status == 202, resp.status
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return alerts / (time.perf_counter() - start), latencies


async def run_setup(
    engine: str,
    n: int,
    args: argparse.Namespace,
    pg: PostgresServer,
    workdir: Path,
    procs: ProcessManager,
    round_no: int,
) -> Result:
    evidence = Evidence(args.query_ms / 1000)
    runner, evidence_url = await evidence.start()
    label = f"{engine}-{n}-r{round_no}"  # a fresh database every time
    target = pg.create_database() if engine == "postgresql" else str(workdir / f"{label}.db")
    try:
        urls = await asyncio.to_thread(start_agents, procs, workdir, target, n, args.workers, evidence_url, label)
        rate, latencies = await ingest(urls, args.alerts, args.concurrency)
        t0 = time.perf_counter()
        evidence.gate.set()
        # The findings are in the database, written by other processes: polled, nothing to await.
        while await asyncio.to_thread(findings_count, target) < args.alerts:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        investigation_rate = args.alerts / (time.perf_counter() - t0)
        assert await asyncio.to_thread(jobs_left, target) == 0
        await asyncio.to_thread(
            wait_until, lambda: evidence.posts >= args.alerts, 60, 0.1, "every finding posted to the sink"
        )
        print(f"{label}: done", file=sys.stderr, flush=True)
    finally:
        for proc in list(procs.processes):
            proc.stop()
        procs.processes.clear()
        await runner.cleanup()
    ordered = sorted(latencies)
    return Result(
        engine=engine,
        replicas=n,
        ingest_alerts_per_s=rate,
        post_p50_ms=statistics.median(ordered) * 1000,
        post_p99_ms=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
        findings_per_s=investigation_rate,
    )


async def main_async(args: argparse.Namespace) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="gw-bench-replicas-") as tmp:
        workdir = Path(tmp)
        pg_procs = ProcessManager(workdir / "pg-logs")
        pg = start_postgres(pg_procs, durable=True)  # fsync on, as SQLite's synchronous=FULL
        procs = ProcessManager(workdir / "logs")
        results = []
        try:
            for round_no in range(args.rounds):
                for engine, n in SETUPS:
                    results.append(await run_setup(engine, n, args, pg, workdir, procs, round_no))
        finally:
            procs.stop_all()
            pg_procs.stop_all()
            remove_postgres(pg)
        return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alerts", type=int, default=300, help="distinct alerts per setup")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent webhook connections")
    parser.add_argument("--workers", type=int, default=4, help="investigations at a time, per replica")
    parser.add_argument("--query-ms", type=float, default=50.0, help="time each evidence query takes")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every setup (figures per round)")
    args = parser.parse_args()
    results = asyncio.run(main_async(args))
    print(
        f"alerts={args.alerts} concurrency={args.concurrency} workers/replica={args.workers} "
        f"query_ms={args.query_ms:g} (one machine: every process shares its cores)"
    )
    print(
        f"{'engine':<11} {'replicas':>8} {'ingest alerts/s':>16} {'POST p50 ms':>12} {'POST p99 ms':>12}"
        f" {'findings/s':>11}"
    )
    for r in results:
        print(
            f"{r.engine:<11} {r.replicas:>8} {r.ingest_alerts_per_s:>16.0f} {r.post_p50_ms:>12.2f}"
            f" {r.post_p99_ms:>12.2f} {r.findings_per_s:>11.1f}"
        )


if __name__ == "__main__":
    main()
