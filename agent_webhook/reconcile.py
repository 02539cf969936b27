"""Reconciliation: resolve stored firing alerts that Alertmanager no longer has.

Why: the agent resolves a finding when Alertmanager sends a resolved notification. Alertmanager
keeps only silences and its notification log across a restart, not alerts, and a restarted
Prometheus starts its alerts again (new startsAt), so after `make down`/`make up` an alert that
was firing never gets its resolved notification and its finding would stay "firing" forever.

Every `reconcile_interval_seconds` the loop asks Alertmanager (GET /api/v2/alerts, silenced,
inhibited and unprocessed alerts included: they are all still active) for its alerts and hands
their (fingerprint, startsAt) to :meth:`Store.reconcile`, which resolves what has been missing
for `reconcile_stale_after_seconds`. An unreachable Alertmanager or an answer that is not a
list of alerts resolves nothing: it is logged and counted, and the loop goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

import aiohttp

from agent_webhook.investigation.config import BasicAuthConfig
from agent_webhook.investigation.prometheus import read_capped
from agent_webhook.metrics import AgentMetrics
from agent_webhook.payload import PayloadError, canonical_time
from agent_webhook.store import Store

log = logging.getLogger(__name__)
# Alertmanager's answer for thousands of alerts stays well below this.
_MAX_BODY_BYTES = 64 * 1024 * 1024
_PARAMS = [("active", "true"), ("silenced", "true"), ("inhibited", "true"), ("unprocessed", "true")]


class AlertmanagerAnswerError(ValueError):
    """Alertmanager's answer is not a list of alerts; nothing may be resolved from it."""


def active_alerts(data: Any) -> set[tuple[str, str]]:
    """(fingerprint, canonical startsAt) of each alert in a GET /api/v2/alerts answer.

    Strict on purpose: one malformed entry makes the whole answer unusable, since resolving
    from a partial view would resolve alerts that are still active.
    """
    if not isinstance(data, list):
        raise AlertmanagerAnswerError(f"expected a JSON list of alerts, got {type(data).__name__}")
    active: set[tuple[str, str]] = set()
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise AlertmanagerAnswerError(f"alert {i}: expected an object")
        fingerprint, starts_at = item.get("fingerprint"), item.get("startsAt")
        if not isinstance(fingerprint, str) or not fingerprint or not isinstance(starts_at, str):
            raise AlertmanagerAnswerError(f"alert {i}: no fingerprint or startsAt")
        try:
            active.add((fingerprint, canonical_time(starts_at, f"alert {i} startsAt")))
        except PayloadError as exc:
            raise AlertmanagerAnswerError(str(exc)) from None
    return active


class Reconciler:
    def __init__(
        self,
        store: Store,
        session: aiohttp.ClientSession,
        metrics: AgentMetrics,
        *,
        alertmanager_url: str,
        interval_seconds: float,
        stale_after_seconds: float,
        on_resolved: asyncio.Event | None = None,
        auth: BasicAuthConfig | None = None,
    ) -> None:
        self.store = store
        self.session = session
        self.metrics = metrics
        self.url = f"{alertmanager_url}/api/v2/alerts"
        self.interval = interval_seconds
        self.stale_after = stale_after_seconds
        self.on_resolved = on_resolved
        # Basic auth when Alertmanager sits behind a web config (alertmanager_basic_auth).
        self.auth = auth
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="reconcile")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _fetch(self) -> set[tuple[str, str]]:
        timeout = aiohttp.ClientTimeout(total=max(5.0, min(30.0, self.interval)))
        headers = self.auth.headers() if self.auth else None
        async with self.session.get(
            self.url, params=_PARAMS, allow_redirects=False, timeout=timeout, headers=headers
        ) as resp:
            body = await read_capped(resp.content, _MAX_BODY_BYTES)
            if resp.status in (401, 403):
                raise AlertmanagerAnswerError(f"HTTP {resp.status}: check alertmanager_basic_auth in agent.yml")
            if resp.status != 200:
                raise AlertmanagerAnswerError(f"HTTP {resp.status}")
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            raise AlertmanagerAnswerError("answer is not JSON") from None
        return active_alerts(data)

    async def run_once(self) -> str:
        """One check; returns its outcome (ok, unreachable, invalid, error), never raises."""
        try:
            active = await self._fetch()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning(
                "reconcile: Alertmanager unreachable, nothing resolved",
                extra={"url": self.url, "error": f"{type(exc).__name__}: {exc}"[:300]},
            )
            return "unreachable"
        except AlertmanagerAnswerError as exc:
            log.warning("reconcile: unusable Alertmanager answer, nothing resolved", extra={"error": str(exc)[:300]})
            return "invalid"
        try:
            resolved = await self.store.run(self.store.reconcile, active, self.stale_after)
        except Exception as exc:  # a database error must not end the loop
            log.error("reconcile: cannot update the store", extra={"error": f"{type(exc).__name__}: {exc}"[:300]})
            return "error"
        for alert_id, alertname, reason in resolved:
            log.info(
                "reconcile: alert resolved", extra={"alert_id": alert_id, "alertname": alertname, "reason": reason}
            )
        if resolved:
            self.metrics.alerts_reconciled.inc(len(resolved))
            if self.on_resolved is not None:
                self.on_resolved.set()
        return "ok"

    async def _run(self) -> None:
        while True:
            try:
                outcome = await self.run_once()
            except Exception as exc:  # belt and braces: the loop must outlive any bug in one check
                log.exception("reconcile: check failed", extra={"error": f"{type(exc).__name__}"})
                outcome = "error"
            self.metrics.reconcile_runs.labels(outcome).inc()
            await asyncio.sleep(self.interval)
