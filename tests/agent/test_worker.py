"""The worker pool: bounded concurrency, timeouts and failures still give one finding per alert."""

from __future__ import annotations

import time
from collections.abc import Callable

from agent_webhook.config import AgentConfig
from agent_webhook.model import Alert, Diagnosis
from agent_webhook.store import Store
from tests.agent.conftest import ScriptedInvestigator, ServiceThread, make_alert, make_payload, post_alerts

StartService = Callable[..., ServiceThread]


def test_pool_is_bounded_and_every_alert_gets_one_finding(
    agent_config: Callable[..., AgentConfig], start_service: StartService
) -> None:
    investigator = ScriptedInvestigator(delay=0.2)
    svc = start_service(agent_config(workers=3), investigator)
    started = time.monotonic()
    # Distinct nodes: alerts of one node would be one incident, investigated one at a time.
    reply = post_alerts(svc.url, make_payload([make_alert(f"fp{i}", node=f"gpu-worker-{i}") for i in range(12)]))
    assert reply.status == 202
    assert time.monotonic() - started < 0.5  # answered before any investigation finished
    svc.wait_idle()
    assert investigator.peak == 3
    assert sorted(investigator.calls) == sorted(f"fp{i}" for i in range(12))
    assert len(svc.findings()) == 12


def test_timeout_gives_a_degraded_finding(
    agent_config: Callable[..., AgentConfig], start_service: StartService
) -> None:
    svc = start_service(agent_config(investigation_timeout_seconds=0.2), ScriptedInvestigator(delay=5))
    post_alerts(svc.url, make_payload([make_alert("slow")]))
    svc.wait_idle()
    (finding,) = svc.findings()
    assert finding["degraded"] == ["investigation timed out after 0.2s"]
    assert finding["severity"] == "critical"  # from the alert's own severity label
    assert finding["summary"] == "GPUXidError on gpu-worker-1 GPU 3"


def test_failing_investigator_gives_a_degraded_finding(
    agent_config: Callable[..., AgentConfig], start_service: StartService
) -> None:
    svc = start_service(agent_config(), ScriptedInvestigator(fail=True))
    post_alerts(svc.url, make_payload([make_alert("boom")]))
    svc.wait_idle()
    (finding,) = svc.findings()
    assert finding["degraded"] == ["investigation failed: RuntimeError"]


def test_interrupted_leases_are_requeued_and_poison_alerts_abandoned(tmp_path: object) -> None:
    """Store-level: a lease left by a dead process returns to the queue; past max_attempts it is not retried."""
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    db = tmp_path / "q.db"
    alert = Alert(
        fingerprint="fp",
        status="firing",
        labels={"alertname": "A"},
        annotations={},
        starts_at="2026-01-01T00:00:00Z",
        ends_at=None,
    )
    for attempt in range(1, 4):
        store = Store(db)
        recovered = store.open()
        assert recovered == (0 if attempt == 1 else 1)
        if attempt == 1:
            store.ingest([alert])
        job = store.claim(60)
        assert job is not None and job.attempts == attempt
        store.close()  # "killed" with the lease held
    store = Store(db)
    assert store.open() == 1
    job = store.claim(60)
    assert job is not None and job.attempts == 4
    diagnosis = Diagnosis(severity="info", summary="s", likely_cause="", diagnosis_markdown="", recommended_actions=[])
    assert store.complete(job, diagnosis, started_at=time.time(), finished_at=time.time()) is not None
    # A re-run that finishes after the finding exists does not make a second one.
    assert store.complete(job, diagnosis, started_at=time.time(), finished_at=time.time())[1] is False  # type: ignore[index]
    assert store.stats().findings == 1
    store.close()


def test_poison_alert_gets_abandoned_finding(
    agent_config: Callable[..., AgentConfig], start_service: StartService, tmp_path: object
) -> None:
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    config = agent_config(max_attempts=1)
    store = Store(config.db)
    store.open()
    store.ingest([Alert("fp", "firing", {"alertname": "A"}, {}, "2026-01-01T00:00:00Z", None)])
    store.claim(60)  # leased by a process that then died
    store.close()
    investigator = ScriptedInvestigator()
    svc = start_service(config, investigator)
    svc.wait_idle()
    (finding,) = svc.findings()
    assert "not retried" in finding["degraded"][0]
    assert investigator.calls == []


def test_stopping_hands_running_investigations_back(
    agent_config: Callable[..., AgentConfig], start_service: StartService
) -> None:
    """A clean stop (SIGTERM) mid-investigation re-queues the alert without counting an attempt."""
    import sqlite3

    config = agent_config()
    investigator = ScriptedInvestigator(delay=30)
    svc = start_service(config, investigator)
    post_alerts(svc.url, make_payload([make_alert("long")]))
    deadline = time.monotonic() + 10
    while not investigator.calls and time.monotonic() < deadline:
        time.sleep(0.05)
    svc.stop()
    with sqlite3.connect(config.db) as conn:
        assert conn.execute("SELECT state, attempts FROM jobs").fetchall() == [("queued", 0)]
    quick = start_service(config, ScriptedInvestigator())
    quick.wait_idle()
    assert len(quick.findings()) == 1
