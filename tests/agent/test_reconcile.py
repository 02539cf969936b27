"""Reconciliation against a real Alertmanager: alerts it no longer has are resolved, others never.

The agent runs for real (the aiohttp app over loopback HTTP), Alertmanager is the real binary,
and the resolved sink posts land on a recording webhook server. Test values: a check every
second, stale after 3 s (production: 60 s and 600 s).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent_webhook.config import AgentConfig
from agent_webhook.payload import canonical_time
from agent_webhook.store import Store
from tests.agent.conftest import FakeHTTP, Recorded, ServiceThread, make_alert, make_payload, post_alerts
from tests.harness.processes import LOOPBACK, ProcessManager, free_port, http_get, wait_until
from tests.harness.promstack import AlertmanagerServer, start_alertmanager

pytestmark = pytest.mark.slow

STALE = 3.0
_AM_CONFIG: dict[str, Any] = {
    "route": {"receiver": "none"},
    "receivers": [{"name": "none"}],
    # A firing GPUNodeDown inhibits the GPU alerts of its node, as alert_rules' routing does.
    "inhibit_rules": [
        {"source_matchers": ["alertname=GPUNodeDown"], "target_matchers": ["alertname=GPUXidError"], "equal": ["node"]}
    ],
}


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _am_alert(alertname: str, node: str, started: datetime) -> dict[str, Any]:
    return {
        "labels": {"alertname": alertname, "node": node, "gpu": "3", "severity": "critical"},
        "annotations": {"summary": f"{alertname} on {node}"},
        "startsAt": _rfc3339(started),
        "generatorURL": "http://prometheus.example:9090/graph",
    }


def _forward(svc: ServiceThread, am: AlertmanagerServer) -> list[dict[str, Any]]:
    """Post Alertmanager's alerts to the agent as its webhook would (same fingerprint, startsAt)."""
    alerts = am.alerts()
    hooks = []
    for a in alerts:
        hook = make_alert(a["fingerprint"], starts_at=a["startsAt"])
        hook["labels"] = a["labels"]
        hooks.append(hook)
    assert post_alerts(svc.url, make_payload(hooks)).status == 202
    svc.wait_idle()
    return alerts


def _metric(svc: ServiceThread, name: str) -> float:
    for line in http_get(f"{svc.url}/metrics")[1].decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def _runs(svc: ServiceThread, outcome: str) -> float:
    return _metric(svc, f'agent_webhook_reconcile_runs_total{{outcome="{outcome}"}}')


def _wait_runs(svc: ServiceThread, outcome: str, more: int) -> None:
    """Let `more` further checks with this outcome pass (the agent's own clock, no fixed sleep)."""
    target = _runs(svc, outcome) + more
    wait_until(lambda: _runs(svc, outcome) >= target, 60, what=f"{more} more {outcome} reconcile runs")


def _events(sink: FakeHTTP, event: str) -> list[dict[str, Any]]:
    return [r.json() for r in sink.requests if r.json().get("event") == event]


def _config(agent_config: Callable[..., AgentConfig], am_url: str, sink: FakeHTTP) -> AgentConfig:
    return agent_config(
        alertmanager_url=am_url,
        reconcile_interval_seconds=1,
        reconcile_stale_after_seconds=STALE,
        sinks=[{"type": "webhook", "url": f"{sink.url}/hook"}],
    )


def test_alert_gone_after_alertmanager_restart_is_resolved_once(
    agent_config: Callable[..., AgentConfig],
    start_service: Callable[..., ServiceThread],
    alertmanager_factory: Callable[..., AlertmanagerServer],
    fake_http: Callable[..., FakeHTTP],
    procs: ProcessManager,
    tmp_path: Path,
) -> None:
    am = alertmanager_factory(_AM_CONFIG)
    am.post_alerts([_am_alert("GPUXidError", "gpu-worker-1", datetime.now(UTC) - timedelta(seconds=5))])
    sink = fake_http()
    svc = start_service(_config(agent_config, am.url, sink))
    (alert,) = _forward(svc, am)
    sink.wait_for(1, path="/hook")
    # Active in Alertmanager: checks spanning more than the stale time resolve nothing.
    _wait_runs(svc, "ok", int(STALE) + 2)
    (finding,) = svc.findings()
    assert finding["status"] == "firing"

    stopped = time.time()
    am.process.stop()
    am = start_alertmanager(procs, tmp_path, _AM_CONFIG, port=am.port)  # same address, no alerts
    assert am.alerts() == []
    wait_until(lambda: svc.findings()[0]["status"] == "resolved", 60, what="the finding to be reconciled")
    (finding,) = svc.findings()
    assert finding["resolved_reason"].startswith("no longer active in Alertmanager since ")
    since = datetime.fromisoformat(finding["resolved_reason"].rsplit(" ", 1)[1]).timestamp()
    resolved_at = datetime.fromisoformat(finding["resolved_at"]).timestamp()
    assert since >= stopped and resolved_at - since >= STALE
    wait_until(lambda: len(_events(sink, "resolved")) == 1, 30, what="the resolved sink post")
    assert _events(sink, "resolved")[0]["finding"]["id"] == finding["id"]

    # Alertmanager's own resolved notification, arriving late, changes nothing.
    late = make_alert(
        alert["fingerprint"], status="resolved", starts_at=alert["startsAt"], ends_at=_rfc3339(datetime.now(UTC))
    )
    late["labels"] = alert["labels"]
    reply = post_alerts(svc.url, make_payload([late])).json()
    assert (reply["resolved"], reply["duplicates"]) == (0, 1)
    _wait_runs(svc, "ok", 3)
    assert len(_events(sink, "resolved")) == 1 and len(_events(sink, "new")) == 1
    assert svc.findings()[0]["resolved_reason"] == finding["resolved_reason"]
    assert _metric(svc, "agent_webhook_alerts_reconciled_total") == 1


def _silence(am: AlertmanagerServer, node: str) -> None:
    now = datetime.now(UTC)
    body = {
        "matchers": [{"name": "node", "value": node, "isRegex": False, "isEqual": True}],
        "startsAt": _rfc3339(now - timedelta(minutes=1)),
        "endsAt": _rfc3339(now + timedelta(hours=1)),
        "createdBy": "test",
        "comment": "maintenance",
    }
    req = urllib.request.Request(
        f"{am.url}/api/v2/silences", json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        resp.read()


def test_active_silenced_and_inhibited_alerts_are_never_resolved(
    agent_config: Callable[..., AgentConfig],
    start_service: Callable[..., ServiceThread],
    alertmanager_factory: Callable[..., AlertmanagerServer],
    fake_http: Callable[..., FakeHTTP],
) -> None:
    am = alertmanager_factory(_AM_CONFIG)
    started = datetime.now(UTC) - timedelta(seconds=5)
    _silence(am, "gpu-worker-9")
    am.post_alerts(
        [
            _am_alert("GPUNodeDown", "gpu-worker-2", started),  # active, inhibits the next one
            _am_alert("GPUXidError", "gpu-worker-2", started),  # inhibited
            _am_alert("GPUXidError", "gpu-worker-9", started),  # silenced
        ]
    )

    def states() -> dict[str, str]:
        return {a["labels"]["node"] + "/" + a["labels"]["alertname"]: a["status"]["state"] for a in am.alerts(False)}

    wait_until(
        lambda: (
            states()
            == {
                "gpu-worker-2/GPUNodeDown": "active",
                "gpu-worker-2/GPUXidError": "suppressed",
                "gpu-worker-9/GPUXidError": "suppressed",
            }
        ),
        30,
        what="Alertmanager to inhibit and silence",
    )
    sink = fake_http()
    svc = start_service(_config(agent_config, am.url, sink))
    _forward(svc, am)
    # A control in the same window: an alert Alertmanager never had is resolved, so the checks ran.
    post_alerts(svc.url, make_payload([make_alert("0123456789abcdef", node="gpu-worker-7")]))
    wait_until(
        lambda: {f["node"]: f["status"] for f in svc.findings()}.get("gpu-worker-7") == "resolved",
        60,
        what="the control alert to be reconciled",
    )
    _wait_runs(svc, "ok", int(STALE) + 2)
    statuses = sorted((f["node"], f["alertname"], f["status"]) for f in svc.findings())
    assert statuses == [
        ("gpu-worker-2", "GPUNodeDown", "firing"),
        ("gpu-worker-2", "GPUXidError", "firing"),
        ("gpu-worker-7", "GPUXidError", "resolved"),
        ("gpu-worker-9", "GPUXidError", "firing"),
    ]
    assert _metric(svc, "agent_webhook_alerts_reconciled_total") == 1


@pytest.mark.parametrize("answer", ["unreachable", "invalid"])
def test_alertmanager_down_or_garbage_resolves_nothing(
    answer: str,
    agent_config: Callable[..., AgentConfig],
    start_service: Callable[..., ServiceThread],
    fake_http: Callable[..., FakeHTTP],
) -> None:
    def garbage(r: Recorded) -> web.Response:
        if r.path.startswith("/api/v2/alerts"):
            # A list with one entry without a fingerprint: resolving from a partial view is wrong.
            return web.json_response([{"labels": {}}])
        return web.json_response({})

    am_url = f"http://{LOOPBACK}:{free_port()}" if answer == "unreachable" else fake_http(garbage).url
    sink = fake_http()
    svc = start_service(_config(agent_config, am_url, sink))
    assert post_alerts(svc.url, make_payload([make_alert("fedcba9876543210")])).status == 202
    svc.wait_idle()
    _wait_runs(svc, answer, int(STALE) + 2)
    assert [f["status"] for f in svc.findings()] == ["firing"]
    assert _metric(svc, "agent_webhook_alerts_reconciled_total") == 0
    assert http_get(f"{svc.url}/healthz")[0] == 200
    assert post_alerts(svc.url, make_payload([make_alert("fedcba9876543211")])).status == 202


def test_absence_is_kept_across_a_restart_and_cleared_when_seen(store_target: str | Path) -> None:
    """The store alone (a real SQLite file, a real PostgreSQL): reopening neither resets nor fakes an absence."""
    from agent_webhook.payload import parse_payload

    starts = "2026-11-22T23:41:07.512Z"
    (alert,) = parse_payload(json.dumps(make_payload([make_alert("aaaa", starts_at=starts)])).encode())
    key = ("aaaa", canonical_time(starts, "startsAt"))
    store = Store(store_target)
    store.open()
    store.ingest([alert])
    assert store.reconcile(set(), stale_after=3600) == []
    first = store.conn.execute("SELECT absent_since FROM alert_absence").fetchone()[0]
    store.close()
    store = Store(store_target)
    store.open()
    assert store.reconcile(set(), stale_after=3600) == []
    assert store.conn.execute("SELECT absent_since FROM alert_absence").fetchone()[0] == first
    assert store.reconcile({key}, stale_after=0.0) == []  # seen again: the absence is forgotten
    assert store.conn.execute("SELECT COUNT(*) FROM alert_absence").fetchone()[0] == 0
    assert store.reconcile(set(), stale_after=1e-9) == []  # a first absence never resolves at once
    (resolved,) = store.reconcile(set(), stale_after=1e-9)
    assert resolved[2].startswith("no longer active in Alertmanager since ")
    store.close()


def test_findings_cli_line_shows_why_reconciliation_resolved_it() -> None:
    from agent_webhook.cli_findings import _line

    finding = {"status": "resolved", "alertname": "GPUXidError", "node": "vm", "gpu": "3", "id": "f-1"}
    assert "\n" not in _line(finding | {"resolved_reason": None})
    reason = "no longer active in Alertmanager since 2026-11-23T14:00:00+00:00"
    assert _line(finding | {"resolved_reason": reason}).endswith(f"\n    {reason}")


def test_a_new_startsat_in_alertmanager_keeps_the_finding_until_the_agent_has_the_newer_alert(
    store_target: str | Path,
) -> None:
    """After a Prometheus restart Alertmanager holds the same alert under a new startsAt and need
    not notify it again: the condition still fires, so the agent's older row stays firing. Once
    the agent stores the newer row, the older one is superseded and resolves after the stale time."""
    from agent_webhook.payload import parse_payload

    old, new = "2026-11-22T23:41:07.512Z", "2026-11-23T01:02:03.000Z"
    (old_alert,) = parse_payload(json.dumps(make_payload([make_alert("bbbb", starts_at=old)])).encode())
    (new_alert,) = parse_payload(json.dumps(make_payload([make_alert("bbbb", starts_at=new)])).encode())
    in_alertmanager = {("bbbb", canonical_time(new, "startsAt"))}
    store = Store(store_target)
    store.open()
    store.ingest([old_alert])
    for _ in range(3):
        assert store.reconcile(in_alertmanager, stale_after=1e-9) == []
    assert store.conn.execute("SELECT COUNT(*) FROM alert_absence").fetchone()[0] == 0

    store.ingest([new_alert])
    assert store.reconcile(in_alertmanager, stale_after=1e-9) == []  # the old row: first absence
    (resolved,) = store.reconcile(in_alertmanager, stale_after=1e-9)
    firing = store.conn.execute("SELECT starts_at_key FROM alerts WHERE status='firing'").fetchall()
    assert [row[0] for row in firing] == [canonical_time(new, "startsAt")]
    assert resolved[2].startswith("no longer active in Alertmanager since ")
    store.close()
