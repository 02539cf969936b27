"""Regression (found by tests/e2e): a Prometheus answer that arrives in several pieces is read
whole. `StreamReader.read(n)` returns only what has arrived, so a large answer (every series of
a node's 8 GPUs) used to be cut at the first chunk and reported as "HTTP 200 with non-JSON".
"""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import web

import agent_webhook.investigation.prometheus as prometheus
from agent_webhook.investigation.prometheus import PrometheusAPI, PrometheusQueryError
from agent_webhook.investigation.safety import URLAllowlist
from tests.fakes.threaded_server import ThreadedServer

SERIES = 400


def _answer() -> bytes:
    result = [
        {"metric": {"__name__": "nvidia_gpu_temperature_celsius", "gpu": str(i), "node": "gpu-a1", "pad": "x" * 200},
         "value": [1763900000.0, "41"]}
        for i in range(SERIES)
    ]  # fmt: skip
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}).encode()


async def _chunked(request: web.Request) -> web.StreamResponse:
    body = _answer()
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    await resp.prepare(request)
    for start in range(0, len(body), 4096):  # in pieces, as a busy server's answer arrives
        await resp.write(body[start : start + 4096])
        await asyncio.sleep(0.001)
    await resp.write_eof()
    return resp


def _api(server: ThreadedServer) -> PrometheusAPI:
    return PrometheusAPI(server.base_url, URLAllowlist([server.base_url]), max_series=SERIES)


def test_an_answer_in_many_pieces_is_read_whole() -> None:
    app = web.Application()
    app.router.add_get("/api/v1/query", _chunked)
    with ThreadedServer(app) as server:
        api = _api(server)

        async def query() -> int:
            try:
                return len((await api.instant('{__name__=~"nvidia_gpu_.+"}')).series)
            finally:
                await api.close()

        assert asyncio.run(query()) == SERIES


def test_an_answer_over_the_cap_is_refused_not_truncated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prometheus, "MAX_BODY_BYTES", 10_000)
    app = web.Application()
    app.router.add_get("/api/v1/query", _chunked)
    with ThreadedServer(app) as server:
        api = _api(server)

        async def query() -> str:
            try:
                await api.instant("up")
            except PrometheusQueryError as exc:
                return str(exc)
            finally:
                await api.close()
            return "no error"

        assert "larger than" in asyncio.run(query())
