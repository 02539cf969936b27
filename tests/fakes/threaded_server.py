"""An aiohttp app served on a free loopback port from its own thread and event loop.

Fakes run this way so synchronous tests (and blocking harness calls such as
`PrometheusServer.wait_for`) can use them as well as async tests.
"""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web

from tests.harness.processes import LOOPBACK, free_port


class ThreadedServer:
    def __init__(self, app: web.Application, port: int | None = None) -> None:
        self.app = app
        self.port = port or free_port()
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name=f"fake-{self.port}")
        self._started = False

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.5, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, LOOPBACK, self.port).start()

    def start(self) -> ThreadedServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        self._started = True
        return self

    def stop(self) -> None:
        if not self._started:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
        self._started = False

    def __enter__(self) -> ThreadedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
