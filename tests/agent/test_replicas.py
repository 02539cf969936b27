"""Three agent-webhook replicas on one real PostgreSQL behind a real Alertmanager HA pair.

Both Alertmanagers (clustered, gossiping on loopback) notify every replica, so each alert
reaches the replicas up to six times. Investigations are held open the honest way (the
Prometheus the agents query for evidence answers slowly), and one replica with investigations
in flight is killed with SIGKILL. Afterwards: exactly one finding per alert, exactly one sink
post per finding, one scale decision for the one alert that leads to one, and the dead replica's
investigations finished by the others once its leases expired.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.agent.conftest import FakeHTTP, SlowPrometheus, get_json
from tests.harness.postgres import PostgresServer
from tests.harness.processes import ManagedProcess, ProcessManager, free_port, http_get, wait_until
from tests.harness.promstack import AlertmanagerServer

pytestmark = pytest.mark.slow
AGENT = str(Path(sys.executable).parent / "agent-webhook")
NODES = 9


def _in_progress(url: str) -> float:
    for line in http_get(f"{url}/metrics")[1].decode().splitlines():
        if line.startswith("agent_webhook_investigations_in_progress "):
            return float(line.split()[-1])
    return 0.0


def _alert(labels: dict[str, str], started: datetime) -> dict[str, Any]:
    return {
        "labels": {"severity": "critical", **labels},
        "annotations": {"summary": f"{labels['alertname']} on {labels.get('node', '-')}"},
        "startsAt": started.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "generatorURL": "http://prometheus.example:9090/graph?g0.expr=up",
    }


def test_three_replicas_ha_alertmanagers_kill_9_one_finding_and_one_post_per_alert(
    tmp_path: Path,
    procs: ProcessManager,
    token_file: Path,
    fake_http: Callable[..., FakeHTTP],
    alertmanager_factory: Callable[..., AlertmanagerServer],
    postgres_server: PostgresServer,
    postgres_url: str,
) -> None:
    slow = SlowPrometheus(1.0)
    prometheus = fake_http(slow)
    sink = fake_http()
    replicas: list[tuple[str, ManagedProcess]] = []
    for i in range(3):
        port = free_port()
        config = tmp_path / f"agent-{i}.yml"
        config.write_text(
            json.dumps(
                {
                    "listen": f"127.0.0.1:{port}",
                    "db": postgres_url,
                    "token_file": str(token_file),
                    "workers": 2,
                    "prometheus_url": prometheus.url,
                    "sinks": [{"type": "webhook", "url": f"{sink.url}/findings"}],
                    # On, so that a decision is reserved; a backlog outside `partitions` is
                    # refused before the RunPod API, which this test has none of.
                    "actions": {
                        "enabled": True,
                        "dry_run": True,
                        "partitions": ["gpu"],
                        "spend_cap_dollars_per_hour": 10,
                    },
                }
            )
        )
        proc = procs.start(f"agent-webhook-{i}", [AGENT, "--config", str(config), "--log-level", "debug"])
        replicas.append((f"http://127.0.0.1:{port}", proc))
    for url, proc in replicas:
        proc.wait_http(f"{url}/healthz")

    webhook = {
        "send_resolved": True,
        "http_config": {"authorization": {"type": "Bearer", "credentials_file": str(token_file)}},
    }
    am_config = {
        "route": {
            "receiver": "agents",
            "group_by": ["alertname", "node"],
            "group_wait": "1s",
            "group_interval": "2s",
            "repeat_interval": "1h",
        },
        "receivers": [{"name": "agents", "webhook_configs": [{"url": f"{u}/alerts", **webhook} for u, _ in replicas]}],
    }
    gossip = [free_port(), free_port()]
    am1 = alertmanager_factory(am_config, cluster_port=gossip[0], peers=[gossip[1]])
    am2 = alertmanager_factory(am_config, cluster_port=gossip[1], peers=[gossip[0]])
    wait_until(
        lambda: len(json.loads(http_get(f"{am1.url}/api/v2/status")[1])["cluster"]["peers"]) == 2,
        30,
        what="the Alertmanagers to form a cluster",
    )

    started = datetime.now(UTC) - timedelta(seconds=5)
    alerts = [_alert({"alertname": "GPUXidError", "node": f"gpu-{n}", "gpu": "0"}, started) for n in range(NODES)]
    # One alert that leads to a scale decision, reserved once across the replicas and all copies.
    alerts.append(_alert({"alertname": "SlurmGPUQueueBacklog", "partition": "cpu"}, started))
    # Prometheus sends every alert to both members of the pair.
    am1.post_alerts(alerts)
    am2.post_alerts(alerts)

    # Investigations in flight: kill -9 a replica that holds some.
    def busy_replica() -> tuple[str, ManagedProcess] | None:
        return next(((u, p) for u, p in replicas if _in_progress(u) >= 1), None)

    victim = wait_until(busy_replica, 30, what="a replica with an investigation in flight")
    assert isinstance(victim, tuple)
    victim[1].kill()
    killed_at = time.monotonic()
    survivors = [(u, p) for u, p in replicas if p is not victim[1]]
    with psycopg.connect(postgres_url) as conn:
        leased = conn.execute("SELECT COUNT(*) FROM jobs WHERE state='leased'").fetchone()
        assert leased is not None and leased[0] >= 1
    slow.slow = False

    expected = len(alerts)
    survivor = survivors[0][0]

    def findings() -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = get_json(f"{survivor}/findings?limit=1000").json()["findings"]
        return found

    wait_until(lambda: len(findings()) >= expected, 90, what="a finding for every alert")
    found = findings()
    assert len(found) == expected
    assert set(Counter(f["fingerprints"][0] for f in found).values()) == {1}
    (backlog,) = [f for f in found if f["alertname"] == "SlurmGPUQueueBacklog"]
    assert backlog["action"]["outcome"] == "refused" and backlog["action"]["reason"] == "other_partition"
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT COUNT(*), MIN(reason) FROM action_decisions").fetchone() == (1, "other_partition")
        assert conn.execute("SELECT COUNT(*) FROM jobs WHERE state<>'done'").fetchone() == (0,)
        # The dead replica's investigations were taken over once their leases expired.
        retaken = conn.execute("SELECT COUNT(*) FROM jobs WHERE attempts>=2").fetchone()
        assert retaken is not None and retaken[0] >= 1
        alerts_stored = conn.execute("SELECT COUNT(*), SUM(times_seen) FROM alerts").fetchone()
    assert alerts_stored is not None and alerts_stored[0] == expected
    assert alerts_stored[1] > expected  # the HA pair's and the fan-out's copies arrived, as duplicates
    assert time.monotonic() - killed_at < 90

    # Exactly one sink post per finding (its incident's first post: one node, one incident).
    wait_until(lambda: len(sink.requests) >= expected, 30, what="the sink posts")
    time.sleep(2)  # a duplicate post, if any replica were to make one, would arrive by now
    posted = Counter(r.json()["finding"]["id"] for r in sink.requests)
    assert set(posted) == {f["id"] for f in found}
    assert set(posted.values()) == {1}, posted
    assert {r.json()["event"] for r in sink.requests} == {"new"}

    # The database password is in every replica's configuration, and in none of their logs.
    for _, proc in replicas:
        assert postgres_server.password not in proc.log_tail(1_000_000)
