"""A reverse proxy that adds latency in front of a real server (a Prometheus under load).

It forwards GET requests as they are (path and query string) to `upstream` after `delay`
seconds, and counts them: tests see how many real requests reached the server and how slow
tools behave without faking the server's answers.
"""

from __future__ import annotations

import asyncio
import threading

import aiohttp
from aiohttp import web

from tests.fakes.threaded_server import ThreadedServer


class SlowProxy(ThreadedServer):
    def __init__(self, upstream: str, delay: float = 0.0) -> None:
        self.upstream = upstream.rstrip("/")
        self.delay = delay
        self.paths: list[str] = []  # path?query of every request forwarded
        self._lock = threading.Lock()
        app = web.Application()
        app.router.add_get("/{tail:.*}", self._forward)
        super().__init__(app)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self.paths)

    async def _forward(self, request: web.Request) -> web.Response:
        with self._lock:
            self.paths.append(request.path_qs)
        if self.delay:
            await asyncio.sleep(self.delay)
        async with (
            aiohttp.ClientSession() as session,
            session.get(self.upstream + request.path_qs, allow_redirects=False) as resp,
        ):
            body = await resp.read()
            return web.Response(status=resp.status, body=body, content_type=resp.content_type)
