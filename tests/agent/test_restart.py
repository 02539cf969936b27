"""kill -9 with a full queue, restart: every stored alert investigated to exactly one finding.

The real `agent-webhook` console script runs as a subprocess. Investigations are made slow
the honest way: the Prometheus it queries for evidence is a loopback server that answers
slowly, so the queue is full and investigations are in flight when the process is killed.
"""

from __future__ import annotations

import json
import sqlite3
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.agent.conftest import FakeHTTP, SlowPrometheus, get_json, make_alert, make_payload, post_alerts
from tests.harness.processes import ProcessManager, free_port, wait_until

pytestmark = pytest.mark.slow
AGENT = str(Path(sys.executable).parent / "agent-webhook")
ALERTS = 24


def test_kill_9_with_a_full_queue_then_restart(
    tmp_path: Path, procs: ProcessManager, token_file: Path, fake_http: Callable[..., FakeHTTP]
) -> None:
    # Slow until the kill; after the restart, fast, whatever number of queries an investigation makes.
    slow = SlowPrometheus(0.6)
    prometheus = fake_http(slow)
    sink = fake_http()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    db = tmp_path / "agent.db"
    config = tmp_path / "agent.yml"
    config.write_text(
        json.dumps(
            {
                "listen": f"127.0.0.1:{port}",
                "db": str(db),
                "token_file": str(token_file),
                "workers": 2,
                "prometheus_url": prometheus.url,
                "sinks": [{"type": "webhook", "url": f"{sink.url}/findings"}],
            }
        )
    )
    argv = [AGENT, "--config", str(config), "--log-level", "debug"]
    first = procs.start("agent-webhook", argv)
    first.wait_http(f"{url}/healthz")
    payloads = [make_payload([make_alert(f"fp{i:02d}{j}") for j in range(4)]) for i in range(ALERTS // 4)]
    for payload in payloads:
        assert post_alerts(url, payload).status == 202
    # Investigations are in flight and most of the queue is still waiting.
    prometheus.wait_for(2)
    first.kill()
    slow.slow = False
    with sqlite3.connect(db) as conn:
        states = dict(conn.execute("SELECT state, COUNT(*) FROM jobs GROUP BY state").fetchall())
        done_before = int(conn.execute("SELECT COUNT(*) FROM findings").fetchone()[0])
    assert states.get("leased", 0) >= 1, states
    assert done_before < ALERTS // 2, "the queue was not full when the process was killed"

    second = procs.start("agent-webhook", argv)
    second.wait_http(f"{url}/healthz")
    assert "re-queued investigations interrupted by a previous process" in second.log_tail()
    # Alertmanager (or its HA peer) re-sends after the restart: all duplicates.
    for payload in payloads:
        assert post_alerts(url, payload).json()["duplicates"] == 4

    def all_found() -> bool:
        return len(get_json(f"{url}/findings?limit=1000").json()["findings"]) >= ALERTS

    wait_until(all_found, 60, what="every alert to have a finding")
    findings = get_json(f"{url}/findings?limit=1000").json()["findings"]
    per_alert = Counter(f["fingerprints"][0] for f in findings)
    assert len(findings) == ALERTS
    assert set(per_alert) == {f"fp{i:02d}{j}" for i in range(ALERTS // 4) for j in range(4)}
    assert set(per_alert.values()) == {1}
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM jobs WHERE state != 'done'").fetchone()[0] == 0
    # Every finding reaches the sink; one finding id per alert (sinks are at-least-once).
    wait_until(lambda: len({r.json()["finding"]["id"] for r in sink.requests}) >= ALERTS, 30, what="sink posts")
    ids_by_alert: dict[str, set[str]] = {}
    for r in sink.requests:
        finding = r.json()["finding"]
        ids_by_alert.setdefault(finding["fingerprints"][0], set()).add(finding["id"])
    assert all(len(ids) == 1 for ids in ids_by_alert.values())
    assert {next(iter(v)) for v in ids_by_alert.values()} == {f["id"] for f in findings}
