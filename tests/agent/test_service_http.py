"""POST /alerts, the findings API, health and metrics, over real HTTP against the real app."""

from __future__ import annotations

import base64
import json
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import bcrypt
import pytest
import trustme
import yaml

from agent_webhook.config import AgentConfig
from tests.agent.conftest import (
    TOKEN,
    ScriptedInvestigator,
    ServiceThread,
    get_json,
    make_alert,
    make_payload,
    post_alerts,
    request,
    sample,
)
from tests.harness.processes import http_get

StartService = Callable[..., ServiceThread]


@pytest.fixture
def svc(agent_config: Callable[..., AgentConfig], start_service: StartService) -> ServiceThread:
    return start_service(agent_config(max_body_bytes=64 * 1024))


# -- ingest -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "new", "resolved_unseen"),
    [("firing.json", 1, 0), ("mixed-group.json", 1, 1), ("grouped.json", 4, 0), ("truncated.json", 2, 0)],
)
def test_samples_are_accepted_and_investigated(svc: ServiceThread, name: str, new: int, resolved_unseen: int) -> None:
    reply = post_alerts(svc.url, sample(name))
    assert reply.status == 202, reply.body
    body = reply.json()
    assert (body["new"], body["resolved_unseen"], body["duplicates"]) == (new, resolved_unseen, 0)
    svc.wait_idle()
    findings = svc.findings()
    assert len(findings) == new
    # Alerts of one node are one incident: the second of a kind reuses the first's diagnosis.
    assert all(f["summary"].startswith("scripted diagnosis") for f in findings if f["derived_from"] is None)
    assert len(svc.investigator.calls) == len({(f["incident_id"], f["alertname"]) for f in findings})  # type: ignore[attr-defined]


def test_resends_and_ha_duplicates_do_not_start_new_investigations(svc: ServiceThread) -> None:
    payload = sample("grouped.json")
    assert post_alerts(svc.url, payload).json()["new"] == 4
    for _ in range(3):  # group_interval re-sends, and an HA peer's copy
        assert post_alerts(svc.url, payload).json()["duplicates"] == 4
    # The same instant spelled differently by another peer is the same alert.
    again = json.loads(json.dumps(payload))
    again["alerts"][0]["startsAt"] = "2026-11-23T00:40:07.512345+01:00"
    assert post_alerts(svc.url, again).json()["duplicates"] == 4
    svc.wait_idle()
    # One investigation per node (gpu-worker-2's two alerts are one incident), none per re-send.
    calls = svc.investigator.calls  # type: ignore[attr-defined]
    assert len(calls) == len(set(calls)) == 3
    assert set(calls) <= {a["fingerprint"] for a in payload["alerts"]}
    assert len(svc.findings()) == 4
    metrics = http_get(f"{svc.url}/metrics")[1].decode()
    assert "agent_webhook_alerts_deduplicated_total 16.0" in metrics
    assert 'agent_webhook_alerts_received_total{status="firing"} 20.0' in metrics


def test_a_new_startsat_is_a_new_alert(svc: ServiceThread) -> None:
    post_alerts(svc.url, make_payload([make_alert("fp", starts_at="2026-11-22T10:00:00Z")]))
    post_alerts(svc.url, make_payload([make_alert("fp", starts_at="2026-11-22T11:00:00Z")]))
    svc.wait_idle()
    assert len(svc.findings()) == 2


def test_resolved_updates_the_finding_without_a_new_investigation(svc: ServiceThread) -> None:
    post_alerts(svc.url, sample("firing.json"))
    svc.wait_idle()
    (finding,) = svc.findings()
    assert finding["status"] == "firing" and finding["resolved_at"] is None
    reply = post_alerts(svc.url, sample("resolved.json"))
    assert reply.json()["resolved"] == 1
    assert post_alerts(svc.url, sample("resolved.json")).json()["duplicates"] == 1
    # A firing copy arriving late from an HA peer does not reopen it.
    assert post_alerts(svc.url, sample("firing.json")).json()["duplicates"] == 1
    svc.wait_idle()
    (after,) = svc.findings()
    assert after["id"] == finding["id"]
    assert after["status"] == "resolved" and after["resolved_at"]
    assert len(svc.investigator.calls) == 1  # type: ignore[attr-defined]


def test_resolved_before_investigation_finishes(
    agent_config: Callable[..., AgentConfig], start_service: StartService
) -> None:
    svc = start_service(agent_config(), ScriptedInvestigator(delay=0.5))
    post_alerts(svc.url, sample("firing.json"))
    post_alerts(svc.url, sample("resolved.json"))
    svc.wait_idle()
    (finding,) = svc.findings()
    assert finding["status"] == "resolved"


# -- rejections ---------------------------------------------------------------------------


def test_auth(svc: ServiceThread) -> None:
    payload = sample("firing.json")
    assert post_alerts(svc.url, payload, token=None).status == 401
    assert post_alerts(svc.url, payload, token="wrong").status == 401
    assert post_alerts(svc.url, payload, token=TOKEN + "x").status == 401
    basic = base64.b64encode(f"user:{TOKEN}".encode()).decode()
    reply = request(f"{svc.url}/alerts", "POST", json.dumps(payload).encode(), {"Authorization": f"Basic {basic}"})
    assert reply.status == 401
    assert reply.headers["www-authenticate"].startswith("Bearer")
    assert get_json(f"{svc.url}/findings", token=None).status == 401
    assert get_json(f"{svc.url}/findings", token="wrong").status == 401
    assert get_json(f"{svc.url}/findings").status == 200
    assert svc.findings() == []


def test_size_limit_from_content_length(svc: ServiceThread) -> None:
    payload = make_payload([make_alert(f"fp{i}", note="x" * 1000) for i in range(80)])
    reply = post_alerts(svc.url, payload)
    assert reply.status == 413
    assert "limit of 65536 bytes" in reply.json()["error"]


def test_size_limit_while_streaming_a_chunked_body(svc: ServiceThread) -> None:
    """No Content-Length: the limit is enforced while reading, not after buffering everything."""
    host, port = svc.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /alerts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        chunk = b"[" * 16384
        sent = 0
        try:
            while sent < 10 * 1024 * 1024:  # far beyond the limit; the server stops us early
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        response = sock.recv(65536).decode(errors="replace")
    assert response.startswith("HTTP/1.1 413"), response[:200]
    assert sent < 10 * 1024 * 1024 or "413" in response


@pytest.mark.parametrize(
    ("body", "content_type", "status", "reason"),
    [
        (b"{not json", "application/json", 400, "malformed JSON"),
        (b"{}", "application/json", 400, "alerts: expected an array"),
        (b'{"alerts": [{"status": "firing"}]}', "application/json", 400, "alerts[0].fingerprint"),
        (b"{}", "text/plain", 415, "content type"),
        (b"{}", "application/x-www-form-urlencoded", 415, "content type"),
        (b"\x00\x01\x02", "application/json", 400, "malformed JSON"),
        (b'{"alerts": []}', "application/json; charset=utf-8", 202, None),
        (b'{"alerts": []}', "application/vnd.alertmanager+json", 202, None),
        (b'{"alerts": [], "x": ' + b"9" * 4301 + b"}", "application/json", 400, "number is too long"),
        (json.dumps(make_payload([make_alert("fp", node="gpu\x001")])).encode(), "application/json", 400, "NUL"),
        (json.dumps(make_payload([make_alert("fp", node="gpu\u202e1")])).encode(), "application/json", 400, "U+202E"),
        (json.dumps(make_payload([make_alert("fp", **{"x\u2066": "1"})])).encode(), "application/json", 400, "U+2066"),
        (json.dumps(make_payload([make_alert("fp", alertname="")])).encode(), "application/json", 400, "alertname"),
    ],
)
def test_bad_payloads_get_a_reason(
    svc: ServiceThread, body: bytes, content_type: str, status: int, reason: str | None
) -> None:
    reply = post_alerts(svc.url, body, content_type=content_type)
    assert reply.status == status, reply.body
    if reason:
        assert reason in reply.json()["error"]


def test_wrong_methods_and_paths(svc: ServiceThread) -> None:
    assert request(f"{svc.url}/alerts").status == 405
    assert request(f"{svc.url}/nope").status == 404


# -- findings API -------------------------------------------------------------------------


def _load(svc: ServiceThread, count: int) -> None:
    alerts = [
        make_alert(f"fp{i:03d}", node=f"gpu-worker-{i % 3}", alertname="GPUXidError" if i % 2 else "GPUThermal")
        for i in range(count)
    ]
    assert post_alerts(svc.url, make_payload(alerts)).status == 202
    svc.wait_idle()


def test_findings_filters_limit_and_cursor(svc: ServiceThread) -> None:
    _load(svc, 30)
    base = f"{svc.url}/findings"
    everything = get_json(f"{base}?limit=1000").json()
    assert len(everything["findings"]) == 30 and everything["next_cursor"] is None
    ids: list[str] = []
    cursor = None
    while True:
        reply = get_json(f"{base}?limit=7" + (f"&cursor={cursor}" if cursor else "")).json()
        ids += [f["id"] for f in reply["findings"]]
        cursor = reply["next_cursor"]
        if not cursor:
            break
    assert ids == [f["id"] for f in everything["findings"]]  # newest first, no gaps, no repeats
    node = get_json(f"{base}?node=gpu-worker-1").json()["findings"]
    assert len(node) == 10 and {f["node"] for f in node} == {"gpu-worker-1"}
    both = get_json(f"{base}?node=gpu-worker-1&alertname=GPUThermal").json()["findings"]
    assert {(f["node"], f["alertname"]) for f in both} == {("gpu-worker-1", "GPUThermal")}
    assert len(get_json(f"{base}?status=firing").json()["findings"]) == 30
    assert get_json(f"{base}?status=resolved").json()["findings"] == []
    assert len(get_json(f"{base}?since=10m").json()["findings"]) == 30
    assert get_json(f"{base}?since=2999-01-01T00:00:00Z").json()["findings"] == []
    one = everything["findings"][0]
    detail = get_json(f"{base}/{one['id']}").json()
    assert detail == one
    for key in ("fingerprints", "diagnosis", "evidence", "recommended_actions", "llm", "timings", "severity"):
        assert key in detail
    assert detail["llm"] == {"used": True, "model": "scripted-model"}


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("limit=1001", "limit"),
        ("limit=0", "limit"),
        ("limit=ten", "limit"),
        ("cursor=garbage!", "cursor"),
        ("cursor=" + base64.urlsafe_b64encode(b'{"s": "x"}').decode(), "cursor"),
        ("status=burning", "status"),
        ("since=last-tuesday", "since"),
        ("since=nan", "since"),
    ],
)
def test_findings_bad_queries_are_400(svc: ServiceThread, query: str, reason: str) -> None:
    reply = get_json(f"{svc.url}/findings?{query}")
    assert reply.status == 400
    assert reason in reply.json()["error"]


def test_unknown_finding_is_a_json_404(svc: ServiceThread) -> None:
    reply = get_json(f"{svc.url}/findings/f-doesnotexist")
    assert reply.status == 404
    assert "no finding" in reply.json()["error"]


# -- health, metrics ----------------------------------------------------------------------


def test_healthz_and_metrics_pass_promtool(svc: ServiceThread) -> None:
    _load(svc, 3)
    post_alerts(svc.url, b"{", content_type="application/json")
    assert http_get(f"{svc.url}/healthz") == (200, b"ok\n")
    status, body = http_get(f"{svc.url}/metrics")
    assert status == 200
    text = body.decode()
    for name in (
        "agent_webhook_alerts_received_total",
        "agent_webhook_alerts_deduplicated_total",
        "agent_webhook_queue_depth 0.0",
        "agent_webhook_investigation_duration_seconds_count 3.0",
        'agent_webhook_investigations_total{outcome="ok"} 3.0',
        "agent_webhook_llm_calls_total 6.0",
        "agent_webhook_llm_failures_total 3.0",
        'agent_webhook_notifications_total{code="400"} 1.0',
        "agent_webhook_findings 3.0",
    ):
        assert name in text, name
    promtool = shutil.which("promtool")
    assert promtool, "promtool missing: install Debian's prometheus (make test does)"
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr


def test_tls_and_basic_auth_from_the_web_config(
    tmp_path: Path, agent_config: Callable[..., AgentConfig], start_service: StartService
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    hashed = bcrypt.hashpw(b"scrape-pass", bcrypt.gensalt(rounds=4)).decode()
    web = {
        "tls_server_config": {"cert_file": "server.pem", "key_file": "server.pem"},
        "basic_auth_users": {"prom": hashed},
    }
    (tmp_path / "web.yml").write_text(yaml.safe_dump(web))
    svc = start_service(agent_config(web_config="web.yml"))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    url = svc.url.replace("http://", "https://")
    basic = {"Authorization": "Basic " + base64.b64encode(b"prom:scrape-pass").decode()}
    assert http_get(f"{url}/metrics", context=context)[0] == 401
    assert http_get(f"{url}/metrics", context=context, headers=basic)[0] == 200
    # Alertmanager's bearer token on /alerts; the findings API takes the token or basic auth.
    import urllib.request

    req = urllib.request.Request(
        f"{url}/alerts",
        data=json.dumps(sample("firing.json")).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, context=context, timeout=10) as resp:
        assert resp.status == 202
    assert http_get(f"{url}/findings", context=context, headers=basic)[0] == 200
    assert http_get(f"{url}/findings", context=context, headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200
    assert http_get(f"{url}/findings", context=context)[0] == 401


def test_database_failure_is_a_503_so_alertmanager_retries(svc: ServiceThread) -> None:
    store = svc.service.store
    svc.call(store.run(store.close))  # the database goes away under the running service
    reply = post_alerts(svc.url, sample("firing.json"))
    assert reply.status == 503
    assert "retry" in reply.json()["error"]
    assert http_get(f"{svc.url}/healthz")[0] == 503
    assert http_get(f"{svc.url}/metrics")[0] == 200  # metrics still answer, from the last known values


def test_an_unexpected_error_is_a_counted_500(svc: ServiceThread) -> None:
    async def broken(alerts: object) -> object:
        raise RuntimeError("a bug in the store")  # stand-in for a defect, not for bad input

    svc.service.store.ingest_async = broken  # type: ignore[method-assign,assignment]
    reply = post_alerts(svc.url, sample("firing.json"))
    assert reply.status == 500 and "internal error" in reply.json()["error"]
    metrics = http_get(f"{svc.url}/metrics")[1].decode()
    assert 'agent_webhook_notifications_total{code="500"} 1.0' in metrics


def test_without_a_token_alerts_fall_back_to_web_config_basic_auth(tmp_path: Path, start_service: StartService) -> None:
    from agent_webhook.config import build_config

    hashed = bcrypt.hashpw(b"am-pass", bcrypt.gensalt(rounds=4)).decode()
    (tmp_path / "web.yml").write_text(yaml.safe_dump({"basic_auth_users": {"alertmanager": hashed}}))
    svc = start_service(build_config({"db": "a.db", "web_config": "web.yml"}, tmp_path))
    body = json.dumps(sample("firing.json")).encode()
    good = "Basic " + base64.b64encode(b"alertmanager:am-pass").decode()
    bad = "Basic " + base64.b64encode(b"alertmanager:nope").decode()
    headers = {"Content-Type": "application/json"}
    assert request(f"{svc.url}/alerts", "POST", body, headers).status == 401
    assert request(f"{svc.url}/alerts", "POST", body, {**headers, "Authorization": bad}).status == 401
    assert request(f"{svc.url}/alerts", "POST", body, {**headers, "Authorization": good}).status == 202
