"""The bounded pool of investigation workers.

Each worker leases one queued alert at a time from the store, runs the investigator under a
timeout, and stores the finding (which also enqueues its sink posts and closes the job, in one
transaction). Whatever goes wrong inside an investigation, the alert gets a finding: a timeout
or an exception yields a degraded finding built from the alert itself. An alert whose
investigation was interrupted more than `max_attempts` times (a crash every time: a poison
alert) is not investigated again, it gets a degraded finding.

With an action engine (agent_webhook.actions), a worker also asks it, after the investigation,
for the scale decision an alert leads to; the decision is stored in the finding. The engine
never raises and acts at most once per alert even when the job re-runs after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from agent_webhook.degraded import basic_diagnosis
from agent_webhook.incidents import derived_diagnosis
from agent_webhook.metrics import AgentMetrics
from agent_webhook.model import Diagnosis, Investigator
from agent_webhook.store import Job, Store, StoreError

if TYPE_CHECKING:
    from agent_webhook.actions import ActionEngine

log = logging.getLogger(__name__)
_IDLE_POLL_SECONDS = 1.0
_STORE_RETRY_SECONDS = 2.0
# A job's lease, renewed every third of it while its worker lives (an investigation, a playbook,
# storing the finding): only a dead process's job expires, and replicas sharing a PostgreSQL
# store take it over this long after the kill, not after the longest investigation.
LEASE_SECONDS = 30.0


class WorkerPool:
    def __init__(
        self,
        store: Store,
        investigator: Investigator,
        metrics: AgentMetrics,
        *,
        size: int,
        timeout_seconds: float,
        max_attempts: int,
        on_finding: asyncio.Event | None = None,
        actions: ActionEngine | None = None,
    ) -> None:
        self.store = store
        self.investigator = investigator
        self.metrics = metrics
        self.size = size
        self.timeout = timeout_seconds
        self.max_attempts = max_attempts
        self.wake = asyncio.Event()
        self.on_finding = on_finding
        self.actions = actions
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(i), name=f"investigator-{i}") for i in range(self.size)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    def alive(self) -> bool:
        return bool(self._tasks) and not any(t.done() for t in self._tasks)

    async def _run(self, index: int) -> None:
        while True:
            try:
                job = await self.store.run(self.store.claim, LEASE_SECONDS)
            except StoreError as exc:
                log.error("cannot read the investigation queue", extra={"error": str(exc)})
                await asyncio.sleep(_STORE_RETRY_SECONDS)
                continue
            except Exception as exc:  # sqlite3 errors outside our wrappers: keep the worker alive
                log.error("cannot read the investigation queue", extra={"error": f"{type(exc).__name__}: {exc}"})
                await asyncio.sleep(_STORE_RETRY_SECONDS)
                continue
            if job is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.wake.wait(), _IDLE_POLL_SECONDS)
                self.wake.clear()
                continue
            renewer = asyncio.create_task(self._keep_lease(job))
            try:
                await self._handle(job)
            finally:
                renewer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewer

    async def _keep_lease(self, job: Job) -> None:
        while True:
            await asyncio.sleep(LEASE_SECONDS / 3)
            with contextlib.suppress(Exception):  # a store hiccup: the next renewal, or another's takeover
                await self.store.run(self.store.renew, job, LEASE_SECONDS)

    async def _investigate(self, job: Job) -> tuple[Diagnosis, str]:
        alert = job.alert
        if job.attempts > self.max_attempts:
            reason = f"investigation interrupted {job.attempts - 1} times (crashes or kills); not retried"
            return basic_diagnosis(alert, reason), "abandoned"
        try:
            diagnosis = await asyncio.wait_for(self.investigator.investigate(alert), self.timeout)
        except TimeoutError:
            return basic_diagnosis(alert, f"investigation timed out after {self.timeout:g}s"), "timeout"
        except Exception as exc:  # an investigator bug must not lose the alert
            log.exception(
                "investigation failed", extra={"alertname": alert.alertname, "fingerprint": alert.fingerprint}
            )
            return basic_diagnosis(alert, f"investigation failed: {type(exc).__name__}"), "error"
        self.metrics.observe_diagnosis(diagnosis)
        return diagnosis, "degraded" if diagnosis.degraded else "ok"

    async def _handle(self, job: Job) -> None:
        started = time.time()
        t0 = time.monotonic()
        lead = None
        with contextlib.suppress(Exception):  # unreadable: investigate, as without incidents
            lead = await self.store.run(self.store.incident_lead, job)
        self.metrics.in_progress.inc()
        try:
            if lead is not None and job.incident_id is not None:
                # A kind of alert this incident already investigated: reuse that diagnosis.
                diagnosis, outcome = derived_diagnosis(job.alert, lead, job.incident_id), "incident"
            else:
                diagnosis, outcome = await self._investigate(job)
            if self.actions is not None and outcome != "abandoned":
                # After the investigation, outside its timeout: a playbook has its own.
                diagnosis.action = await self.actions.handle(job.alert)
        except asyncio.CancelledError:
            # Shutting down (SIGTERM): hand the alert back so the next start investigates it
            # without counting this toward max_attempts.
            with contextlib.suppress(Exception):
                await asyncio.shield(self.store.run(self.store.release, job))
            raise
        finally:
            self.metrics.in_progress.dec()
        elapsed = time.monotonic() - t0
        if outcome != "incident":
            self.metrics.duration.observe(elapsed)
        self.metrics.investigations.labels(outcome).inc()
        while True:
            try:
                result = await self.store.run(
                    self.store.complete,
                    job,
                    diagnosis,
                    started_at=started,
                    finished_at=time.time(),
                    derived_from=lead["id"] if lead is not None else None,
                )
                break
            except Exception as exc:  # disk full, I/O error: keep the diagnosis and try again
                log.error("cannot store finding, retrying", extra={"error": f"{type(exc).__name__}: {exc}"})
                await asyncio.sleep(_STORE_RETRY_SECONDS)
        if result is None:
            return
        finding_id, created = result
        log.info(
            "finding stored" if created else "finding already stored",
            extra={
                "finding": finding_id,
                "alertname": job.alert.alertname,
                "node": job.alert.node,
                "outcome": outcome,
                "severity": diagnosis.severity,
                "llm_used": diagnosis.llm_used,
                "seconds": round(elapsed, 3),
                "attempt": job.attempts,
            },
        )
        if self.on_finding is not None:
            self.on_finding.set()
