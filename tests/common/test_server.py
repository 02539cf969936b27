"""The exporter HTTP server over real sockets: metrics, health, TLS, mTLS and basic auth."""

from __future__ import annotations

import ssl
from base64 import b64encode
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path

import aiohttp
import bcrypt
import pytest
import trustme
from aiohttp import web
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from gpu_watchdog_core.poller import SnapshotPoller
from gpu_watchdog_core.server import ListenAddressError, build_exporter_app, parse_listen
from gpu_watchdog_core.webconfig import load_web_config
from tests.harness.processes import free_port


class Gauge:
    name = "toy"

    def collect(self) -> Iterable[Metric]:
        g = GaugeMetricFamily("toy_value", "A toy gauge.", labels=["gpu"])
        g.add_metric(["0"], 42)
        return [g]


Serve = Callable[[str | None], Awaitable[str]]


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Serve]:
    runners: list[web.AppRunner] = []

    async def start(web_config_text: str | None) -> str:
        path = None
        if web_config_text is not None:
            path = tmp_path / "web.yml"
            path.write_text(web_config_text)
        cfg = load_web_config(path)
        poller = SnapshotPoller("toy_exporter", [Gauge()], interval=60)
        poller.collect_once()
        runner = web.AppRunner(build_exporter_app(poller, cfg, "toy exporter"))
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=cfg.ssl_context()).start()
        runners.append(runner)
        return f"{'https' if cfg.tls else 'http'}://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
def pki(tmp_path: Path) -> trustme.CA:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    server.cert_chain_pems[0].write_to_path(str(tmp_path / "server.crt"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    return ca


async def test_metrics_and_health_over_http(serve: Serve) -> None:
    base = await serve(None)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/metrics") as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            body = await resp.text()
        assert 'toy_value{gpu="0"} 42.0' in body
        assert "toy_exporter_snapshot_age_seconds" in body
        headers = {"Accept": "application/openmetrics-text;version=1.0.0"}
        async with http.get(f"{base}/metrics", headers=headers) as resp:
            assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
            assert (await resp.text()).endswith("# EOF\n")
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200
        async with http.get(f"{base}/") as resp:
            assert "metrics" in await resp.text()


async def test_basic_auth(serve: Serve) -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    base = await serve(
        f"basic_auth_users:\n  prom: '{hashed}'\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n"
    )
    good = {"Authorization": "Basic " + b64encode(b"prom:pw").decode()}
    bad = {"Authorization": "Basic " + b64encode(b"prom:nope").decode()}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/metrics") as resp:
            assert resp.status == 401
            assert resp.headers["WWW-Authenticate"].startswith("Basic")
        async with http.get(f"{base}/metrics", headers=bad) as resp:
            assert resp.status == 401
        async with http.get(f"{base}/metrics", headers=good) as resp:
            assert resp.status == 200
            assert resp.headers["X-Frame-Options"] == "deny"


async def test_tls_and_client_certificates(serve: Serve, pki: trustme.CA, tmp_path: Path) -> None:
    base = await serve(
        f"tls_server_config:\n  cert_file: {tmp_path}/server.crt\n  key_file: {tmp_path}/server.key\n"
        f"  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: {tmp_path}/ca.crt\n"
    )
    assert base.startswith("https://")
    client_ctx = ssl.create_default_context()
    pki.configure_trust(client_ctx)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientError):  # no client certificate: handshake refused
            async with http.get(f"{base}/metrics", ssl=client_ctx) as resp:
                await resp.read()
    pki.issue_cert("prometheus").configure_cert(client_ctx)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/metrics", ssl=client_ctx) as resp:
            assert resp.status == 200
        with pytest.raises(aiohttp.ClientError):  # plain HTTP is not served
            async with http.get(base.replace("https", "http") + "/metrics") as resp:
                await resp.read()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0.0.0.0:9400", ("0.0.0.0", 9400)),
        (":9400", ("0.0.0.0", 9400)),
        ("[::1]:9400", ("::1", 9400)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
    ],
)
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize("value", ["9400", "host:", "host:port", "[nope]:1", "h:70000"])
def test_parse_listen_rejects(value: str) -> None:
    with pytest.raises(ListenAddressError):
        parse_listen(value)
