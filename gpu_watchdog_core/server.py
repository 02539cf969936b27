"""HTTP side of an exporter: `/metrics` from the poller's snapshot, `/healthz`, a landing page.

TLS, basic auth and extra headers come from exporter-toolkit's web config
(:mod:`gpu_watchdog_core.webconfig`). The agent webhook reuses :func:`install_web_config`
and :func:`run_app` so every service of the suite is secured the same way.
"""

from __future__ import annotations

import asyncio
import html
import ipaddress
import logging
import signal
import sys
from collections.abc import Awaitable, Callable

from aiohttp import web

from gpu_watchdog_core.limits import (
    AcceptErrorLog,
    ConnectionLimits,
    ConnectionTracker,
    LimitsError,
    limits_from_env,
    raise_open_file_limit,
)
from gpu_watchdog_core.poller import SnapshotSource
from gpu_watchdog_core.snapshot import (
    OPENMETRICS_CONTENT_TYPE,
    TEXT_CONTENT_TYPE,
    render_scrape,
    render_scrape_gzip,
    wants_gzip,
    wants_openmetrics,
)
from gpu_watchdog_core.webconfig import AuthBusy, WebConfig

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
WEB_CONFIG_KEY: web.AppKey[WebConfig] = web.AppKey("web_config", WebConfig)
POLLER_KEY: web.AppKey[SnapshotSource] = web.AppKey("poller", SnapshotSource)


class ListenAddressError(ValueError):
    pass


def parse_listen(value: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port` or `:port` (all interfaces), as Prometheus exporters accept."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ListenAddressError(f"listen address {value!r} must be HOST:PORT, [IPV6]:PORT or :PORT")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ListenAddressError(f"listen address {value!r}: port out of range")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ListenAddressError(f"listen address {value!r}: {host!r} is not an IPv6 address") from None
    return host or "0.0.0.0", port


def unauthorized(scheme: str = "Basic", reason: str = "Unauthorized") -> web.Response:
    return web.Response(status=401, text=reason + "\n", headers={"WWW-Authenticate": f'{scheme} realm="gpu-watchdog"'})


def client_certificate_refused(request: web.Request, config: WebConfig) -> web.Response | None:
    """403 (and no keep-alive) when the TLS client certificate has no SAN in client_allowed_sans.

    Go refuses such a client in the handshake; Python's ssl has no hook there, so the check runs
    before any handler on every request of the connection and the connection is then closed.
    """
    if config.client_certificate_allowed(request.transport.get_extra_info("ssl_object") if request.transport else None):
        return None
    response = web.Response(status=403, text="Forbidden: client certificate has no allowed SAN\n")
    response.force_close()
    return response


async def basic_auth_refused(request: web.Request, config: WebConfig) -> web.Response | None:
    """401 for missing or wrong basic auth, 429 when too many bcrypt checks are queued, else None."""
    try:
        ok = await config.authorize(request.headers.get("Authorization"))
    except AuthBusy as exc:
        return web.Response(status=429, text=f"{exc}; retry\n", headers={"Retry-After": "1"})
    return None if ok else unauthorized()


def web_config_middleware(config: WebConfig, own_auth: tuple[str, ...] = ()) -> web.middleware:  # type: ignore[valid-type]
    """client_allowed_sans and basic auth for every route; paths under `own_auth` authenticate themselves.

    Configured headers are added by :func:`install_web_config`'s response hook instead, so they
    reach every response: 401s from here, 404/405 from the router, 413 and even a 500.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        refused = client_certificate_refused(request, config)
        if refused is None and config.auth_required and not request.path.startswith(own_auth):
            refused = await basic_auth_refused(request, config)
        if refused is not None:
            return refused
        return await handler(request)

    return middleware


def install_web_config(app: web.Application, config: WebConfig, own_auth: tuple[str, ...] = ()) -> None:
    """Secure `app` as the web config says: the middleware above plus headers on every response."""
    app.middlewares.append(web_config_middleware(config, own_auth))
    if config.headers:

        async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
            for key, value in config.headers.items():
                response.headers[key] = value

        app.on_response_prepare.append(add_headers)


def build_exporter_app(
    poller: SnapshotSource,
    web_config: WebConfig,
    title: str,
    extra_health: Callable[[], tuple[bool, str]] | None = None,
) -> web.Application:
    app = web.Application()
    install_web_config(app, web_config)
    app[WEB_CONFIG_KEY] = web_config
    app[POLLER_KEY] = poller

    async def metrics(request: web.Request) -> web.Response:
        om = wants_openmetrics(request.headers.get("Accept"))
        if wants_gzip(request.headers.get("Accept-Encoding")):
            # Pre-compressed once per cycle: gzip costs the scrape nothing (snapshot.py).
            resp = web.Response(body=render_scrape_gzip(poller.snapshot, poller.dynamic_families, om))
            resp.headers["Content-Type"] = OPENMETRICS_CONTENT_TYPE if om else TEXT_CONTENT_TYPE
            resp.headers["Content-Encoding"] = "gzip"
            resp.headers["Vary"] = "Accept-Encoding"
            return resp
        body, content_type = render_scrape(poller.snapshot, om, poller.dynamic_families)
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = content_type
        resp.headers["Vary"] = "Accept-Encoding"
        return resp

    async def healthz(request: web.Request) -> web.Response:
        ok, reason = poller.health()
        if ok and extra_health is not None:
            ok, reason = extra_health()
        return web.Response(status=200 if ok else 503, text=reason + "\n")

    async def index(request: web.Request) -> web.Response:
        name = html.escape(title)
        return web.Response(
            content_type="text/html",
            text=f"<html><head><title>{name}</title></head><body><h1>{name}</h1>"
            '<p><a href="metrics">Metrics</a> &middot; <a href="healthz">Health</a></p></body></html>\n',
        )

    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/", index)
    return app


def run_app(
    app: web.Application,
    listen: str,
    web_config: WebConfig,
    *,
    on_started: Callable[[], None] | None = None,
    on_shutdown: Callable[[], None] | None = None,
    limits: ConnectionLimits | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM. Blocks; exits cleanly so pid-based supervisors see 0.

    The listener is guarded against slow and many clients (:mod:`gpu_watchdog_core.limits`).
    """
    host, port = parse_listen(listen)
    if limits is None:
        try:
            limits = limits_from_env()
        except LimitsError as exc:
            print(f"error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    guard = limits

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(AcceptErrorLog(guard.accept_log_interval))
        open_files = raise_open_file_limit()
        runner = web.AppRunner(
            app,
            handle_signals=False,
            access_log=logging.getLogger("aiohttp.access"),
            keepalive_timeout=guard.idle_timeout,
        )
        await runner.setup()
        assert runner.server is not None
        tracker = ConnectionTracker(guard, runner.server)
        ssl_context = web_config.ssl_context()
        try:
            listener = await loop.create_server(
                tracker,
                host,
                port,
                ssl=ssl_context,
                ssl_handshake_timeout=guard.header_timeout if ssl_context else None,
                reuse_address=True,
                backlog=512,
            )
        except BaseException:
            await runner.cleanup()
            raise
        log.info(
            "listening",
            extra={
                "address": f"{host}:{port}",
                "tls": web_config.tls is not None,
                "basic_auth": web_config.auth_required,
                "max_connections": tracker.cap,
                "open_files_limit": open_files,
            },
        )
        if on_started:
            on_started()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            log.info("shutting down")
            listener.close()
            if on_shutdown:
                on_shutdown()
            await runner.cleanup()
            tracker.stop()

    asyncio.run(main())
