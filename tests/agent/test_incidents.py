"""Incidents and acknowledgement against a real Alertmanager, the real investigation and a scripted LLM.

A node losing its 8 GPUs is one incident: one LLM run (counted at the OpenAI-compatible fake),
one top-level Slack post and the other alerts threaded under it; a second node failing at the
same time is a second incident; a new kind of alert joining re-runs the LLM once. `gpu-watchdog
ack` silences the incident's alerts in Alertmanager (visible in its API, the alerts suppressed),
records who and which silence on the findings and posts into the thread; `unack` expires them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from aiohttp import web
from click.testing import CliRunner

from agent_webhook.config import AgentConfig
from agent_webhook.watchdog_cli import main as cli
from agent_webhook.wiring import make_investigator
from tests.agent.conftest import TOKEN, FakeHTTP, Recorded, ServiceThread, get_json, request
from tests.fakes.openai_server import FakeOpenAIServer, text
from tests.harness.processes import free_port, wait_until
from tests.harness.promstack import AlertmanagerServer, _api_get

pytestmark = pytest.mark.slow

ANSWER = json.dumps(
    {
        "severity": "critical",
        "summary": "node lost its GPUs",
        "likely_cause": "the node's PCIe/power failed: all GPUs fell off the bus",
        "diagnosis_markdown": "All GPUs of the node fell off the bus.",
        "recommended_actions": ["drain the node", "power-cycle it"],
    }
)


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _alert(alertname: str, node: str, gpu: str | None = None, ends: datetime | None = None) -> dict[str, Any]:
    labels = {"alertname": alertname, "node": node, "severity": "critical"}
    if gpu is not None:
        labels["gpu"] = gpu
    alert: dict[str, Any] = {
        "labels": labels,
        "annotations": {"summary": f"{alertname} on {node}" + (f" GPU {gpu}" if gpu else "")},
        "startsAt": _rfc3339(STARTED),
        "generatorURL": "http://prometheus.example:9090/graph?g0.expr=up",
    }
    if ends is not None:
        alert["endsAt"] = _rfc3339(ends)
    return alert


STARTED = datetime.now(UTC) - timedelta(seconds=30)


def _am_config(agent_url: str, token_file: Path) -> dict[str, Any]:
    return {
        "route": {
            "receiver": "gpu-watchdog",
            # One group for every node's GPUFellOffBus: the node, not the group, makes the incident.
            "group_by": ["alertname"],
            "group_wait": "0s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {
                "name": "gpu-watchdog",
                "webhook_configs": [
                    {
                        "url": f"{agent_url}/alerts",
                        "send_resolved": True,
                        "http_config": {"authorization": {"type": "Bearer", "credentials_file": str(token_file)}},
                    }
                ],
            }
        ],
    }


def _cli(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def _post(url: str, body: Any, token: str | None = TOKEN) -> Any:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return request(url, "POST", data, headers)


def test_one_incident_per_node_one_llm_run_one_post_then_ack_and_unack(
    agent_config: Callable[..., AgentConfig],
    alertmanager_factory: Callable[..., AlertmanagerServer],
    fake_http: Callable[..., FakeHTTP],
    token_file: Path,
    tmp_path: Path,
) -> None:
    def slack(r: Recorded) -> web.Response:  # chat.postMessage answers with the message's ts
        return web.json_response({"ok": True, "ts": f"1700000000.{len(slack_fake.requests):06d}"})

    slack_fake = fake_http(slack)
    am_port = free_port()
    with FakeOpenAIServer([text(ANSWER)]) as llm:
        config = agent_config(
            workers=4,
            alertmanager_url=f"http://127.0.0.1:{am_port}",
            reconcile_interval_seconds=0,
            llm={"base_url": llm.url, "model": "fake-model"},
            sinks=[{"type": "slack", "url": f"{slack_fake.url}/api/chat.postMessage", "channel": "#gpu"}],
        )
        svc = ServiceThread(config, make_investigator(config)).start()
        try:
            am = alertmanager_factory(_am_config(svc.url, token_file), port=am_port)
            _scenario(svc, am, llm, slack_fake, token_file)
        finally:
            svc.stop()


def _scenario(
    svc: ServiceThread, am: AlertmanagerServer, llm: FakeOpenAIServer, slack: FakeHTTP, token_file: Path
) -> None:
    # Node A loses all 8 GPUs while node B loses one: interleaved, as one Alertmanager group.
    node_a = [_alert("GPUFellOffBus", "node-a", str(g)) for g in range(8)]
    node_b = [_alert("GPUFellOffBus", "node-b", "0")]
    am.post_alerts(node_a[:4] + node_b + node_a[4:])
    wait_until(lambda: len(svc.findings()) == 9, 60, what="9 findings")
    svc.wait_idle()

    incidents = get_json(f"{svc.url}/incidents").json()["incidents"]
    assert len(incidents) == 2
    by_node = {i["node"]: i for i in incidents}
    inc_a, inc_b = by_node["node-a"], by_node["node-b"]
    assert len(inc_a["alerts"]) == 8 and len(inc_b["alerts"]) == 1
    assert inc_a["llm_runs"] == 1 and inc_b["llm_runs"] == 1
    assert len(llm.requests) == 2  # one LLM run per incident, counted at the server

    findings = svc.findings()
    of_a = [f for f in findings if f["node"] == "node-a"]
    assert {f["incident_id"] for f in of_a} == {inc_a["id"]}
    assert sorted(f["gpu"] for f in of_a) == [str(g) for g in range(8)]  # findings stay per alert
    leads = [f for f in of_a if f["derived_from"] is None]
    assert len(leads) == 1 and leads[0]["llm"]["used"]
    assert all(f["derived_from"] == leads[0]["id"] for f in of_a if f is not leads[0])

    # Slack: one top-level post per incident, every other event in its thread.
    posts = [r.json() for r in slack.wait_for(9)]
    top = [p for p in posts if "thread_ts" not in p]
    assert len(top) == 2, [p["text"][:80] for p in top]
    ts_of = {}
    for i, p in enumerate(posts):
        if "thread_ts" not in p:
            ts_of["node-a" if "node-a" in p["text"] else "node-b"] = f"1700000000.{i + 1:06d}"
    replies_a = [p for p in posts if p.get("thread_ts") == ts_of["node-a"]]
    assert len(replies_a) == 7 and all(p["text"].startswith("+ [FIRING]") for p in replies_a)
    assert all(inc_a["id"] in p["text"] for p in replies_a)

    # A new kind of alert joins incident A: investigated (the LLM runs once more), threaded.
    am.post_alerts([_alert("SlurmNodeNotResponding", "node-a")])
    wait_until(lambda: len(svc.findings()) == 10, 30, what="the new kind's finding")
    svc.wait_idle()
    assert len(llm.requests) == 3
    new_kind = next(f for f in svc.findings() if f["alertname"] == "SlurmNodeNotResponding")
    assert new_kind["incident_id"] == inc_a["id"] and new_kind["derived_from"] is None
    reply = slack.wait_for(10)[9].json()
    assert reply["thread_ts"] == ts_of["node-a"] and "New kind of alert" in reply["text"]

    base = ["--server", svc.url, "--token-file", str(token_file)]
    listing = _cli("incidents", *base)
    assert listing.exit_code == 0, listing.output
    assert inc_a["id"] in listing.output and inc_b["id"] in listing.output
    assert listing.output.count("GPUFellOffBus") >= 9

    # Acknowledge incident A: one silence per firing alert, visible in Alertmanager.
    acked = _cli("ack", inc_a["id"], "--comment", "replacing the node", "--for", "2h", "--by", "alice", *base)
    assert acked.exit_code == 0, acked.output
    silences = [s for s in _api_get(am.url, "/api/v2/silences") if s["status"]["state"] == "active"]
    assert len(silences) == 9
    assert {s["createdBy"] for s in silences} == {"alice"}
    assert all("replacing the node" in s["comment"] for s in silences)
    wait_until(
        lambda: all(
            a["status"]["state"] == "suppressed"
            for a in am.alerts(active_only=False)
            if a["labels"]["node"] == "node-a"
        ),
        15,
        what="node-a's alerts silenced",
    )
    assert all(a["status"]["state"] == "active" for a in am.alerts() if a["labels"]["node"] == "node-b")
    of_a = [f for f in svc.findings() if f["incident_id"] == inc_a["id"]]
    assert {f["acknowledged_by"] for f in of_a} == {"alice"}
    assert {f["silence_id"] for f in of_a} == {s["id"] for s in silences}
    assert all(f["acknowledged_at"] and f["ack_until"] for f in of_a)
    ack_post = slack.wait_for(11)[10].json()
    assert ack_post["thread_ts"] == ts_of["node-a"] and "Acknowledged by alice" in ack_post["text"]

    # Bad input is a 4xx with a reason.
    ack_url = f"{svc.url}/incidents/{inc_a['id']}/ack"
    again = _post(ack_url, {"comment": "x", "by": "bob"})
    assert again.status == 409 and "already acknowledged by alice" in again.json()["error"]
    assert _post(f"{svc.url}/findings/f-0000/ack", {"comment": "x", "by": "bob"}).status == 404
    assert _post(f"{svc.url}/incidents/{inc_b['id']}/ack", {"by": "bob"}).json()["error"].startswith("comment")
    bad_for = _post(f"{svc.url}/incidents/{inc_b['id']}/ack", {"comment": "x", "by": "bob", "for": "forever"})
    assert bad_for.status == 400 and "for:" in bad_for.json()["error"]
    assert _post(f"{svc.url}/incidents/{inc_b['id']}/ack", b"{nope").status == 400
    assert _post(f"{svc.url}/incidents/{inc_b['id']}/unack", {}).status == 409
    assert _post(ack_url, {"comment": "x", "by": "bob"}, token=None).status == 401
    unknown = _cli("ack", "x-123", "--comment", "c", *base)
    assert unknown.exit_code != 0 and "finding id" in unknown.output

    # Withdraw it: the silences expire in Alertmanager, the findings forget the ack.
    unacked = _cli("unack", inc_a["id"], "--by", "bob", *base)
    assert unacked.exit_code == 0, unacked.output
    states = {s["id"]: s["status"]["state"] for s in _api_get(am.url, "/api/v2/silences")}
    assert all(states[s["id"]] == "expired" for s in silences)
    assert all(f["acknowledged_by"] is None for f in svc.findings() if f["incident_id"] == inc_a["id"])
    unack_post = slack.wait_for(12)[11].json()
    assert unack_post["thread_ts"] == ts_of["node-a"] and "withdrawn by bob" in unack_post["text"]

    # Node B recovers: the resolve goes into its thread and the incident is resolved.
    am.post_alerts([_alert("GPUFellOffBus", "node-b", "0", ends=datetime.now(UTC))])
    wait_until(
        lambda: get_json(f"{svc.url}/incidents/{inc_b['id']}").json()["status"] == "resolved",
        30,
        what="incident B resolved",
    )
    resolve = slack.wait_for(13)[12].json()
    assert resolve["thread_ts"] == ts_of["node-b"] and "resolved: all 1 alert(s) resolved" in resolve["text"]
    assert len(llm.requests) == 3


def test_incidents_api_filters_paging_and_auth(
    agent_config: Callable[..., AgentConfig], start_service: Callable[..., ServiceThread]
) -> None:
    from tests.agent.conftest import make_alert, make_payload, post_alerts

    svc = start_service(agent_config())
    alerts = [make_alert(f"fp{n}{g}", node=f"n{n}", gpu=str(g)) for n in range(3) for g in range(2)]
    alerts.append(make_alert("fpx", node="n0", gpu="", alertname="SlurmNodeDown"))
    assert post_alerts(svc.url, make_payload(alerts)).status == 202
    svc.wait_idle()
    # The scripted investigator counts investigations: one per kind per incident.
    assert len(svc.investigator.calls) == 4  # type: ignore[attr-defined]

    def page(**q: str) -> Any:
        return get_json(f"{svc.url}/incidents?{urlencode(q)}")

    everything = page().json()["incidents"]
    assert [i["node"] for i in everything] == ["n2", "n1", "n0"]  # newest first
    first = page(limit="2").json()
    assert len(first["incidents"]) == 2 and first["next_cursor"]
    rest = page(limit="2", cursor=first["next_cursor"]).json()
    assert [i["node"] for i in rest["incidents"]] == ["n0"] and rest["next_cursor"] is None
    assert [i["node"] for i in page(node="n1").json()["incidents"]] == ["n1"]
    assert [i["node"] for i in page(alertname="SlurmNodeDown").json()["incidents"]] == ["n0"]
    assert page(status="resolved").json()["incidents"] == []
    assert len(page(since="1h").json()["incidents"]) == 3
    for bad in ({"limit": "0"}, {"status": "x"}, {"since": "yesterday"}, {"cursor": "zz"}):
        reply = page(**bad)
        assert reply.status == 400 and reply.json()["error"], bad
    assert get_json(f"{svc.url}/incidents", token=None).status == 401
    assert get_json(f"{svc.url}/incidents", token="wrong").status == 401
    assert get_json(f"{svc.url}/incidents/i-nope").status == 404
    one = get_json(f"{svc.url}/incidents/{everything[2]['id']}").json()
    assert one["alertnames"] == ["GPUXidError", "SlurmNodeDown"] and one["firing"] == 3
    # Ack without alertmanager_url configured: the agent says what is missing.
    no_am = _post(f"{svc.url}/incidents/{one['id']}/ack", {"comment": "c", "by": "me"})
    assert no_am.status == 503 and "alertmanager_url" in no_am.json()["error"]


def test_window_zero_keeps_one_incident_per_alert(
    agent_config: Callable[..., AgentConfig], start_service: Callable[..., ServiceThread]
) -> None:
    from tests.agent.conftest import make_alert, make_payload, post_alerts

    svc = start_service(agent_config(incident_window_seconds=0))
    post_alerts(svc.url, make_payload([make_alert(f"fp{g}", gpu=str(g)) for g in range(3)]))
    svc.wait_idle()
    assert len(get_json(f"{svc.url}/incidents").json()["incidents"]) == 3
    assert len(svc.investigator.calls) == 3  # type: ignore[attr-defined]
