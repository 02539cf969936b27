"""The agent's HTTP service: Alertmanager in (`POST /alerts`), findings out, health and metrics.

`POST /alerts` does as little as possible before answering: authenticate, read at most
`max_body_bytes`, validate, commit to SQLite, answer 202. Investigations run in the worker
pool, sink posts in the delivery loops, both from the database, so a crash between any two
steps loses nothing. A 5xx is answered only when the database cannot store the alerts: then
Alertmanager's retry is exactly what should happen. Bad input is always a 4xx with a reason.

Authentication: `POST /alerts` takes the bearer token (Alertmanager's
`http_config.authorization`). The findings API accepts the same token, or the web config's
basic auth when it has users. `/metrics` and `/healthz` follow the web config, as on the
exporters.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from agent_webhook.ack import AckAPI
from agent_webhook.config import AgentConfig
from agent_webhook.delivery import Delivery
from agent_webhook.investigation.history import HistoryQuery
from agent_webhook.metrics import AgentMetrics
from agent_webhook.model import Investigator
from agent_webhook.payload import PayloadError, parse_payload, parse_time
from agent_webhook.reconcile import Reconciler
from agent_webhook.sinks import Sink, build_sinks
from agent_webhook.store import READ, QueryError, StoreError
from agent_webhook.wiring import make_action_engine, make_store
from agent_webhook.worker import WorkerPool
from gpu_watchdog_core.limits import ConnectionLimits, limits_from_env
from gpu_watchdog_core.server import install_web_config
from gpu_watchdog_core.webconfig import AuthBusy

log = logging.getLogger(__name__)

_JSON_TYPES = re.compile(r"^application/([a-z0-9.+-]+\+)?json$")
_DURATION = re.compile(r"^([0-9]{1,9}(?:\.[0-9]{1,9})?)(s|m|h|d)$")
_LIMIT = re.compile(r"^[0-9]{1,7}$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _error(status: int, reason: str, **headers: str) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers=headers or None)


async def _refusal(check: Awaitable[bool], scheme: str, reason: str) -> web.Response | None:
    """The 401 (or 429 while bcrypt checks queue up) for a failed credential check, else None."""
    try:
        if await check:
            return None
    except AuthBusy as exc:
        return _error(429, f"{exc}; retry", **{"Retry-After": "1"})
    return _error(401, reason, **{"WWW-Authenticate": f'{scheme} realm="gpu-watchdog"'})


def parse_since(value: str, now: float | None = None) -> float:
    """RFC 3339, unix seconds, or a duration back from now (`90s`, `15m`, `2h`, `7d`)."""
    now = time.time() if now is None else now
    match = _DURATION.match(value)
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2)]
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):
            raise QueryError("since: not a finite number")
        return seconds
    try:
        return parse_time(value, "since").timestamp()
    except PayloadError:
        raise QueryError("since: expected RFC 3339, unix seconds or a duration like 15m, 2h, 7d") from None


class Service:
    """The store, the worker pool and the delivery loops behind the HTTP app."""

    def __init__(
        self,
        config: AgentConfig,
        investigator: Investigator,
        *,
        sinks: list[Sink] | None = None,
        body_timeout: float = ConnectionLimits.body_timeout,
    ) -> None:
        self.config = config
        self.body_timeout = body_timeout
        self.investigator = investigator
        self.metrics = AgentMetrics()
        self.store = make_store(config)
        # Earlier findings as evidence (the gpu_history tool), for investigators that read them.
        attach = getattr(investigator, "attach_history", None)
        if callable(attach):
            attach(self._history)
        self._sinks_override = sinks
        # Built here, not in start(): a bad actions setup (no playbook) is a ConfigError at launch.
        self.actions = make_action_engine(config, self.store, self.metrics)
        self.session: aiohttp.ClientSession | None = None
        self.workers: WorkerPool | None = None
        self.delivery: Delivery | None = None
        self.reconciler: Reconciler | None = None
        self.started_at = time.time()

    async def _history(self, query: HistoryQuery) -> list[dict[str, Any]]:
        return await self.store.call(
            READ,
            self.store.history,
            node=query.node,
            uuid=query.uuid,
            serial=query.serial,
            since=query.since,
            limit=query.limit,
        )

    async def start(self) -> None:
        recovered = await self.store.run(self.store.open)
        if recovered:
            log.warning("re-queued investigations interrupted by a previous process", extra={"alerts": recovered})
        self.session = aiohttp.ClientSession()
        sinks = (
            self._sinks_override
            if self._sinks_override is not None
            else build_sinks(self.config.sinks, self.session, self.config.public_url)
        )
        self.store.sinks = [s.name for s in sinks]
        self.metrics.init_sinks(self.store.sinks)
        self.delivery = Delivery(
            self.store,
            sinks,
            self.metrics,
            initial=self.config.sink_retry_initial_seconds,
            maximum=self.config.sink_retry_max_seconds,
        )
        self.workers = WorkerPool(
            self.store,
            self.investigator,
            self.metrics,
            size=self.config.workers,
            timeout_seconds=self.config.investigation_timeout_seconds,
            max_attempts=self.config.max_attempts,
            on_finding=self.delivery.wake,
            actions=self.actions,
        )
        self.workers.start()
        self.delivery.start()
        self.actions.start(on_posted=self.delivery.wake)
        am_url = self.config.alertmanager_url
        if self.config.reconcile_interval_seconds > 0 and am_url:
            self.reconciler = Reconciler(
                self.store,
                self.session,
                self.metrics,
                alertmanager_url=am_url,
                interval_seconds=self.config.reconcile_interval_seconds,
                stale_after_seconds=self.config.reconcile_stale_after_seconds,
                on_resolved=self.delivery.wake,
                auth=self.config.alertmanager_auth,
            )
            self.reconciler.start()
        else:
            log.info(
                "reconciliation with Alertmanager is off",
                extra={"reason": "no alertmanager_url" if not am_url else "reconcile_interval_seconds is 0"},
            )

    async def stop(self) -> None:
        await self.actions.stop()
        if self.reconciler:
            await self.reconciler.stop()
        if self.workers:
            await self.workers.stop()
        if self.delivery:
            await self.delivery.stop()
        if self.session:
            await self.session.close()
        await asyncio.to_thread(self.store.shutdown)

    # -- authentication ---------------------------------------------------------------------

    def _bearer_ok(self, request: web.Request) -> bool:
        token = self.config.token
        if token is None:
            return True
        header = request.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer":
            return False
        # aiohttp hands non-UTF-8 header bytes over surrogate-escaped: compare the raw bytes.
        return hmac.compare_digest(presented.strip().encode("utf-8", "surrogateescape"), token.encode())

    async def _alerts_auth_ok(self, request: web.Request) -> bool:
        """The bearer token when one is configured, else the web config's basic auth, else open."""
        if self.config.token is not None:
            return self._bearer_ok(request)
        return await self.config.web_config.authorize(request.headers.get("Authorization"))

    async def _read_ok(self, request: web.Request) -> bool:
        web_config = self.config.web_config
        header = request.headers.get("Authorization")
        if self.config.token is None and not web_config.auth_required:
            return True
        if self.config.token is not None and header and header.lower().startswith("bearer "):
            return self._bearer_ok(request)
        if web_config.auth_required:
            return await web_config.authorize(header)
        return False

    # -- handlers ---------------------------------------------------------------------------

    async def post_alerts(self, request: web.Request) -> web.Response:
        try:
            response = await self._post_alerts(request)
        except Exception:
            # A bug, not bad input: still answered and counted, so a 5xx rate is visible in metrics.
            log.exception("unexpected error handling a webhook notification")
            response = _error(500, "internal error; see the agent's log")
        self.metrics.notifications.labels(str(response.status)).inc()
        if response.status in (401, 408, 413, 415):
            response.force_close()  # the body was not (fully) read: no keep-alive after this
        return response

    async def _post_alerts(self, request: web.Request) -> web.Response:
        scheme = "Bearer" if self.config.token is not None else "Basic"
        refused = await _refusal(self._alerts_auth_ok(request), scheme, "missing or invalid credentials")
        if refused is not None:
            return refused
        content_type = request.headers.get("Content-Type")
        if content_type is not None:
            mime = content_type.split(";", 1)[0].strip().lower()
            if not _JSON_TYPES.match(mime):
                return _error(415, f"content type must be application/json, got {mime[:60]!r}")
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return _error(413, f"body of {request.content_length} bytes exceeds the limit of {limit} bytes")
        body = bytearray()
        try:
            # A client trickling its body in holds a connection: it gets body_timeout, then a 408.
            async with asyncio.timeout(self.body_timeout):
                async for chunk in request.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > limit:
                        return _error(413, f"body exceeds the limit of {limit} bytes")
        except TimeoutError:
            return _error(408, f"the body did not arrive within {self.body_timeout:g} s")
        except (aiohttp.ClientPayloadError, web.HTTPException, ConnectionError) as exc:
            return _error(400, f"cannot read the body: {type(exc).__name__}")
        try:
            alerts = parse_payload(bytes(body))
        except PayloadError as exc:
            log.info("rejected webhook payload", extra={"reason": str(exc), "remote": request.remote})
            return _error(400, str(exc))
        try:
            result = await self.store.ingest_async(alerts)
        except (StoreError, PayloadError) as exc:
            log.error("cannot store alerts", extra={"error": str(exc)})
            return _error(503, "cannot store alerts right now; retry")
        for alert in alerts:
            self.metrics.received.labels(alert.status).inc()
        self.metrics.deduplicated.inc(result.duplicates)
        if result.new and self.workers:
            self.workers.wake.set()
        if result.resolved and self.delivery:
            self.delivery.wake.set()
        log.debug(
            "alerts stored",
            extra={
                "alerts": len(alerts),
                "new": result.new,
                "duplicates": result.duplicates,
                "resolved": result.resolved,
            },
        )
        return web.json_response(
            {
                "status": "accepted",
                "alerts": len(alerts),
                "new": result.new,
                "duplicates": result.duplicates,
                "resolved": result.resolved,
                "resolved_unseen": result.resolved_unseen,
            },
            status=202,
        )

    async def list_findings(self, request: web.Request) -> web.Response:
        return await self._list(request, "findings")

    async def list_incidents(self, request: web.Request) -> web.Response:
        return await self._list(request, "incidents")

    async def _list(self, request: web.Request, what: str) -> web.Response:
        refused = await _refusal(self._read_ok(request), "Bearer", "unauthorized")
        if refused is not None:
            return refused
        q = request.query
        try:
            status = q.get("status")
            if status is not None and status not in ("firing", "resolved"):
                raise QueryError('status: expected "firing" or "resolved"')
            limit_text = q.get("limit", "100")
            if not _LIMIT.match(limit_text):
                raise QueryError("limit: expected a whole number between 1 and 1000")
            since = parse_since(q["since"]) if q.get("since") else None
            found, cursor = await self.store.call(
                READ,
                self.store.findings if what == "findings" else self.store.incidents,
                alertname=q.get("alertname"),
                node=q.get("node"),
                status=status,
                since=since,
                limit=int(limit_text),
                cursor=q.get("cursor"),
            )
        except QueryError as exc:
            return _error(400, str(exc))
        except StoreError as exc:
            log.error(f"cannot read {what}", extra={"error": str(exc)})
            return _error(503, f"cannot read {what} right now")
        return web.json_response({what: found, "next_cursor": cursor})

    async def get_incident(self, request: web.Request) -> web.Response:
        refused = await _refusal(self._read_ok(request), "Bearer", "unauthorized")
        if refused is not None:
            return refused
        incident_id = request.match_info["id"]
        try:
            incident = await self.store.call(READ, self.store.incident, incident_id)
        except StoreError:
            return _error(503, "cannot read incidents right now")
        if incident is None:
            return _error(404, f"no incident with id {incident_id[:80]!r}")
        return web.json_response(incident)

    async def get_finding(self, request: web.Request) -> web.Response:
        refused = await _refusal(self._read_ok(request), "Bearer", "unauthorized")
        if refused is not None:
            return refused
        finding_id = request.match_info["id"]
        try:
            finding = await self.store.call(READ, self.store.finding, finding_id)
        except StoreError:
            return _error(503, "cannot read findings right now")
        if finding is None:
            return _error(404, f"no finding with id {finding_id[:80]!r}")
        return web.json_response(finding)

    async def healthz(self, request: web.Request) -> web.Response:
        try:
            await self.store.call(READ, self.store.check)
        except StoreError as exc:
            return web.Response(status=503, text=f"database unavailable: {exc}\n")
        if self.workers is None or not self.workers.alive():
            return web.Response(status=503, text="worker pool is not running\n")
        return web.Response(text="ok\n")

    async def metrics_handler(self, request: web.Request) -> web.Response:
        with contextlib.suppress(Exception):  # a stale gauge beats a failed scrape
            self.metrics.update_from(await self.store.call(READ, self.store.stats))
        resp = web.Response(body=generate_latest(self.metrics.registry))
        resp.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return resp

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(
            content_type="text/html",
            text="<html><head><title>gpu-watchdog agent</title></head><body><h1>gpu-watchdog agent</h1>"
            '<p><a href="findings">Findings</a> &middot; <a href="metrics">Metrics</a> &middot; '
            '<a href="healthz">Health</a></p></body></html>\n',
        )


SERVICE_KEY: web.AppKey[Service] = web.AppKey("agent_service", Service)


def build_app(
    config: AgentConfig,
    investigator: Investigator,
    *,
    sinks: list[Sink] | None = None,
    limits: ConnectionLimits | None = None,
) -> web.Application:
    """The aiohttp application; the store, workers and deliveries start and stop with it.

    `limits` default to the GPU_WATCHDOG_HTTP_* environment (LimitsError if invalid).
    """
    limits = limits or limits_from_env()
    service = Service(config, investigator, sinks=sinks, body_timeout=limits.body_timeout)
    # The body limit is enforced while streaming in post_alerts; aiohttp's own read() cap must
    # not be lower (it is not used for /alerts, which never calls read()).
    # Lingering: after a 401/413/415 the unread rest of a body is drained so the client can read
    # the answer, but for 2 s rather than aiohttp's 10 (an oversized upload must not hold a
    # connection, or a shutdown, for long).
    app = web.Application(client_max_size=config.max_body_bytes, handler_args={"lingering_time": 2.0})
    # /alerts and /findings take the bearer token as well, so they check credentials themselves.
    install_web_config(app, config.web_config, own_auth=("/alerts", "/findings", "/incidents"))
    app[SERVICE_KEY] = service

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await service.start()
        yield
        await service.stop()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/alerts", service.post_alerts)
    app.router.add_get("/findings", service.list_findings)
    app.router.add_get("/findings/{id}", service.get_finding)
    app.router.add_get("/incidents", service.list_incidents)
    app.router.add_get("/incidents/{id}", service.get_incident)
    acks = AckAPI(service)
    for kind in ("findings", "incidents"):
        app.router.add_post(f"/{kind}/{{id}}/ack", acks.ack)
        app.router.add_post(f"/{kind}/{{id}}/unack", acks.unack)
    app.router.add_get("/healthz", service.healthz)
    app.router.add_get("/metrics", service.metrics_handler)
    app.router.add_get("/", service.index)
    return app
