"""HTTP side of an exporter: `/metrics` from the poller's snapshot, `/healthz`, a landing page.

TLS, basic auth and extra headers come from exporter-toolkit's web config
(:mod:`exporters.common.webconfig`). The agent webhook reuses :func:`web_config_middleware`
and :func:`run_app` so every service of the suite is secured the same way.
"""

from __future__ import annotations

import asyncio
import html
import ipaddress
import logging
import signal
from collections.abc import Awaitable, Callable

from aiohttp import web

from exporters.common.poller import SnapshotPoller
from exporters.common.snapshot import (
    TEXT_CONTENT_TYPE,
    render_scrape,
    render_scrape_gzip,
    wants_gzip,
    wants_openmetrics,
)
from exporters.common.webconfig import WebConfig

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
WEB_CONFIG_KEY: web.AppKey[WebConfig] = web.AppKey("web_config", WebConfig)
POLLER_KEY: web.AppKey[SnapshotPoller] = web.AppKey("poller", SnapshotPoller)


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


def web_config_middleware(config: WebConfig, public_paths: frozenset[str] = frozenset()) -> web.middleware:  # type: ignore[valid-type]
    """Basic auth (bcrypt, cached) and configured response headers for every route."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if config.auth_required and request.path not in public_paths:
            header = request.headers.get("Authorization")
            ok = config.cached_authorization(header)
            if ok is None:  # bcrypt is slow: keep it off the event loop
                ok = await asyncio.get_running_loop().run_in_executor(None, config.check_authorization, header)
            if not ok:
                raise web.HTTPUnauthorized(
                    text="Unauthorized\n", headers={"WWW-Authenticate": 'Basic realm="gpu-watchdog"'}
                )
        response = await handler(request)
        for key, value in config.headers.items():
            response.headers[key] = value
        return response

    return middleware


def build_exporter_app(
    poller: SnapshotPoller,
    web_config: WebConfig,
    title: str,
    extra_health: Callable[[], tuple[bool, str]] | None = None,
) -> web.Application:
    app = web.Application(middlewares=[web_config_middleware(web_config)])
    app[WEB_CONFIG_KEY] = web_config
    app[POLLER_KEY] = poller

    async def metrics(request: web.Request) -> web.Response:
        om = wants_openmetrics(request.headers.get("Accept"))
        if not om and wants_gzip(request.headers.get("Accept-Encoding")):
            # Pre-compressed once per cycle: gzip costs the scrape nothing (snapshot.py).
            resp = web.Response(body=render_scrape_gzip(poller.snapshot, poller.dynamic_families))
            resp.headers["Content-Type"] = TEXT_CONTENT_TYPE
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
) -> None:
    """Serve until SIGINT/SIGTERM. Blocks; exits cleanly so pid-based supervisors see 0."""
    host, port = parse_listen(listen)

    async def main() -> None:
        runner = web.AppRunner(app, handle_signals=False, access_log=logging.getLogger("aiohttp.access"))
        await runner.setup()
        site = web.TCPSite(runner, host, port, ssl_context=web_config.ssl_context(), reuse_address=True)
        await site.start()
        log.info(
            "listening",
            extra={
                "address": f"{host}:{port}",
                "tls": web_config.tls is not None,
                "basic_auth": web_config.auth_required,
            },
        )
        if on_started:
            on_started()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            log.info("shutting down")
            if on_shutdown:
                on_shutdown()
            await runner.cleanup()

    asyncio.run(main())
