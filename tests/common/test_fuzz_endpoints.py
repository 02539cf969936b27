"""Property-based fuzzing of every endpoint of every program: no input gets a 5xx.

The four servers run as real processes (gpu-exporter on the simulated backend, slurm-exporter
with no Slurm to reach, runpod-exporter against the fake RunPod API, agent-webhook), each with
basic auth or a bearer token so the authentication paths are fuzzed too. Requests are written
byte by byte on a raw socket, so header values that are not UTF-8 (and bodies that are not
JSON) reach the server exactly as a hostile client would send them.

The one 5xx a server may give is the one that is not about the input: a `/healthz` that is
already 503 for a clean request (slurm-exporter here has no Slurm) stays 503.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from base64 import b64encode, urlsafe_b64encode
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_from_bytes

import bcrypt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.agent.conftest import TOKEN, make_alert, make_payload
from tests.fakes.runpod_api import DEFAULT_API_KEY, FakeRunPod
from tests.harness.processes import LOOPBACK, ProcessManager, free_port

BIN = Path(sys.executable).parent
PASSWORD = b"s3cret"
HASH = bcrypt.hashpw(PASSWORD, bcrypt.gensalt(rounds=4)).decode()
GOOD_BASIC = "Basic " + b64encode(b"prom:" + PASSWORD).decode()


@dataclass
class Program:
    name: str
    port: int
    paths: list[str]
    good_auth: str
    healthz_baseline: int = 200


def raw_request(port: int, data: bytes, timeout: float = 10.0) -> int | None:
    """Send `data` as-is; the status of the first response, None if the server answered nothing."""
    with socket.create_connection((LOOPBACK, port), timeout=timeout) as sock:
        sock.sendall(data)
        head = b""
        while b"\r\n" not in head:
            try:
                chunk = sock.recv(4096)
            except ConnectionResetError:
                break
            if not chunk:
                break
            head += chunk
    if not head.startswith(b"HTTP/1."):
        return None
    return int(head.split(b" ", 2)[1])


@pytest.fixture(scope="module")
def programs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Program]]:
    tmp = tmp_path_factory.mktemp("fuzz-programs")
    web = tmp / "web.yml"
    web.write_text(f"basic_auth_users:\n  prom: '{HASH}'\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n")
    (tmp / "token").write_text(TOKEN)
    (tmp / "empty-bin").mkdir()
    fake = FakeRunPod().start()
    procs = ProcessManager(tmp / "logs")
    common = ["--web-config", str(web), "--log-level", "warning"]
    ports = {name: free_port() for name in ("gpu", "slurm", "runpod", "agent")}
    env = {**os.environ, "RUNPOD_API_KEY": DEFAULT_API_KEY, "RUNPOD_API_BASE_URL": fake.url}
    agent_cfg = tmp / "agent.yml"
    agent_cfg.write_text(
        json.dumps(
            {
                "listen": f"{LOOPBACK}:{ports['agent']}",
                "db": str(tmp / "agent.db"),
                "token_file": str(tmp / "token"),
                "web_config": str(web),
                "max_body_bytes": 65536,
            }
        )
    )
    try:
        started = [
            procs.start(
                "gpu-exporter",
                [
                    str(BIN / "gpu-exporter"),
                    "--backend=sim",
                    "--sim-gpus=1",
                    f"--listen={LOOPBACK}:{ports['gpu']}",
                    *common,
                ],
            ),
            procs.start(
                "slurm-exporter",
                [
                    str(BIN / "slurm-exporter"),
                    f"--listen={LOOPBACK}:{ports['slurm']}",
                    "--backend=cli",
                    f"--slurm-bin-dir={tmp / 'empty-bin'}",
                    "--cluster=fuzz",
                    *common,
                ],
            ),
            procs.start(
                "runpod-exporter",
                [str(BIN / "runpod-exporter"), f"--listen={LOOPBACK}:{ports['runpod']}", *common],
                env=env,
            ),
            procs.start("agent-webhook", [str(BIN / "agent-webhook"), "--config", str(agent_cfg)]),
        ]
        hdr = {"Authorization": GOOD_BASIC}
        for proc, name in zip(started, ports, strict=True):
            proc.wait_ready(
                lambda name=name: raw_request(ports[name], _get("/metrics", hdr)) == 200, what=f"{name} serving"
            )
        exporter_paths = ["/", "/metrics", "/healthz"]
        found = {name: Program(name, ports[name], exporter_paths, GOOD_BASIC) for name in ("gpu", "slurm", "runpod")}
        found["agent"] = Program(
            "agent", ports["agent"], ["/", "/metrics", "/healthz", "/alerts", "/findings", "/findings/x"], GOOD_BASIC
        )
        for program in found.values():
            program.healthz_baseline = raw_request(program.port, _get("/healthz", hdr)) or 0
        yield found
    finally:
        procs.stop_all()
        fake.stop()


def _get(path: str, headers: dict[str, str]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {LOOPBACK}", "Connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# -- strategies -------------------------------------------------------------------------------

header_bytes = st.binary(max_size=80).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
huge_int = st.integers(4301, 6000).map(lambda n: "9" * n)
cursors = st.integers(-(2**70), 2**70).map(lambda s: urlsafe_b64encode(json.dumps({"s": s}).encode()).decode())
query_value = st.one_of(
    st.binary(max_size=40).map(quote_from_bytes),
    st.text(max_size=20).map(lambda s: quote_from_bytes(s.encode("utf-8", "surrogatepass"))),
    cursors,
    st.integers().map(str),
    st.sampled_from(["firing", "resolved", "15m", "1e400", "nan", "-1", "0", "1001", "2026-01-01T00:00:00Z"]),
)
query = st.dictionaries(
    st.sampled_from(["limit", "cursor", "since", "status", "node", "alertname", "x"]), query_value, max_size=4
).map(lambda q: "&".join(f"{k}={v}" for k, v in q.items()))


def authorizations(good: str) -> st.SearchStrategy[bytes]:
    creds = st.tuples(st.binary(max_size=20), st.binary(max_size=100)).map(
        lambda up: b64encode(up[0].replace(b":", b"") + b":" + up[1])
    )
    scheme = st.sampled_from([b"Basic ", b"basic ", b"BASIC ", b"Bearer ", b"bearer ", b"Digest ", b""])
    return st.one_of(
        st.sampled_from([good.encode(), f"Bearer {TOKEN}".encode(), GOOD_BASIC.encode()]),
        st.tuples(scheme, creds).map(lambda t: t[0] + t[1]),
        st.tuples(scheme, header_bytes).map(lambda t: t[0] + t[1]),
        st.just(b"Basic " + b64encode(b"prom:" + b"x" * 100)),
    )


def bodies() -> st.SearchStrategy[bytes]:
    labels = st.dictionaries(st.text(max_size=8), st.text(max_size=12), max_size=3)

    def alert_with(extra: dict[str, str], drop_alertname: bool) -> bytes:
        alert = make_alert("fp-fuzz", **{k: v for k, v in extra.items() if k and k.isidentifier()})
        alert["labels"].update(extra)
        if drop_alertname:
            alert["labels"].pop("alertname", None)
        return json.dumps(make_payload([alert])).encode()

    return st.one_of(
        st.binary(max_size=300),
        st.tuples(labels, st.booleans()).map(lambda t: alert_with(*t)),
        st.sampled_from(["\x00", "\u202e", "\u2066", "ok"]).map(lambda c: alert_with({"node": f"gpu{c}1"}, False)),
        huge_int.map(lambda digits: f'{{"version": "4", "alerts": [], "truncatedAlerts": {digits}}}'.encode()),
    )


@st.composite
def requests(draw: Callable[..., Any], program: Program, endpoint: str) -> bytes:
    """A request to `endpoint` ("METHOD /path", or "any" for any method and path) with hostile parts."""
    if endpoint == "any":
        method = draw(st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "FUZZ"]))
        path = draw(
            st.one_of(
                st.binary(max_size=30).map(lambda b: "/" + quote_from_bytes(b)),
                st.sampled_from(["/findings/", "/findings/%FF%FE", "/findings/%00", "/metrics/../healthz", "//"]),
                st.sampled_from(program.paths),
            )
        )
    else:
        method, path = endpoint.split(" ")
        if path == "/findings/x":
            path = "/findings/" + draw(st.binary(max_size=40).map(quote_from_bytes))
    q = draw(query) if path == "/findings" or endpoint == "any" or draw(st.booleans()) else ""
    head = [
        f"{method} {path}{'?' + q if q else ''} HTTP/1.1".encode(),
        f"Host: {LOOPBACK}".encode(),
        b"Connection: close",
    ]
    # Mostly valid credentials, or the handlers behind authentication are barely reached.
    auth = draw(st.sampled_from(["valid", "valid", "valid", "hostile", "none"]))
    good = f"Bearer {TOKEN}" if path.startswith("/alerts") else program.good_auth
    if auth == "valid":
        head.append(b"Authorization: " + draw(st.sampled_from([good, good, "b" + good[1:]])).encode())
    elif auth == "hostile":
        head.append(b"Authorization: " + draw(authorizations(good)))
    if draw(st.integers(0, 3)) == 0:
        head.append(b"Content-Type: " + draw(st.sampled_from([b"application/json", b"text/plain", b"\xff\xfe"])))
    if draw(st.booleans()):
        head.append(b"Accept: " + draw(st.sampled_from([b"application/openmetrics-text; version=1.0.0", b"\xff*/*"])))
    body = draw(bodies()) if method in ("POST", "PUT") else b""
    if body or method == "POST":
        head.append(f"Content-Length: {len(body)}".encode())
    return b"\r\n".join(head) + b"\r\n\r\n" + body


FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
EXPORTER_ENDPOINTS = ["GET /", "GET /metrics", "GET /healthz", "any"]
AGENT_ENDPOINTS = ["POST /alerts", "GET /findings", "GET /findings/x", "GET /", "GET /metrics", "GET /healthz", "any"]
CASES = [(name, e) for name in ("gpu", "slurm", "runpod") for e in EXPORTER_ENDPOINTS] + [
    ("agent", e) for e in AGENT_ENDPOINTS
]


@pytest.mark.parametrize(("name", "endpoint"), CASES)
def test_no_request_gets_a_5xx(programs: dict[str, Program], name: str, endpoint: str) -> None:
    program = programs[name]

    @FUZZ
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        raw = data.draw(requests(program, endpoint))
        status = raw_request(program.port, raw)
        assert status is not None, f"no answer to {raw[:300]!r}"
        if status == 503 and raw.split(b" ", 2)[1].startswith(b"/healthz"):
            assert program.healthz_baseline == 503, raw[:300]
            return
        assert status < 500, f"{status} for {raw[:300]!r}"

    check()
    # The process is still serving.
    assert raw_request(program.port, _get("/metrics", {"Authorization": GOOD_BASIC})) == 200


def test_agent_counted_no_server_errors(programs: dict[str, Program]) -> None:
    port = programs["agent"].port
    with socket.create_connection((LOOPBACK, port), timeout=10) as sock:
        sock.sendall(_get("/metrics", {"Authorization": GOOD_BASIC}))
        text = b""
        while chunk := sock.recv(65536):
            text += chunk
    counted = [line for line in text.decode().splitlines() if line.startswith("agent_webhook_notifications_total")]
    assert counted and not any('code="5' in line for line in counted), counted


def _post_alerts(body: bytes) -> bytes:
    head = f"POST /alerts HTTP/1.1\r\nHost: {LOOPBACK}\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\n"
    return head.encode() + f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body


@pytest.mark.parametrize(
    ("what", "raw", "expected"),
    [
        ("4,301-digit integer", _post_alerts(b'{"alerts": [], "x": ' + b"9" * 4301 + b"}"), 400),
        (
            "non-UTF-8 bearer",
            _get("/findings", {}).replace(b"\r\n\r\n", b"\r\nAuthorization: Bearer \xff\xfe\r\n\r\n"),
            401,
        ),
        ("non-UTF-8 basic", _get("/metrics", {}).replace(b"\r\n\r\n", b"\r\nAuthorization: Basic \xff\r\n\r\n"), 401),
        (
            "cursor of 2**63",
            _get(
                "/findings?cursor=" + urlsafe_b64encode(b'{"s": 9223372036854775808}').decode(),
                {"Authorization": GOOD_BASIC},
            ),
            400,
        ),
        (
            "password of 73 bytes",
            _get("/metrics", {"Authorization": "Basic " + b64encode(b"prom:" + b"p" * 73).decode()}),
            401,
        ),
    ],
)
def test_named_hostile_inputs(programs: dict[str, Program], what: str, raw: bytes, expected: int) -> None:
    assert raw_request(programs["agent"].port, raw) == expected, what
