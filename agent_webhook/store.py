"""Durable state of the agent in one SQLite database: alerts, the work queue, findings, the sink outbox.

Or in PostgreSQL (`db` a postgresql:// URL), shared by agent replicas: the same SQL through
:mod:`agent_webhook.db`, which holds what differs between the engines. Where SQLite relies on
being the only process on its file, the queries decide between replicas themselves: unique keys
with ``ON CONFLICT DO NOTHING`` (alerts, findings, outbox rows, action decisions), ``FOR UPDATE
SKIP LOCKED`` where work is taken (jobs, sink posts), leases that expire when a replica dies
(taken over by :meth:`Store.claim`), and advisory locks where a choice spans rows (an alert's
incident). See docs/scaling.md.

Why SQLite in WAL mode with ``synchronous=FULL`` by default: the receiver answers 202 only after
the alerts are committed, and Alertmanager never re-sends a notification it got a 2xx for. With
``NORMAL``, a WAL commit survives a crash of this process (kill -9) but not a power loss or
kernel panic, so an acknowledged alert could vanish. ``FULL`` fsyncs the WAL on every commit;
measured here at ~0.2 ms per commit, it costs nothing that matters at Alertmanager's rates, so
durability wins. ``db_synchronous: normal`` is available for disks where fsync is slow.

Invariants, enforced by the schema rather than by hope:

- ``alerts`` is unique on (fingerprint, canonical startsAt): group re-sends and HA duplicates
  update ``times_seen`` and nothing else.
- ``jobs`` has one row per firing alert; a worker leases it. Leases of a previous process are
  returned to the queue at start-up (a lock file guarantees there is no other live process on
  this database), so an investigation cut short by kill -9 runs again.
- ``findings`` is unique on ``alert_id``: however often an investigation is re-run after a crash,
  one finding exists per alert. The finding, its outbox rows and the job's completion are one
  transaction.
- ``outbox`` holds one row per (finding, sink, event); delivery is retried with exponential
  backoff until it succeeds. Events of one finding reach a sink in order (the resolve after the
  first post, whose reference - a Slack ``ts``, a Grafana annotation id - it needs).

All methods are synchronous and meant to run on the store's single thread (:meth:`Store.run`),
which keeps fsyncs off the event loop and needs no locking. That thread takes work by priority:
ingest first (a webhook is waiting for its 202), then API reads, then the workers' and the
delivery loops' bookkeeping, so a busy worker pool does not add to POST latency.

Only ingest commits need the fsync: a lease, a finding or a delivery record lost to a power cut
is redone (the job is still queued), and WAL frames are made durable in order, so the next
ingest's fsync persists them too. Background transactions therefore commit with
``synchronous=NORMAL`` even when ingest uses ``FULL``; automatic checkpoints are off on the
ingest path and run as background work instead.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fcntl
import itertools
import json
import os
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar

from agent_webhook import incidents
from agent_webhook.config import Synchronous, is_database_url
from agent_webhook.db import DB_ERRORS, Database, PostgresDatabase, SqliteDatabase, describe
from agent_webhook.model import Alert, Diagnosis
from agent_webhook.payload import canonical_time
from gpu_watchdog_core.logs import redact, redact_value

P = ParamSpec("P")
T = TypeVar("T")
# "new" is an incident's first post; the rest are threaded under it (agent_webhook.incidents).
# "acted" reports a scale decision taken after the finding was posted (a deferred one).
SinkEvent = Literal["new", "joined", "resolved", "acked", "unacked", "acted"]
_EVENTS: tuple[SinkEvent, ...] = ("new", "joined", "resolved", "acked", "unacked", "acted")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    starts_at_key TEXT NOT NULL,
    starts_at TEXT NOT NULL,
    ends_at TEXT,
    status TEXT NOT NULL,
    alertname TEXT NOT NULL,
    node TEXT,
    gpu TEXT,
    labels TEXT NOT NULL,
    annotations TEXT NOT NULL,
    generator_url TEXT NOT NULL,
    receiver TEXT NOT NULL,
    group_key TEXT NOT NULL,
    external_url TEXT NOT NULL,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL,
    times_seen INTEGER NOT NULL DEFAULT 1,
    UNIQUE (fingerprint, starts_at_key)
);
CREATE TABLE IF NOT EXISTS jobs (
    alert_id INTEGER PRIMARY KEY REFERENCES alerts(id),
    state TEXT NOT NULL CHECK (state IN ('queued', 'leased', 'done')),
    attempts INTEGER NOT NULL DEFAULT 0,
    enqueued_at REAL NOT NULL,
    lease_until REAL,
    started_at REAL,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, alert_id);
CREATE TABLE IF NOT EXISTS findings (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    alert_id INTEGER NOT NULL UNIQUE REFERENCES alerts(id),
    fingerprint TEXT NOT NULL,
    starts_at TEXT NOT NULL,
    alertname TEXT NOT NULL,
    node TEXT,
    gpu TEXT,
    status TEXT NOT NULL,
    severity TEXT NOT NULL,
    summary TEXT NOT NULL,
    likely_cause TEXT NOT NULL,
    diagnosis TEXT NOT NULL,
    evidence TEXT NOT NULL,
    actions TEXT NOT NULL,
    llm_used INTEGER NOT NULL,
    llm_model TEXT,
    triage_rule TEXT,
    degraded TEXT NOT NULL,
    timings TEXT NOT NULL,
    labels TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    resolved_at REAL
);
CREATE INDEX IF NOT EXISTS findings_by_alertname ON findings (alertname, seq);
CREATE INDEX IF NOT EXISTS findings_by_node ON findings (node, seq);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    finding_seq INTEGER NOT NULL REFERENCES findings(seq),
    sink TEXT NOT NULL,
    event TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'done')),
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_error TEXT,
    created_at REAL NOT NULL,
    delivered_at REAL,
    UNIQUE (finding_seq, sink, event)
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (sink, state, next_attempt_at);
CREATE TABLE IF NOT EXISTS action_decisions (
    id INTEGER PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    starts_at_key TEXT NOT NULL,
    alertname TEXT NOT NULL,
    action TEXT NOT NULL,
    outcome TEXT NOT NULL,
    reason TEXT,
    decision TEXT,
    decided_at REAL NOT NULL,
    finished_at REAL,
    UNIQUE (fingerprint, starts_at_key)
);
CREATE INDEX IF NOT EXISTS action_decisions_by_time ON action_decisions (outcome, decided_at);
CREATE INDEX IF NOT EXISTS alerts_by_status ON alerts (status);
-- Firing alerts that reconciliation found missing from Alertmanager, and since when
-- (persistent: an agent restart neither resets nor fakes the absence).
CREATE TABLE IF NOT EXISTS alert_absence (
    alert_id INTEGER PRIMARY KEY REFERENCES alerts(id),
    absent_since REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sink_refs (
    finding_seq INTEGER NOT NULL REFERENCES findings(seq),
    sink TEXT NOT NULL,
    ref TEXT NOT NULL,
    PRIMARY KEY (finding_seq, sink)
);
"""

# A scale decision refused only for the cooldown: nothing was done, decided again when it ends.
DEFERRED = ("refused", "cooldown")
MAX_PAGE = 1000
# Work priorities on the store thread (lower runs first).
INGEST, READ, BACKGROUND = 0, 1, 2
# How long a replica owns the sink posts it took (due_deliveries): one post's time, with margin.
# A replica killed mid-post leaves them to another after this.
DELIVERY_LEASE_SECONDS = 120.0
_PAYLOAD_ERRORS: tuple[type[Exception], ...] = (*DB_ERRORS, ValueError)


_Item = tuple[int, int, Callable[[], Any] | None, Future[Any] | None, Any]
_SOLO = object()  # marks an item that is not part of a batch


class _PriorityThread:
    """One thread that runs submitted calls lowest priority first, FIFO within a priority.

    Batchable items (:meth:`submit_batch`) queued together are handed to `batch_fn` in one
    call: concurrent webhooks share one transaction and one fsync (group commit).
    """

    def __init__(self, name: str, batch_fn: Callable[[list[Any]], list[Any]]) -> None:
        self._queue: queue.PriorityQueue[_Item] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._batch_fn = batch_fn
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, priority: int, fn: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        self._queue.put((priority, next(self._seq), fn, future, _SOLO))
        return future

    def submit_batch(self, priority: int, arg: Any) -> Future[Any]:
        future: Future[Any] = Future()
        self._queue.put((priority, next(self._seq), None, future, arg))
        return future

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            _priority, _, fn, future, arg = item
            if future is None:
                return
            if arg is not _SOLO:
                self._run_batch(item)
                continue
            if fn is None or not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

    def _run_batch(self, first: _Item) -> None:
        items = [first]
        while True:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt[4] is _SOLO or nxt[0] != first[0] or nxt[3] is None:
                self._queue.put(nxt)  # same (priority, seq): its place in line is unchanged
                break
            items.append(nxt)
        live = [i for i in items if i[3] is not None and i[3].set_running_or_notify_cancel()]
        try:
            results = self._batch_fn([i[4] for i in live])
        except BaseException as exc:
            results = [exc] * len(live)
        for (_, _, _, future, _), result in zip(live, results, strict=True):
            assert future is not None
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    def shutdown(self) -> None:
        self._queue.put((99, next(self._seq), None, None, _SOLO))
        self._thread.join()


class StoreError(RuntimeError):
    """The database cannot be opened or written (a 503 for the request that hit it)."""


_BATCH_ERRORS: tuple[type[Exception], ...] = (*DB_ERRORS, StoreError)


class DatabaseLocked(StoreError):
    """Another live agent-webhook holds this database."""


class QueryError(ValueError):
    """A findings query is invalid (bad cursor, limit or time); the message is the 400 reason."""


@dataclass
class IngestResult:
    new: int = 0  # firing alerts stored and queued for investigation
    resolved: int = 0  # resolve notifications that changed a stored alert
    duplicates: int = 0  # group re-sends and HA duplicates
    resolved_unseen: int = 0  # resolved alerts never seen firing: stored, not investigated


@dataclass
class Job:
    alert_id: int
    attempts: int
    alert: Alert
    enqueued_at: float
    incident_id: str | None = None


@dataclass
class OutboxItem:
    id: int
    sink: str
    event: SinkEvent
    attempts: int
    finding: dict[str, Any]
    ref: str | None
    incident_id: str | None = None


@dataclass
class Stats:
    queued: int = 0
    leased: int = 0
    findings: int = 0
    outbox_pending: dict[str, int] = field(default_factory=dict)


def _now() -> float:
    return time.time()


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"s": seq}).encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> int:
    try:
        data = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        seq = data["s"]
    except (ValueError, TypeError, KeyError, binascii.Error):
        raise QueryError("cursor: not a cursor this server issued") from None
    # SQLite integers are 64-bit signed: a larger one would be an OverflowError, not a 400.
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 <= seq < 2**63:
        raise QueryError("cursor: not a cursor this server issued")
    return seq


class Store:
    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: Synchronous = "full",
        sinks: Sequence[str] = (),
        incident_window: float = incidents.DEFAULT_WINDOW_SECONDS,
    ) -> None:
        # A postgresql:// URL: a server shared by replicas; anything else: a SQLite file of one process.
        self.url = str(path) if is_database_url(str(path)) else None
        self.path = Path(path) if self.url is None else Path()
        self.where = describe(self.url) if self.url is not None else str(self.path)
        self.incident_window = incident_window
        self.synchronous = synchronous
        self.sinks = list(sinks)
        self._executor: _PriorityThread | None = None
        self._conn: Database | None = None
        self._lock_fd: int | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def open(self, *, recover: bool = True) -> int:
        """Open (creating) the database, migrate its schema, re-queue leases of a dead process.

        Returns how many interrupted investigations went back to the queue (0 without `recover`).
        On PostgreSQL nothing is re-queued at start: the other replicas' leases are live, and an
        expired lease (its replica died) is taken over by :meth:`claim`.
        """
        if self.url is not None:
            try:
                self._conn = PostgresDatabase(self.url)
                self._conn.migration_lock(True)
                try:
                    _migrate(self._conn)
                finally:
                    self._conn.migration_lock(False)
            except DB_ERRORS as exc:
                self.close()
                raise StoreError(f"database {self.where}: {redact(str(exc).strip())}") from None
            return 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._take_lock()
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10)
            conn.row_factory = sqlite3.Row
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"database {self.path}: cannot switch to WAL mode (got {mode})")
            conn.execute(f"PRAGMA synchronous={self.synchronous.upper()}")
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.execute("PRAGMA foreign_keys=ON")
            db = SqliteDatabase(conn, self.synchronous)
            _migrate(db)
        except sqlite3.Error as exc:
            self._release_lock()
            raise StoreError(f"database {self.path}: {exc}") from None
        except OSError as exc:
            self._release_lock()
            raise StoreError(f"database {self.path}: {exc.strerror or exc}") from None
        self._conn = db
        if not recover:
            return 0
        with self._tx() as c:
            return c.execute("UPDATE jobs SET state='queued', lease_until=NULL WHERE state='leased'").rowcount

    def _take_lock(self) -> None:
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DatabaseLocked(f"database {self.path} is in use by another agent-webhook ({lock_path})") from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self._release_lock()

    @property
    def executor(self) -> _PriorityThread:
        if self._executor is None:
            self._executor = _PriorityThread("store", self._ingest_batch)
        return self._executor

    async def call(self, priority: int, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run a store method on the store's thread, at `priority` (INGEST, READ, BACKGROUND)."""
        return await asyncio.wrap_future(self.executor.submit(priority, lambda: fn(*args, **kwargs)))

    async def ingest_async(self, alerts: list[Alert]) -> IngestResult:
        """:meth:`ingest` on the store's thread, group-committed with concurrent webhooks."""
        result: IngestResult = await asyncio.wrap_future(self.executor.submit_batch(INGEST, alerts))
        return result

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Background work (workers, deliveries) on the store's thread."""
        return await self.call(BACKGROUND, fn, *args, **kwargs)

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.submit(BACKGROUND, self.close).result()
            self._executor.shutdown()
            self._executor = None
        else:
            self.close()

    def checkpoint(self) -> None:
        """Background maintenance (SQLite: fold the WAL back into the database)."""
        self.conn.checkpoint()

    @property
    def conn(self) -> Database:
        if self._conn is None:
            raise StoreError("database is not open")
        return self._conn

    @contextlib.contextmanager
    def _tx(self, *, durable: bool = False) -> Any:
        conn = self.conn
        conn.begin(durable)
        try:
            yield conn
        except BaseException:
            with contextlib.suppress(*DB_ERRORS):  # a lost connection has no transaction to roll back
                conn.rollback()
            raise
        conn.commit()

    # -- ingest -----------------------------------------------------------------------------

    def ingest(self, alerts: Iterable[Alert]) -> IngestResult:
        """Store a payload's alerts in one transaction; deduplicate on (fingerprint, startsAt)."""
        result = IngestResult()
        now = _now()
        try:
            alerts = list(alerts)
            with self._tx(durable=True) as c:
                self._lock_incidents(c, alerts)
                for alert in alerts:
                    self._ingest_one(c, alert, now, result)
        except DB_ERRORS as exc:
            raise StoreError(f"cannot store alerts: {exc}") from None
        return result

    def _ingest_batch(self, batches: list[list[Alert]]) -> list[IngestResult | BaseException]:
        """Several payloads in one durable transaction, each in its own savepoint."""
        now = _now()
        out: list[IngestResult | BaseException] = []
        try:
            with self._tx(durable=True) as c:
                self._lock_incidents(c, [a for alerts in batches for a in alerts])
                for alerts in batches:
                    result = IngestResult()
                    c.execute("SAVEPOINT payload")
                    try:
                        for alert in alerts:
                            self._ingest_one(c, alert, now, result)
                    except _PAYLOAD_ERRORS as exc:
                        c.execute("ROLLBACK TO payload")
                        c.execute("RELEASE payload")
                        out.append(StoreError(f"cannot store alerts: {exc}"))
                        continue
                    c.execute("RELEASE payload")
                    out.append(result)
        except _BATCH_ERRORS as exc:
            return [StoreError(f"cannot store alerts: {exc}")] * len(batches)
        return out

    @staticmethod
    def _lock_incidents(c: Database, alerts: Sequence[Alert]) -> None:
        """Replicas assign a node's alerts to its incident one at a time (PostgreSQL; SQLite has
        one writer). Every transaction takes its keys sorted, so two never wait on each other."""
        for key in sorted({incidents.incident_key(a) for a in alerts if a.status == "firing"}):
            c.lock("incident:" + key)

    def _ingest_one(self, c: Database, alert: Alert, now: float, result: IngestResult) -> None:
        key = canonical_time(alert.starts_at, "startsAt")
        # FOR UPDATE on PostgreSQL: two replicas handling one alert's resolve do it one after the other.
        find = "SELECT id, status FROM alerts WHERE fingerprint=? AND starts_at_key=?" + c.for_update  # noqa: S608
        row = c.execute(find, (alert.fingerprint, key)).fetchone()
        inserted = None
        if row is None:
            # ON CONFLICT: another replica may store the same alert (an HA peer's copy) right now;
            # the unique key keeps one, and this copy counts as the duplicate it is.
            inserted = c.execute(
                "INSERT INTO alerts (fingerprint, starts_at_key, starts_at, ends_at, status, alertname, node, gpu,"
                " labels, annotations, generator_url, receiver, group_key, external_url, first_seen, last_seen)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (fingerprint, starts_at_key) DO NOTHING RETURNING id",
                (
                    alert.fingerprint,
                    key,
                    alert.starts_at,
                    alert.ends_at,
                    alert.status,
                    alert.alertname,
                    alert.node,
                    alert.gpu,
                    json.dumps(alert.labels),
                    json.dumps(alert.annotations),
                    alert.generator_url,
                    alert.receiver,
                    alert.group_key,
                    alert.external_url,
                    now,
                    now,
                ),
            ).fetchone()
            if inserted is None:
                row = c.execute(find, (alert.fingerprint, key)).fetchone()
        if inserted is not None:
            new_id = int(inserted[0])
            if alert.status == "firing":
                c.execute("INSERT INTO jobs (alert_id, state, enqueued_at) VALUES (?, 'queued', ?)", (new_id, now))
                incidents.assign(c, new_id, alert, now, self.incident_window)
                result.new += 1
            else:
                result.resolved_unseen += 1
            return
        alert_id, stored_status = int(row["id"]), str(row["status"])
        if stored_status == "firing" and alert.status == "resolved":
            c.execute("UPDATE alerts SET last_seen=?, times_seen=times_seen+1 WHERE id=?", (now, alert_id))
            self._resolve(c, alert_id, alert.ends_at, now, reason=None)
            result.resolved += 1
            return
        # Same key, same (or older) status: a group re-send, a repeat, or an HA peer's copy.
        c.execute("UPDATE alerts SET last_seen=?, times_seen=times_seen+1 WHERE id=?", (now, alert_id))
        result.duplicates += 1

    def _resolve(self, c: Database, alert_id: int, ends_at: str | None, now: float, reason: str | None) -> None:
        """Mark a firing alert and its finding resolved and enqueue the 'resolved' sink posts.

        The one resolve path: a resolved notification and reconciliation both come here, so a
        later notification for an alert reconciliation already resolved is a duplicate (the
        alert is no longer firing) and the outbox's unique key sends each sink one 'resolved'.
        """
        c.execute(
            "UPDATE alerts SET status='resolved', ends_at=?, resolved_reason=? WHERE id=?", (ends_at, reason, alert_id)
        )
        c.execute("DELETE FROM alert_absence WHERE alert_id=?", (alert_id,))
        incident = c.execute("SELECT incident_id FROM alerts WHERE id=?", (alert_id,)).fetchone()[0]
        if incident is not None:
            incidents.refresh_status(c, str(incident), now)
        finding = c.execute("SELECT seq FROM findings WHERE alert_id=?", (alert_id,)).fetchone()
        if finding is not None:
            c.execute(
                "UPDATE findings SET status='resolved', resolved_at=?, updated_at=?, resolved_reason=? WHERE seq=?",
                (now, now, reason, finding["seq"]),
            )
            self._enqueue_sinks(c, int(finding["seq"]), "resolved", now, incident_id=incident)

    def reconcile(self, active: set[tuple[str, str]], stale_after: float) -> list[tuple[int, str, str]]:
        """Resolve firing alerts that Alertmanager has not had for `stale_after` seconds.

        `active` is Alertmanager's alerts as (fingerprint, canonical startsAt). A stored firing
        alert is present when Alertmanager has it with the same startsAt, or has its fingerprint
        and this store knows no later startsAt for it: after a Prometheus restart the same alert
        comes back with a new startsAt, which Alertmanager need not notify again (its
        notification log survives), so the condition still fires under the old finding. Only a
        newer stored row of the fingerprint supersedes it. A stored firing alert not present
        gets an absence record the first time; one still missing `stale_after` seconds after
        that record is resolved with a reason. One seen again loses its record. Returns
        (alert id, alertname, reason) of each alert resolved.
        """
        now = _now()
        resolved: list[tuple[int, str, str]] = []
        active_fingerprints = {fingerprint for fingerprint, _ in active}
        with self._tx() as c:
            rows = c.execute(
                "SELECT a.id, a.fingerprint, a.starts_at_key, a.alertname, b.absent_since,"
                " (SELECT MAX(n.starts_at_key) FROM alerts n WHERE n.fingerprint=a.fingerprint) AS latest"
                " FROM alerts a LEFT JOIN alert_absence b ON b.alert_id=a.id WHERE a.status='firing'"
            ).fetchall()
            for row in rows:
                alert_id = int(row["id"])
                exact = (row["fingerprint"], row["starts_at_key"]) in active
                latest_of_active = row["fingerprint"] in active_fingerprints and row["starts_at_key"] == row["latest"]
                if exact or latest_of_active:
                    if row["absent_since"] is not None:
                        c.execute("DELETE FROM alert_absence WHERE alert_id=?", (alert_id,))
                    continue
                if row["absent_since"] is None:
                    # ON CONFLICT: another replica's reconciliation may record it at the same time.
                    c.execute(
                        "INSERT INTO alert_absence (alert_id, absent_since) VALUES (?,?) ON CONFLICT DO NOTHING",
                        (alert_id, now),
                    )
                    continue
                since = float(row["absent_since"])
                if now - since < stale_after:
                    continue
                reason = f"no longer active in Alertmanager since {iso(since)}"
                self._resolve(c, alert_id, iso(since), now, reason=reason)
                resolved.append((alert_id, str(row["alertname"]), reason))
        return resolved

    def _enqueue_sinks(
        self,
        c: Database,
        finding_seq: int,
        event: str,
        now: float,
        *,
        incident_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """One outbox row per sink. `event` is a SinkEvent, made unique with a suffix after ':'
        where one finding may have several (each acknowledgement: `acked:<silence id>`)."""
        c.executemany(
            "INSERT INTO outbox (finding_seq, sink, event, state, next_attempt_at, created_at,"
            " incident_id, detail) VALUES (?, ?, ?, 'pending', ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            [
                (finding_seq, sink, event, now, now, incident_id, json.dumps(detail) if detail is not None else None)
                for sink in self.sinks
            ],
        )

    # -- the investigation queue ------------------------------------------------------------

    def claim(self, lease_seconds: float) -> Job | None:
        """Lease the oldest queued alert, or None when the queue is empty."""
        now = _now()
        with self._tx() as c:
            # Two indexed lookups: an OR across both states would scan every finished job.
            # One alert of an incident at a time (agent_webhook.incidents): skip alerts whose
            # incident has a live lease, so the next one of its kind finds the first one's finding.
            # (The busy incidents are computed once, from the few leased jobs: not per candidate.)
            # Replicas on PostgreSQL: SKIP LOCKED passes over a job another replica is claiming.
            pick = c.execute(
                "SELECT j.alert_id, a.incident_id FROM jobs j JOIN alerts a ON a.id=j.alert_id"  # noqa: S608
                " WHERE j.state='queued'"
                " AND (a.incident_id IS NULL OR a.incident_id NOT IN (SELECT b.incident_id FROM jobs l"
                "   JOIN alerts b ON b.id=l.alert_id WHERE l.state='leased' AND l.lease_until>=?"
                "   AND b.incident_id IS NOT NULL))"
                " ORDER BY j.alert_id LIMIT 1" + c.skip_locked("j"),
                (now,),
            ).fetchone()
            if pick is not None and pick[1] is not None and not self._incident_free(c, str(pick[1]), now):
                return None  # another replica leased one of its alerts since the pick: the next poll
            if pick is None:
                # An expired lease: its process died (on PostgreSQL, possibly another replica).
                pick = c.execute(
                    "SELECT alert_id FROM jobs WHERE state='leased' AND lease_until < ? LIMIT 1"  # noqa: S608
                    + c.skip_locked(),
                    (now,),
                ).fetchone()
            if pick is None:
                return None
            row = c.execute(
                "UPDATE jobs SET state='leased', attempts=attempts+1, lease_until=?, started_at=?"
                " WHERE alert_id=? RETURNING alert_id, attempts, enqueued_at",
                (now + lease_seconds, now, pick[0]),
            ).fetchone()
            alert = self._load_alert(c, int(row["alert_id"]))
            incident = c.execute("SELECT incident_id FROM alerts WHERE id=?", (int(row["alert_id"]),)).fetchone()[0]
        return Job(
            alert_id=int(row["alert_id"]),
            attempts=int(row["attempts"]),
            alert=alert,
            enqueued_at=row[2],
            incident_id=incident,
        )

    @staticmethod
    def _incident_free(c: Database, incident_id: str, now: float) -> bool:
        """No live lease in the incident, checked under its lock: a replica that picked a job of
        it in the same instant as another sees that one's lease here and backs off."""
        c.lock("claim:" + incident_id)
        busy = c.execute(
            "SELECT 1 FROM jobs l JOIN alerts b ON b.id=l.alert_id WHERE b.incident_id=? AND l.state='leased'"
            " AND l.lease_until>=? LIMIT 1",
            (incident_id, now),
        ).fetchone()
        return busy is None

    def incident_lead(self, job: Job) -> dict[str, Any] | None:
        """The finding already investigated for this alert's kind (alertname) in its incident, if any."""
        if job.incident_id is None:
            return None
        row = incidents.lead_for(self.conn, job.incident_id, job.alert.alertname)
        return None if row is None else finding_json(row)

    @staticmethod
    def _load_alert(c: Database, alert_id: int) -> Alert:
        a = c.execute("SELECT * FROM alerts WHERE id=?", (alert_id,)).fetchone()
        return Alert(
            fingerprint=a["fingerprint"],
            status="resolved" if a["status"] == "resolved" else "firing",
            labels=json.loads(a["labels"]),
            annotations=json.loads(a["annotations"]),
            starts_at=a["starts_at"],
            ends_at=a["ends_at"],
            generator_url=a["generator_url"],
            receiver=a["receiver"],
            group_key=a["group_key"],
            external_url=a["external_url"],
        )

    def renew(self, job: Job, lease_seconds: float) -> None:
        """Extend a live job's lease (its worker is still at it)."""
        with self._tx() as c:
            c.execute(
                "UPDATE jobs SET lease_until=? WHERE alert_id=? AND state='leased'",
                (_now() + lease_seconds, job.alert_id),
            )

    def release(self, job: Job) -> None:
        """Put a leased job back, uncounted: the service is stopping, not crashing."""
        with self._tx() as c:
            c.execute(
                "UPDATE jobs SET state='queued', lease_until=NULL,"
                " attempts=CASE WHEN attempts>0 THEN attempts-1 ELSE 0 END WHERE alert_id=? AND state='leased'",
                (job.alert_id,),
            )

    def complete(
        self,
        job: Job,
        diagnosis: Diagnosis,
        *,
        started_at: float,
        finished_at: float,
        derived_from: str | None = None,
    ) -> tuple[str, bool] | None:
        """Store the finding, enqueue its sink posts and close the job, atomically.

        Returns (finding id, created); created is False when a finding already existed (a
        re-run after a crash that had in fact committed), None if the job is gone.
        """
        now = _now()
        with self._tx() as c:
            alert = c.execute("SELECT * FROM alerts WHERE id=?", (job.alert_id,)).fetchone()
            if alert is None:
                return None
            status = alert["status"]
            incident = alert["incident_id"]
            first = incident is None or incidents.first_event(c, str(incident))
            timings = {
                "queued_seconds": max(0.0, started_at - job.enqueued_at),
                "investigation_seconds": max(0.0, finished_at - started_at),
                **{str(k): float(v) for k, v in diagnosis.timings.items()},
            }
            finding_id = "f-" + secrets.token_hex(8)
            evidence = [redact_value("evidence", asdict(e)) for e in diagnosis.evidence]
            # ON CONFLICT: a replica whose lease ran out may finish the same alert at the same
            # time; the unique alert_id keeps the first finding and this one is dropped.
            inserted = c.execute(
                "INSERT INTO findings (id, alert_id, fingerprint, starts_at, alertname, node, gpu, status, severity,"
                " summary, likely_cause, diagnosis, evidence, actions, llm_used, llm_model, triage_rule, degraded,"
                " timings, labels, created_at, updated_at, resolved_at, action, resolved_reason, incident_id,"
                " derived_from, gpu_uuid, gpu_serial)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
                " ON CONFLICT (alert_id) DO NOTHING RETURNING seq",
                (
                    finding_id,
                    job.alert_id,
                    alert["fingerprint"],
                    alert["starts_at"],
                    alert["alertname"],
                    alert["node"],
                    alert["gpu"],
                    status,
                    diagnosis.severity,
                    redact(diagnosis.summary).splitlines()[0][:500] if diagnosis.summary.strip() else "",
                    redact(diagnosis.likely_cause),
                    redact(diagnosis.diagnosis_markdown),
                    json.dumps(evidence, default=str),
                    json.dumps([redact(a) for a in diagnosis.recommended_actions]),
                    int(diagnosis.llm_used),
                    diagnosis.llm_model,
                    diagnosis.triage_rule,
                    json.dumps([redact(d) for d in diagnosis.degraded]),
                    json.dumps(timings),
                    json.dumps(redact_value("labels", json.loads(alert["labels"]))),
                    now,
                    now,
                    now if status == "resolved" else None,
                    json.dumps(redact_value("action", diagnosis.action)) if diagnosis.action is not None else None,
                    alert["resolved_reason"],
                    incident,
                    derived_from,
                    diagnosis.gpu_uuid,
                    diagnosis.gpu_serial,
                ),
            ).fetchone()
            if inserted is None:
                c.execute("UPDATE jobs SET state='done', finished_at=? WHERE alert_id=?", (now, job.alert_id))
                other = c.execute("SELECT id FROM findings WHERE alert_id=?", (job.alert_id,)).fetchone()
                return str(other["id"]), False
            seq = int(inserted[0])
            self._enqueue_sinks(c, seq, "new" if first else "joined", now, incident_id=incident)
            c.execute("UPDATE jobs SET state='done', finished_at=? WHERE alert_id=?", (now, job.alert_id))
        return finding_id, True

    # -- scale actions ----------------------------------------------------------------------

    def action_claim(self, fingerprint: str, starts_at: str, alertname: str, action: str) -> dict[str, Any] | None:
        """Reserve the one decision an alert (fingerprint + startsAt) may lead to.

        Returns None when this call reserved it (the caller decides and then calls
        :meth:`action_record`), or the earlier decision's row when one exists: a re-run after a
        crash, or a re-delivery, must never act twice. A row still `pending` is one whose
        process died mid-action; it is reported, not retried. A row refused for the cooldown
        (nothing was done) is deferred, not final: it is reserved again.
        """
        key = canonical_time(starts_at, "startsAt")
        with self._tx(durable=True) as c:
            # The unique (fingerprint, starts_at_key) decides between replicas as well.
            reserved = c.execute(
                "INSERT INTO action_decisions (fingerprint, starts_at_key, alertname, action, outcome, decided_at)"
                " VALUES (?,?,?,?, 'pending', ?) ON CONFLICT (fingerprint, starts_at_key) DO NOTHING RETURNING id",
                (fingerprint, key, alertname, action, _now()),
            ).fetchone()
            if reserved is not None:
                return None
            # A cooldown refusal did nothing: it is reserved again (one replica wins the UPDATE).
            retaken = c.execute(
                "UPDATE action_decisions SET outcome='pending', reason=NULL, decided_at=?, finished_at=NULL"
                " WHERE fingerprint=? AND starts_at_key=? AND outcome=? AND reason=? RETURNING id",
                (_now(), fingerprint, key, *DEFERRED),
            ).fetchone()
            if retaken is not None:
                return None
            row = c.execute(
                "SELECT action, outcome, reason, decision, decided_at FROM action_decisions"
                " WHERE fingerprint=? AND starts_at_key=?",
                (fingerprint, key),
            ).fetchone()
        return {
            "action": row["action"],
            "outcome": row["outcome"],
            "reason": row["reason"],
            "decision": json.loads(row["decision"]) if row["decision"] else None,
            "decided_at": float(row["decided_at"]),
        }

    def action_record(self, fingerprint: str, starts_at: str, outcome: str, reason: str, decision: Any) -> None:
        """Store how a reserved decision ended (taken, dry_run, refused, failed)."""
        key = canonical_time(starts_at, "startsAt")
        with self._tx(durable=True) as c:
            c.execute(
                "UPDATE action_decisions SET outcome=?, reason=?, decision=?, finished_at=?"
                " WHERE fingerprint=? AND starts_at_key=?",
                (outcome, reason, json.dumps(decision, default=str), _now(), fingerprint, key),
            )

    def deferred_actions(self, limit: int = 20) -> list[Alert]:
        """Alerts still firing whose decision was deferred by the cooldown, oldest first.

        Only alerts whose finding is stored: the finding is where the new decision goes.
        """
        rows = self.conn.execute(
            "SELECT a.id FROM action_decisions d"
            " JOIN alerts a ON a.fingerprint=d.fingerprint AND a.starts_at_key=d.starts_at_key"
            " JOIN findings f ON f.alert_id=a.id"
            " WHERE d.outcome=? AND d.reason=? AND a.status='firing'"
            " ORDER BY d.decided_at, d.id LIMIT ?",
            (*DEFERRED, limit),
        ).fetchall()
        return [self._load_alert(self.conn, int(row["id"])) for row in rows]

    def record_deferred_action(self, alert: Alert, decision: dict[str, Any]) -> str | None:
        """Put a deferred alert's new decision in its finding; when it did something (anything
        but another deferral), post an `acted` event to the finding's thread. Returns the
        finding's id."""
        now = _now()
        key = canonical_time(alert.starts_at, "startsAt")
        with self._tx(durable=True) as c:
            row = c.execute(
                "SELECT f.seq, f.id FROM findings f JOIN alerts a ON a.id=f.alert_id"
                " WHERE a.fingerprint=? AND a.starts_at_key=?",
                (alert.fingerprint, key),
            ).fetchone()
            if row is None:
                return None
            c.execute(
                "UPDATE findings SET action=?, updated_at=? WHERE seq=?",
                (json.dumps(redact_value("action", decision)), now, row["seq"]),
            )
            if (decision.get("outcome"), decision.get("reason")) != DEFERRED:
                self._enqueue_event(c, int(row["seq"]), f"acted:{secrets.token_hex(4)}", now, {"action": decision})
        return str(row["id"])

    def last_action_at(self, outcomes: Sequence[str], exclude: tuple[str, str] | None = None) -> float | None:
        """When the latest decision with one of these outcomes was taken (the cooldown's start).

        `exclude` (fingerprint, startsAt) leaves out the decision being made now.
        """
        marks = ",".join("?" * len(outcomes))
        # Only "?" placeholders are interpolated; the values are bound.
        sql = f"SELECT MAX(decided_at) FROM action_decisions WHERE outcome IN ({marks})"  # noqa: S608
        args: list[Any] = list(outcomes)
        if exclude is not None:
            sql += " AND NOT (fingerprint=? AND starts_at_key=?)"
            args += [exclude[0], canonical_time(exclude[1], "startsAt")]
        row = self.conn.execute(sql, args).fetchone()
        return None if row[0] is None else float(row[0])

    # -- the sink outbox --------------------------------------------------------------------

    def due_deliveries(self, sink: str, limit: int = 20) -> list[OutboxItem]:
        """Pending posts for one sink whose time has come, each only after the earlier events of
        its finding and of its incident (a thread reply needs its parent's reference)."""
        now = _now()
        sql = (
            "SELECT o.id, o.event, o.attempts, o.finding_seq, o.incident_id, o.detail,"  # noqa: S608
            " COALESCE(ir.ref, r.ref) AS ref FROM outbox o"
            " LEFT JOIN sink_refs r ON r.finding_seq=o.finding_seq AND r.sink=o.sink"
            " LEFT JOIN incident_refs ir ON ir.incident_id=o.incident_id AND ir.sink=o.sink"
            " WHERE o.sink=? AND o.state='pending' AND o.next_attempt_at<=?"
            " AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.sink=o.sink AND p.state='pending' AND p.id<o.id"
            "   AND (p.finding_seq=o.finding_seq OR p.incident_id=o.incident_id))"
            " ORDER BY o.next_attempt_at, o.id LIMIT ?" + self.conn.skip_locked("o")
        )
        if not self.conn.shared:
            # The only process on this database: nobody to take them from, a plain read.
            rows = self.conn.execute(sql, (sink, now, limit)).fetchall()
        else:
            with self._tx() as c:
                rows = c.execute(sql, (sink, now, limit)).fetchall()
                # Taken: due again only if this replica dies before it records the outcome
                # (delivered, failed, dead-lettered), so another replica does not post them too.
                c.executemany(
                    "UPDATE outbox SET next_attempt_at=? WHERE id=?",
                    [(now + DELIVERY_LEASE_SECONDS, int(row["id"])) for row in rows],
                )
        items = []
        for row in rows:
            finding = self._finding_by_seq(int(row["finding_seq"]))
            if finding is None:
                continue
            kind = str(row["event"]).split(":", 1)[0]
            event: SinkEvent = next((e for e in _EVENTS if e == kind), "new")
            incident_id = row["incident_id"]
            if incident_id is not None:
                finding["incident"] = incidents.snapshot(self.conn, str(incident_id))
            if row["detail"]:
                finding["event_detail"] = json.loads(row["detail"])
            items.append(
                OutboxItem(
                    id=int(row["id"]),
                    sink=sink,
                    event=event,
                    attempts=int(row["attempts"]),
                    finding=finding,
                    ref=row["ref"],
                    incident_id=incident_id,
                )
            )
        return items

    def next_delivery_at(self, sink: str) -> float | None:
        row = self.conn.execute(
            "SELECT MIN(next_attempt_at) FROM outbox WHERE sink=? AND state='pending'", (sink,)
        ).fetchone()
        return None if row[0] is None else float(row[0])

    def delivered(self, item: OutboxItem, ref: str | None) -> None:
        with self._tx() as c:
            c.execute(
                "UPDATE outbox SET state='done', attempts=attempts+1, delivered_at=?, last_error=NULL WHERE id=?",
                (_now(), item.id),
            )
            if ref and item.incident_id is not None:
                c.execute(
                    "INSERT INTO incident_refs (incident_id, sink, ref) VALUES (?,?,?)"
                    " ON CONFLICT (incident_id, sink) DO UPDATE SET ref=excluded.ref",
                    (item.incident_id, item.sink, ref),
                )
            elif ref:
                seq = c.execute("SELECT finding_seq FROM outbox WHERE id=?", (item.id,)).fetchone()[0]
                c.execute(
                    "INSERT INTO sink_refs (finding_seq, sink, ref) VALUES (?,?,?)"
                    " ON CONFLICT (finding_seq, sink) DO UPDATE SET ref=excluded.ref",
                    (seq, item.sink, ref),
                )

    def release_deliveries(self, items: Sequence[OutboxItem]) -> None:
        """Hand back taken posts that were not attempted (their batch stopped at a failure)."""
        if not self.conn.shared:
            return  # nothing was taken (due_deliveries): they are due as they were
        with self._tx() as c:
            c.executemany(
                "UPDATE outbox SET next_attempt_at=? WHERE id=? AND state='pending'", [(_now(), i.id) for i in items]
            )

    def delivery_failed(self, item: OutboxItem, error: str, retry_in: float) -> None:
        with self._tx() as c:
            c.execute(
                "UPDATE outbox SET attempts=attempts+1, next_attempt_at=?, last_error=? WHERE id=?",
                (_now() + retry_in, redact(error)[:1000], item.id),
            )

    def dead_letter(self, item: OutboxItem, reason: str) -> None:
        """Give up on an event the sink refused for good: done, never delivered (delivered_at stays
        NULL), the reason kept in last_error. The finding's later events are no longer held up."""
        with self._tx() as c:
            c.execute(
                "UPDATE outbox SET state='done', attempts=attempts+1, last_error=? WHERE id=?",
                ("dead-lettered: " + redact(reason)[:1000], item.id),
            )

    # -- reading ----------------------------------------------------------------------------

    def _finding_by_seq(self, seq: int) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM findings WHERE seq=?", (seq,)).fetchone()
        return None if row is None else finding_json(row)

    def finding(self, finding_id: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM findings WHERE id=?", (finding_id,)).fetchone()
        return None if row is None else finding_json(row)

    def findings(
        self,
        *,
        alertname: str | None = None,
        node: str | None = None,
        status: str | None = None,
        since: float | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first; returns (page, cursor for the next page or None)."""
        if not 1 <= limit <= MAX_PAGE:
            raise QueryError(f"limit: must be between 1 and {MAX_PAGE}")
        where: list[str] = []
        args: list[Any] = []
        for column, value in (("alertname", alertname), ("node", node), ("status", status)):
            if value is not None:
                where.append(f"{column}=?")
                args.append(value)
        if since is not None:
            where.append("updated_at>=?")
            args.append(since)
        rows, next_cursor = self._page("SELECT * FROM findings", "seq", where, args, cursor=cursor, limit=limit)
        return [finding_json(r) for r in rows], next_cursor

    def _page(
        self, select: str, seq: str, where: list[str], args: list[Any], *, cursor: str | None, limit: int
    ) -> tuple[list[Any], str | None]:
        """One page of `select` under `where`, newest `seq` first, and the cursor of the next."""
        if cursor:
            where = [*where, f"{seq}<?"]
            args = [*args, _decode_cursor(cursor)]
        sql = select + (" WHERE " + " AND ".join(where) if where else "") + f" ORDER BY {seq} DESC LIMIT ?"
        rows = self.conn.execute(sql, [*args, limit + 1]).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, _encode_cursor(int(rows[-1]["seq"])) if more and rows else None

    # -- incidents and acknowledgements ------------------------------------------------------

    def incident(self, incident_id: str) -> dict[str, Any] | None:
        return incidents.snapshot(self.conn, incident_id)

    def incidents(
        self,
        *,
        alertname: str | None = None,
        node: str | None = None,
        status: str | None = None,
        since: float | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Newest first, each with its alerts; the same filters and paging as :meth:`findings`
        (`alertname`: incidents with an alert of that name)."""
        if not 1 <= limit <= MAX_PAGE:
            raise QueryError(f"limit: must be between 1 and {MAX_PAGE}")
        where: list[str] = []
        args: list[Any] = []
        if alertname is not None:
            where.append("EXISTS (SELECT 1 FROM alerts a WHERE a.incident_id=i.id AND a.alertname=?)")
            args.append(alertname)
        for column, value in (("node", node), ("status", status)):
            if value is not None:
                where.append(f"i.{column}=?")
                args.append(value)
        if since is not None:
            where.append("i.updated_at>=?")
            args.append(since)
        rows, next_cursor = self._page("SELECT i.* FROM incidents i", "i.seq", where, args, cursor=cursor, limit=limit)
        return [incidents.incident_json(self.conn, r) for r in rows], next_cursor

    def ack_targets(self, target: str) -> list[dict[str, Any]] | None:
        """The findings an ack of `target` (a finding id or an incident id) concerns, with the
        alert's labels as Alertmanager has them (unredacted: a silence must match them exactly);
        None when there is no such finding or incident."""
        column = "f.incident_id" if target.startswith("i-") else "f.id"
        rows = self.conn.execute(
            "SELECT f.seq, f.id, f.status, f.ack, f.incident_id, a.labels FROM findings f"  # noqa: S608
            f" JOIN alerts a ON a.id=f.alert_id WHERE {column}=? ORDER BY f.seq",
            (target,),
        ).fetchall()
        if not rows:
            if target.startswith("i-") and self.incident(target) is not None:
                return []  # an incident whose alerts are still being investigated
            return None
        return [
            {
                "seq": int(r["seq"]),
                "id": r["id"],
                "status": r["status"],
                "ack": json.loads(r["ack"]) if r["ack"] else None,
                "incident_id": r["incident_id"],
                "labels": json.loads(r["labels"]),
            }
            for r in rows
        ]

    def record_ack(self, acks: Sequence[tuple[int, dict[str, Any]]], detail: dict[str, Any]) -> None:
        """Store each finding's acknowledgement (its silence) and post one `acked` event to its thread."""
        now = _now()
        with self._tx(durable=True) as c:
            for seq, ack in acks:
                c.execute("UPDATE findings SET ack=?, updated_at=? WHERE seq=?", (json.dumps(ack), now, seq))
            self._enqueue_event(c, acks[0][0], f"acked:{acks[0][1]['silence_id']}", now, detail)

    def record_unack(self, seqs: Sequence[int], detail: dict[str, Any]) -> None:
        """Clear the acknowledgements (their silences are expired) and post one `unacked` event."""
        now = _now()
        with self._tx(durable=True) as c:
            for seq in seqs:
                c.execute("UPDATE findings SET ack=NULL, updated_at=? WHERE seq=?", (now, seq))
            self._enqueue_event(c, seqs[0], f"unacked:{secrets.token_hex(4)}", now, detail)

    def _enqueue_event(self, c: Database, seq: int, event: str, now: float, detail: dict[str, Any]) -> None:
        incident = c.execute("SELECT incident_id FROM findings WHERE seq=?", (seq,)).fetchone()[0]
        self._enqueue_sinks(c, seq, event, now, incident_id=incident, detail=redact_value("detail", detail))

    def history(
        self, *, node: str | None, uuid: str | None, serial: str | None, since: float, limit: int = 50
    ) -> list[dict[str, Any]]:
        """Findings created since `since` of the node, or of the GPU (UUID or serial) on any node;
        newest first. The evidence of the investigation that reads them (`gpu_history`)."""
        if not (node or uuid or serial):
            return []
        # `column = NULL` is never true: an unknown UUID or serial matches nothing.
        rows = self.conn.execute(
            "SELECT * FROM findings WHERE created_at>=? AND (node=? OR gpu_uuid=? OR gpu_serial=?)"
            " ORDER BY seq DESC LIMIT ?",
            [since, node or None, uuid or None, serial or None, max(1, min(limit, MAX_PAGE))],
        ).fetchall()
        return [finding_json(r) for r in rows]

    def stats(self) -> Stats:
        stats = Stats()
        for row in self.conn.execute("SELECT state, COUNT(*) FROM jobs WHERE state!='done' GROUP BY state"):
            if row[0] == "queued":
                stats.queued = int(row[1])
            elif row[0] == "leased":
                stats.leased = int(row[1])
        stats.findings = int(self.conn.execute("SELECT COUNT(*) FROM findings").fetchone()[0])
        stats.outbox_pending = {sink: 0 for sink in self.sinks}
        for row in self.conn.execute("SELECT sink, COUNT(*) FROM outbox WHERE state='pending' GROUP BY sink"):
            stats.outbox_pending[str(row[0])] = int(row[1])
        return stats

    def check(self) -> None:
        """Raise StoreError if the database cannot be read (for /healthz)."""
        try:
            self.conn.execute("SELECT 1 FROM jobs LIMIT 1").fetchall()
        except DB_ERRORS as exc:
            raise StoreError(str(exc)) from None


def _migrate(db: Database) -> None:
    """Create the schema, and add what databases created by older versions lack (both engines)."""
    db.executescript(_SCHEMA)
    if "action" not in db.columns("findings"):  # databases created before actions existed
        db.execute("ALTER TABLE findings ADD COLUMN action TEXT")
    # Databases created before reconciliation existed.
    for table in ("findings", "alerts"):
        if "resolved_reason" not in db.columns(table):
            db.execute(f"ALTER TABLE {table} ADD COLUMN resolved_reason TEXT")
    incidents.migrate(db)  # databases created before incidents existed
    # Databases created before the GPU history: the GPU's identity on each finding.
    for column in ("gpu_uuid", "gpu_serial"):
        if column not in db.columns("findings"):
            db.execute(f"ALTER TABLE findings ADD COLUMN {column} TEXT")
    db.execute("CREATE INDEX IF NOT EXISTS findings_by_gpu_uuid ON findings (gpu_uuid, seq)")
    db.execute("CREATE INDEX IF NOT EXISTS findings_by_gpu_serial ON findings (gpu_serial, seq)")


def finding_json(row: Any) -> dict[str, Any]:
    """The API's (and the sinks') view of a finding."""
    return {
        "id": row["id"],
        "fingerprints": [row["fingerprint"]],
        "starts_at": row["starts_at"],
        "alertname": row["alertname"],
        "node": row["node"],
        "gpu": row["gpu"],
        "status": row["status"],
        "severity": row["severity"],
        "summary": row["summary"],
        "likely_cause": row["likely_cause"],
        "diagnosis": row["diagnosis"],
        "evidence": json.loads(row["evidence"]),
        "recommended_actions": json.loads(row["actions"]),
        "llm": {"used": bool(row["llm_used"]), "model": row["llm_model"]},
        "triage_rule": row["triage_rule"],
        "degraded": json.loads(row["degraded"]),
        "timings": json.loads(row["timings"]),
        "labels": json.loads(row["labels"]),
        "action": json.loads(row["action"]) if row["action"] else None,
        "created_at": iso(row["created_at"]),
        "updated_at": iso(row["updated_at"]),
        "resolved_at": iso(row["resolved_at"]),
        # Why it was resolved when not by Alertmanager's notification (reconciliation); else null.
        "resolved_reason": row["resolved_reason"],
        # The GPU by UUID and serial, when the investigation knew them (its history's key).
        "gpu_uuid": row["gpu_uuid"],
        "gpu_serial": row["gpu_serial"],
        **incident_fields(row),
    }


def incident_fields(row: Any) -> dict[str, Any]:
    """A finding's incident and acknowledgement (agent_webhook.incidents, agent_webhook.ack)."""
    ack = json.loads(row["ack"]) if row["ack"] else {}
    return {
        "incident_id": row["incident_id"],
        # The finding whose investigation this one reuses (same kind of alert in the same incident).
        "derived_from": row["derived_from"],
        "acknowledged_by": ack.get("by"),
        "acknowledged_at": ack.get("at"),
        "silence_id": ack.get("silence_id"),
        "ack_comment": ack.get("comment"),
        "ack_until": ack.get("until"),
    }
