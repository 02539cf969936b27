"""The store on both engines, and several stores (replicas) on one real PostgreSQL at once.

Each replica here is its own Store with its own connection, driven from its own thread, as the
agent's processes are (the multi-process test with Alertmanager is tests/agent/test_replicas.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from agent_webhook.config import ConfigError, build_config
from agent_webhook.model import Alert, Diagnosis
from agent_webhook.store import Store, StoreError
from agent_webhook.wiring import make_store
from tests.harness.postgres import PostgresServer

DIAGNOSIS = Diagnosis(severity="info", summary="s", likely_cause="", diagnosis_markdown="", recommended_actions=[])


def alert(
    fp: str, *, status: str = "firing", node: str | None = None, starts_at: str = "2026-01-01T00:00:00Z"
) -> Alert:
    labels = {"alertname": "GPUXidError", **({"node": node} if node else {})}
    return Alert(fp, status, labels, {}, starts_at, None if status == "firing" else "2026-01-01T00:05:00Z")


def opened(target: str | Path, **kwargs: Any) -> Store:
    store = Store(target, **kwargs)
    store.open()
    return store


def together(fns: list[Callable[[], Any]]) -> list[Any]:
    """Run the calls at the same instant, one thread each (a barrier), and return their results."""
    barrier = threading.Barrier(len(fns))
    results: list[Any] = [None] * len(fns)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fns[i]()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return results


# -- both engines, one API ------------------------------------------------------------------


def test_one_store_api_on_both_engines(store_target: str | Path) -> None:
    """Dedup, the queue, one finding per alert, the outbox and its order, paging, resolve."""
    store = opened(store_target, sinks=["slack"])
    try:
        first = store.ingest([alert("a", node="n1"), alert("b", node="n2")])
        assert (first.new, first.duplicates) == (2, 0)
        again = store.ingest([alert("a", node="n1")])
        assert (again.new, again.duplicates) == (0, 1)
        jobs = [store.claim(60), store.claim(60)]
        assert all(jobs) and store.claim(60) is None
        for job in jobs:
            assert job is not None
            assert store.complete(job, DIAGNOSIS, started_at=time.time(), finished_at=time.time())[1] is True  # type: ignore[index]
        job = jobs[0]
        assert job is not None
        assert store.complete(job, DIAGNOSIS, started_at=time.time(), finished_at=time.time())[1] is False  # type: ignore[index]
        assert store.stats().findings == 2
        posts = store.due_deliveries("slack")
        assert [p.event for p in posts] == ["new", "new"]
        if store.conn.shared:  # replicas: taken posts are not handed out again (SQLite has one process)
            assert store.due_deliveries("slack") == []
        store.delivered(posts[0], "ts-1")
        store.release_deliveries(posts[1:])
        assert [p.id for p in store.due_deliveries("slack")] == [posts[1].id]
        store.delivered(posts[1], "ts-2")
        resolved = store.ingest([alert("a", status="resolved", node="n1")])
        assert resolved.resolved == 1
        (resolve_post,) = store.due_deliveries("slack")
        assert resolve_post.event == "resolved" and resolve_post.ref == "ts-1"
        page, cursor = store.findings(limit=1)
        assert len(page) == 1 and cursor is not None
        rest, end = store.findings(limit=10, cursor=cursor)
        assert len(rest) == 1 and end is None and rest[0]["id"] != page[0]["id"]
        assert {f["status"] for f in store.findings(status="resolved")[0]} == {"resolved"}
        incidents, _ = store.incidents(node="n1")
        assert len(incidents) == 1 and incidents[0]["status"] == "resolved"
        assert len(store.history(node="n2", uuid=None, serial=None, since=0)) == 1
        store.check()
    finally:
        store.close()


# -- several replicas on one PostgreSQL -------------------------------------------------------


def test_replicas_ingesting_the_same_alerts_store_each_once(postgres_url: str) -> None:
    """An HA pair notifies every replica: the same alerts arrive at three stores at once."""
    replicas = [opened(postgres_url) for _ in range(3)]
    try:
        batch = [alert(f"fp{i}", node=f"n{i % 4}") for i in range(40)]
        results = together([lambda r=r: r.ingest(batch) for r in replicas])
        assert sum(r.new for r in results) == 40
        assert sum(r.duplicates for r in results) == 80
        one = replicas[0]
        assert one.conn.execute("SELECT COUNT(*) FROM alerts").fetchone()[0] == 40
        assert one.conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 40
        # One incident per node, however the replicas interleaved.
        assert one.conn.execute("SELECT COUNT(*) FROM incidents").fetchone()[0] == 4
        resolved = [alert(f"fp{i}", status="resolved", node=f"n{i % 4}") for i in range(40)]
        results = together([lambda r=r: r.ingest(resolved) for r in replicas])
        assert sum(r.resolved for r in results) == 40
    finally:
        for r in replicas:
            r.close()


def test_replicas_claim_each_job_once_and_make_one_finding_each(postgres_url: str) -> None:
    replicas = [opened(postgres_url, sinks=["slack"]) for _ in range(3)]
    try:
        replicas[0].ingest([alert(f"fp{i}") for i in range(30)])  # no node: 30 incidents

        def drain(store: Store) -> list[int]:
            done = []
            while (job := store.claim(60)) is not None:
                store.complete(job, DIAGNOSIS, started_at=time.time(), finished_at=time.time())
                done.append(job.alert_id)
            return done

        claimed = together([lambda r=r: drain(r) for r in replicas])
        flat = [a for c in claimed for a in c]
        assert sorted(flat) == sorted(set(flat)) and len(flat) == 30
        assert replicas[0].stats().findings == 30

        def post(store: Store) -> list[int]:
            ids = []
            while items := store.due_deliveries("slack"):
                for item in items:
                    store.delivered(item, None)
                    ids.append(item.id)
            return ids

        posted = together([lambda r=r: post(r) for r in replicas])
        flat = [i for p in posted for i in p]
        assert len(flat) == 30 and len(set(flat)) == 30  # each sink post by exactly one replica
    finally:
        for r in replicas:
            r.close()


def test_a_killed_replicas_lease_is_taken_over_after_it_expires(postgres_url: str) -> None:
    first, second = opened(postgres_url), opened(postgres_url)
    try:
        first.ingest([alert("fp")])
        job = first.claim(lease_seconds=1.0)
        assert job is not None and job.attempts == 1
        # The replica dies: its connection goes, its lease stays in the table.
        first.close()
        assert second.claim(60) is None  # the lease is live
        time.sleep(1.2)
        taken = second.claim(60)
        assert taken is not None and taken.alert_id == job.alert_id and taken.attempts == 2
        assert second.complete(taken, DIAGNOSIS, started_at=time.time(), finished_at=time.time())[1] is True  # type: ignore[index]
        # The "dead" one finishing late (it was only slow) makes no second finding.
        late = opened(postgres_url)
        assert late.complete(job, DIAGNOSIS, started_at=time.time(), finished_at=time.time())[1] is False  # type: ignore[index]
        assert late.stats().findings == 1
        late.close()
    finally:
        second.close()


def test_one_action_decision_across_replicas(postgres_url: str) -> None:
    replicas = [opened(postgres_url) for _ in range(4)]
    try:
        results = together(
            [lambda r=r: r.action_claim("fp", "2026-01-01T00:00:00Z", "A", "scale_up") for r in replicas]
        )
        assert sum(1 for r in results if r is None) == 1  # exactly one replica reserved it
    finally:
        for r in replicas:
            r.close()


def test_replicas_starting_together_migrate_once(postgres_url: str) -> None:
    stores = [Store(postgres_url) for _ in range(4)]
    assert together([s.open for s in stores]) == [0, 0, 0, 0]
    for s in stores:
        s.close()


def test_a_lost_connection_is_reopened_at_the_next_transaction(postgres_url: str) -> None:
    store = opened(postgres_url)
    try:
        with psycopg.connect(postgres_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname=current_database()"
                " AND pid<>pg_backend_pid()"
            )
        with pytest.raises(StoreError):
            store.check()  # degraded (a 503 on /healthz), not a crash
        assert store.ingest([alert("fp")]).new == 1  # and back at the next transaction
    finally:
        store.close()


def test_database_url_config_and_errors_never_show_the_password(postgres_server: PostgresServer) -> None:
    url = postgres_server.url("postgres", password="wrong-secret-pw")
    config = build_config({"db": url}, Path("/nonexistent"))
    assert config.db_url == url and "wrong-secret-pw" not in repr(config)
    store = make_store(config)
    with pytest.raises(StoreError) as info:
        store.open()
    assert "wrong-secret-pw" not in str(info.value)
    assert f"127.0.0.1:{postgres_server.port}" in str(info.value)
    with pytest.raises(ConfigError, match="postgresql:// URL"):
        build_config({"db": "mysql://h/db"}, Path("/nonexistent"))
