"""Fixtures for the agent webhook: the real service on a free loopback port, fake HTTP peers.

- `ServiceThread` runs the real aiohttp app (``build_app``) in a background thread with its own
  event loop, so tests (sync ones and hypothesis ones included) talk to it over real HTTP.
- `FakeHTTP` is an aiohttp server in a thread that records every request and answers through a
  programmable handler: the stand-in at the wire for Slack, Grafana, webhooks, Prometheus.
- `ScriptedInvestigator` is a deterministic Investigator (optionally slow or failing) that
  counts its calls and its peak concurrency.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent_webhook.config import AgentConfig, build_config
from agent_webhook.model import Alert, Diagnosis, Evidence, Investigator
from agent_webhook.service import SERVICE_KEY, Service, build_app
from tests.harness.processes import LOOPBACK, free_port

REFERENCE = Path("/work/shared/reference/alertmanager-webhook-v4.json")
SAMPLES = Path(__file__).parent / "samples"
TOKEN = "test-token-0123456789abcdef"


def sample(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((SAMPLES / name).read_text())
    return data


def make_alert(
    fingerprint: str,
    *,
    status: str = "firing",
    starts_at: str = "2026-11-22T23:41:07.512Z",
    ends_at: str = "0001-01-01T00:00:00Z",
    alertname: str = "GPUXidError",
    node: str = "gpu-worker-1",
    gpu: str = "3",
    **labels: str,
) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": alertname, "node": node, "gpu": gpu, "severity": "critical", **labels},
        "annotations": {"summary": f"{alertname} on {node} GPU {gpu}"},
        "startsAt": starts_at,
        "endsAt": ends_at,
        "generatorURL": "http://prometheus.example:9090/graph?g0.expr=up&g0.tab=1",
        "fingerprint": fingerprint,
    }


def make_payload(alerts: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    status = "firing" if any(a["status"] == "firing" for a in alerts) else "resolved"
    return {
        "version": "4",
        "groupKey": '{}:{alertname="GPUXidError"}',
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "gpu\\-watchdog",
        "groupLabels": {"alertname": "GPUXidError"},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example:9093",
        "alerts": alerts,
        **extra,
    }


# -- HTTP helpers -------------------------------------------------------------------------


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> Reply:
    """One HTTP request with exactly these headers (http.client adds only Host and Content-Length)."""
    parsed = url.split("://", 1)[1]
    hostport, _, path = parsed.partition("/")
    host, _, port = hostport.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, "/" + path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return Reply(resp.status, resp.read(), {k.lower(): v for k, v in resp.getheaders()})
    finally:
        conn.close()


def post_alerts(url: str, payload: Any, token: str | None = TOKEN, content_type: str = "application/json") -> Reply:
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return request(f"{url}/alerts", "POST", body, headers)


def get_json(url: str, token: str | None = TOKEN) -> Reply:
    return request(url, headers={"Authorization": f"Bearer {token}"} if token else {})


# -- investigators ------------------------------------------------------------------------


@dataclass
class ScriptedInvestigator:
    """Deterministic: severity from the alert, summary naming it; optionally slow or failing."""

    delay: float = 0.0
    fail: bool = False
    calls: list[str] = field(default_factory=list)
    running: int = 0
    peak: int = 0

    async def investigate(self, alert: Alert) -> Diagnosis:
        self.calls.append(alert.fingerprint)
        self.running += 1
        self.peak = max(self.peak, self.running)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.fail:
                raise RuntimeError("scripted failure")
            return Diagnosis(
                severity="critical",
                summary=f"scripted diagnosis of {alert.alertname} on {alert.node}",
                likely_cause="XID 79: the GPU fell off the bus",
                diagnosis_markdown=f"Investigated **{alert.fingerprint}**.\n\n**Recommended actions**:\n"
                "- drain the node\n- reset the GPU",
                recommended_actions=["drain the node", "reset the GPU"],
                evidence=[Evidence(tool="prometheus_query", arguments={"query": "up"}, excerpt="up=1")],
                llm_used=True,
                llm_model="scripted-model",
                llm_calls=2,
                llm_failures=1,
                triage_rule="xid-79",
            )
        finally:
            self.running -= 1

    async def ask(self, question: str) -> Diagnosis:
        return Diagnosis(
            severity="info", summary=question, likely_cause="", diagnosis_markdown="", recommended_actions=[]
        )


# -- the service in a thread --------------------------------------------------------------


class ServiceThread:
    """The real app on a free loopback port, served from a background thread's event loop."""

    def __init__(self, config: AgentConfig, investigator: Investigator, app: web.Application | None = None) -> None:
        self.config = config
        self.investigator = investigator
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.app = app or build_app(config, investigator)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def service(self) -> Service:
        return self.app[SERVICE_KEY]

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        runner = web.AppRunner(self.app)
        await runner.setup()
        ssl_context = self.config.web_config.ssl_context()
        site = web.TCPSite(runner, LOOPBACK, self.port, ssl_context=ssl_context)
        await site.start()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def start(self) -> ServiceThread:
        self._thread.start()
        self._ready.wait(30)
        if self._error:
            raise self._error
        return self

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def call(self, coro: Awaitable[Any]) -> Any:
        """Run a coroutine on the service's loop (to read the store the way the service does)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)  # type: ignore[arg-type]

    def findings(self, **filters: Any) -> list[dict[str, Any]]:
        store = self.service.store
        page, _ = self.call(store.run(store.findings, limit=1000, **filters))
        return list(page)

    def wait_idle(self, timeout: float = 20.0) -> None:
        """Until the queue is empty and nothing is being investigated."""
        store = self.service.store
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stats = self.call(store.run(store.stats))
            if stats.queued == 0 and stats.leased == 0:
                return
            time.sleep(0.05)
        raise TimeoutError("the investigation queue did not drain")


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def agent_config(tmp_path: Path, token_file: Path) -> Callable[..., AgentConfig]:
    """`agent_config(**keys)`: a validated config with a fresh database and the test token."""

    def make(**keys: Any) -> AgentConfig:
        raw: dict[str, Any] = {"db": str(tmp_path / "agent.db"), "token_file": str(token_file), "workers": 2}
        raw.update(keys)
        return build_config(raw, tmp_path)

    return make


@pytest.fixture
def start_service() -> Iterator[Callable[..., ServiceThread]]:
    """`start_service(config, investigator)`: the real app over real HTTP; stopped after the test."""
    started: list[ServiceThread] = []

    def start(config: AgentConfig, investigator: Investigator | None = None) -> ServiceThread:
        svc = ServiceThread(config, investigator or ScriptedInvestigator()).start()
        started.append(svc)
        return svc

    yield start
    for svc in reversed(started):
        svc.stop()


# -- fake HTTP peers ----------------------------------------------------------------------


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def json(self) -> Any:
        return json.loads(self.body)


FakeHandler = Callable[[Recorded], Awaitable[web.StreamResponse] | web.StreamResponse]


class SlowPrometheus:
    """A FakeHTTP handler: a Prometheus with no data that answers each query after `delay`
    seconds until `slow` is cleared, so investigations are in flight when a test kills an agent."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.slow = True

    async def __call__(self, r: Recorded) -> web.Response:
        if self.slow:
            await asyncio.sleep(self.delay)
        return web.json_response({"status": "success", "data": {"resultType": "vector", "result": []}})


class FakeHTTP:
    """A loopback HTTP server that records requests and answers through `handler`."""

    def __init__(self, handler: FakeHandler | None = None) -> None:
        self.handler: FakeHandler = handler or (lambda r: web.json_response({"ok": True}))
        self.requests: list[Recorded] = []
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        rec = Recorded(request.method, request.path_qs, dict(request.headers), await request.read(), time.time())
        self.requests.append(rec)
        result = self.handler(rec)
        if asyncio.iscoroutine(result):
            result = await result
        assert isinstance(result, web.StreamResponse)
        return result

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._handle)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, LOOPBACK, self.port).start()
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()
            await runner.cleanup()

        self.loop.run_until_complete(main())

    def start(self) -> FakeHTTP:
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)

    def wait_for(self, count: int, timeout: float = 15.0, path: str | None = None) -> list[Recorded]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            matching = [r for r in self.requests if path is None or r.path.startswith(path)]
            if len(matching) >= count:
                return matching
            time.sleep(0.05)
        raise TimeoutError(f"expected {count} requests, got {len(self.requests)}: {[r.path for r in self.requests]}")


@pytest.fixture
def fake_http() -> Iterator[Callable[..., FakeHTTP]]:
    servers: list[FakeHTTP] = []

    def make(handler: FakeHandler | None = None) -> FakeHTTP:
        server = FakeHTTP(handler).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        with contextlib.suppress(Exception):
            server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> str | Path:
    """Where a store-level test keeps its database, once per engine: a SQLite file, then a fresh
    database on the session's real PostgreSQL (tests/harness/postgres.py). Reopening the same
    target is a restart."""
    if request.param == "sqlite":
        return tmp_path / "agent.db"
    url: str = request.getfixturevalue("postgres_url")
    return url
