"""The sink outbox's delivery loops: one per sink, so a dead Slack does not hold up Grafana.

Each loop posts the due events of its sink in order and records the outcome. A failed event is
retried after `initial * 2**(attempts-1)` seconds, capped at `max`, with jitter, for as long as it
takes: the finding itself is already stored, and the outbox row stays until it is delivered.
The sink as a whole backs off the same way on consecutive failures, so a dead endpoint with a
hundred pending events gets one probe per interval, not a hundred. A permanent refusal (a 4xx
other than 408/425/429, a permanent Slack error) is not retried: the event is dead-lettered with
its reason, counted in agent_webhook_sink_dead_letters_total{sink,reason} and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time

from agent_webhook.metrics import AgentMetrics
from agent_webhook.sinks import Sink, SinkError
from agent_webhook.store import OutboxItem, Store

log = logging.getLogger(__name__)
_IDLE_POLL_SECONDS = 1.0


def backoff(attempts: int, initial: float, maximum: float) -> float:
    delay = min(maximum, initial * 2 ** max(0, attempts - 1))
    return float(delay * random.uniform(0.8, 1.0))  # noqa: S311 - jitter, not cryptography


class Delivery:
    def __init__(
        self, store: Store, sinks: list[Sink], metrics: AgentMetrics, *, initial: float, maximum: float
    ) -> None:
        self.store = store
        self.sinks = sinks
        self.metrics = metrics
        self.initial = initial
        self.maximum = maximum
        self.wake = asyncio.Event()
        self._wakes = {sink.name: asyncio.Event() for sink in sinks}
        self._tasks: list[asyncio.Task[None]] = []
        self._forwarder: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(s), name=f"sink-{s.name}") for s in self.sinks]
        self._forwarder = asyncio.create_task(self._forward())

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._forwarder] if self._forwarder else [])]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _forward(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            for event in self._wakes.values():
                event.set()

    async def _run(self, sink: Sink) -> None:
        wake = self._wakes[sink.name]
        consecutive_failures = 0
        while True:
            try:
                items = await self.store.run(self.store.due_deliveries, sink.name)
            except Exception as exc:
                log.error("cannot read the sink outbox", extra={"sink": sink.name, "error": str(exc)})
                items = []
            failed = False
            for n, item in enumerate(items):
                try:
                    ref = await sink.post(item.event, item.finding, item.ref)
                except SinkError as exc:
                    if exc.permanent:
                        await self._dead_letter(sink, item, exc)
                        continue  # the sink answered: the rest of the batch can go
                    error = str(exc)
                except Exception as exc:  # a sink bug must not stop deliveries
                    error = f"{type(exc).__name__}: {exc}"
                else:
                    consecutive_failures = 0
                    self.metrics.sink_posts.labels(sink.name).inc()
                    with contextlib.suppress(Exception):
                        await self.store.run(self.store.delivered, item, ref)
                    continue
                await self._failed(sink, item, error)
                consecutive_failures += 1
                failed = True
                # The rest of the batch waits for the sink to answer again; it was taken
                # (Store.due_deliveries) and goes back, due now, not after the delivery lease.
                with contextlib.suppress(Exception):
                    await self.store.run(self.store.release_deliveries, items[n + 1 :])
                break
            if failed:
                await asyncio.sleep(backoff(consecutive_failures, self.initial, self.maximum))
                continue
            if items:
                continue
            wait = _IDLE_POLL_SECONDS
            with contextlib.suppress(Exception):
                due = await self.store.run(self.store.next_delivery_at, sink.name)
                if due is not None:
                    wait = max(0.0, min(wait, due - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), wait)
            wake.clear()

    async def _dead_letter(self, sink: Sink, item: OutboxItem, exc: SinkError) -> None:
        reason = exc.reason or "permanent"
        self.metrics.sink_failures.labels(sink.name).inc()
        self.metrics.sink_dead_letters.labels(sink.name, reason).inc()
        log.error(
            "sink refused the event for good, dead-lettered (not retried)",
            extra={
                "sink": sink.name,
                "finding": item.finding.get("id"),
                "event": item.event,
                "attempt": item.attempts + 1,
                "reason": reason,
                "error": str(exc),
            },
        )
        with contextlib.suppress(Exception):
            await self.store.run(self.store.dead_letter, item, str(exc))

    async def _failed(self, sink: Sink, item: OutboxItem, error: str) -> None:
        self.metrics.sink_failures.labels(sink.name).inc()
        delay = backoff(item.attempts + 1, self.initial, self.maximum)
        log.warning(
            "sink delivery failed, will retry",
            extra={
                "sink": sink.name,
                "finding": item.finding.get("id"),
                "event": item.event,
                "attempt": item.attempts + 1,
                "retry_in_seconds": round(delay, 2),
                "error": error,
            },
        )
        with contextlib.suppress(Exception):
            await self.store.run(self.store.delivery_failed, item, error, delay)
