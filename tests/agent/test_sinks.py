"""Sinks over real HTTP to fake Slack, Grafana and webhook servers on loopback."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from agent_webhook.config import AgentConfig
from tests.agent.conftest import (
    FakeHTTP,
    Recorded,
    ScriptedInvestigator,
    ServiceThread,
    make_alert,
    make_payload,
    post_alerts,
    sample,
)
from tests.harness.processes import free_port, http_get, wait_until

StartService = Callable[..., ServiceThread]
FakeFactory = Callable[..., FakeHTTP]
FAST_RETRY = {"initial_seconds": 0.05, "max_seconds": 0.2}


def _secret_file(tmp_path: Path, name: str, value: str) -> str:
    path = tmp_path / name
    path.write_text(value)
    path.chmod(0o600)
    return str(path)


def test_slack_threads_the_resolve_when_a_ts_comes_back(
    tmp_path: Path, agent_config: Callable[..., AgentConfig], start_service: StartService, fake_http: FakeFactory
) -> None:
    def slack(r: Recorded) -> web.Response:  # chat.postMessage-style answers
        return web.json_response({"ok": True, "channel": "C1", "ts": f"1700000000.{len(fake.requests):06d}"})

    fake = fake_http(slack)
    token = _secret_file(tmp_path, "slack-token", "xoxb-123456789-abcdefghijklmnop")
    svc = start_service(
        agent_config(
            sinks=[
                {"type": "slack", "url": f"{fake.url}/api/chat.postMessage", "token_file": token, "channel": "#gpu"}
            ],
            public_url="http://agent.example:9095",
        )
    )
    post_alerts(svc.url, sample("firing.json"))
    first = fake.wait_for(1)[0]
    assert first.headers["Authorization"] == "Bearer xoxb-123456789-abcdefghijklmnop"
    body = first.json()
    assert body["channel"] == "#gpu" and "thread_ts" not in body
    assert body["text"].startswith("[FIRING] critical GPUXidError on gpu-worker-1 GPU 3")
    assert "drain the node" in body["text"] and "http://agent.example:9095/findings/f-" in body["text"]
    post_alerts(svc.url, sample("resolved.json"))
    resolve = fake.wait_for(2)[1].json()
    assert resolve["thread_ts"] == "1700000000.000001"
    assert resolve["text"].startswith("[RESOLVED]")


def test_slack_incoming_webhook_posts_the_resolve_as_an_update(
    agent_config: Callable[..., AgentConfig], start_service: StartService, fake_http: FakeFactory
) -> None:
    fake = fake_http(lambda r: web.Response(text="ok"))
    svc = start_service(agent_config(sinks=[{"type": "slack", "url": f"{fake.url}/services/T0/B0/X"}]))
    post_alerts(svc.url, sample("firing.json"))
    fake.wait_for(1)
    post_alerts(svc.url, sample("resolved.json"))
    _first, second = (r.json() for r in fake.wait_for(2))
    assert "thread_ts" not in second
    finding_id = svc.findings()[0]["id"]
    assert second["text"].startswith("[RESOLVED]") and finding_id in second["text"]
    assert "Authorization" not in fake.requests[0].headers


def test_slack_ok_false_is_a_failure_and_retried(
    agent_config: Callable[..., AgentConfig], start_service: StartService, fake_http: FakeFactory
) -> None:
    answers = iter([{"ok": False, "error": "ratelimited"}])

    def slack(r: Recorded) -> web.Response:
        return web.json_response(next(answers, {"ok": True, "ts": "1.2"}))

    fake = fake_http(slack)
    svc = start_service(agent_config(sinks=[{"type": "slack", "url": fake.url}], sink_retry=FAST_RETRY))
    post_alerts(svc.url, sample("firing.json"))
    fake.wait_for(2)
    wait_until(
        lambda: 'agent_webhook_sink_posts_total{sink="slack"} 1.0' in http_get(f"{svc.url}/metrics")[1].decode(),
        10,
        what="delivery recorded",
    )
    assert 'agent_webhook_sink_failures_total{sink="slack"} 1.0' in http_get(f"{svc.url}/metrics")[1].decode()


def test_grafana_annotation_then_patch_on_resolve(
    tmp_path: Path, agent_config: Callable[..., AgentConfig], start_service: StartService, fake_http: FakeFactory
) -> None:
    def grafana(r: Recorded) -> web.Response:
        if r.method == "POST":
            return web.json_response({"message": "Annotation added", "id": 42})
        return web.json_response({"message": "Annotation patched"})

    fake = fake_http(grafana)
    token = _secret_file(tmp_path, "grafana-token", "glsa_abcdefghijklmnopqrstuvwxyz_0123")
    svc = start_service(
        agent_config(
            sinks=[
                {
                    "type": "grafana",
                    "url": fake.url,
                    "token_file": token,
                    "dashboard_uid": "gpu-fleet",
                    "tags": ["prod"],
                }
            ]
        )
    )
    post_alerts(svc.url, sample("firing.json"))
    created = fake.wait_for(1)[0]
    assert (created.method, created.path) == ("POST", "/api/annotations")
    assert created.headers["Authorization"] == "Bearer glsa_abcdefghijklmnopqrstuvwxyz_0123"
    body = created.json()
    assert body["tags"] == ["gpu-watchdog", "GPUXidError", "gpu-worker-1", "prod"]
    assert body["dashboardUID"] == "gpu-fleet"
    assert body["time"] == 1795390867512  # the alert's startsAt, in ms
    assert "timeEnd" not in body
    post_alerts(svc.url, sample("resolved.json"))
    patch = fake.wait_for(2)[1]
    assert (patch.method, patch.path) == ("PATCH", "/api/annotations/42")
    assert patch.json()["timeEnd"] > body["time"]
    assert "resolved" in patch.json()["tags"]


def test_webhook_sink_failing_then_recovering_loses_nothing(
    agent_config: Callable[..., AgentConfig], start_service: StartService, fake_http: FakeFactory
) -> None:
    healthy = {"now": False}

    def hook(r: Recorded) -> web.Response:
        return web.json_response({}) if healthy["now"] else web.Response(status=503, text="down for maintenance")

    fake = fake_http(hook)
    svc = start_service(agent_config(sinks=[{"type": "webhook", "url": f"{fake.url}/hook"}], sink_retry=FAST_RETRY))
    post_alerts(svc.url, make_payload([make_alert(f"fp{i}") for i in range(5)]))
    fake.wait_for(12)  # several failed rounds, with backoff between them
    metrics = http_get(f"{svc.url}/metrics")[1].decode()
    assert 'agent_webhook_sink_pending{sink="webhook"} 5.0' in metrics
    healthy["now"] = True
    wait_until(
        lambda: 'agent_webhook_sink_pending{sink="webhook"} 0.0' in http_get(f"{svc.url}/metrics")[1].decode(),
        15,
        what="the outbox to drain",
    )
    delivered = [r.json() for r in fake.requests if r.json() and r.json().get("event")]
    ok_ids = {d["finding"]["id"] for d in delivered[-5:]}
    assert ok_ids == {f["id"] for f in svc.findings()}
    failures = [r for r in fake.requests[:-5]]
    assert len(failures) >= 10
    # Backoff: successive retries of one event are spaced further and further apart.
    first_id = fake.requests[0].json()["finding"]["id"]
    times = [r.at for r in fake.requests[:-5] if r.json()["finding"]["id"] == first_id]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps and gaps[-1] >= gaps[0]


def test_secrets_are_redacted_before_posting(
    agent_config: Callable[..., AgentConfig], start_service: StartService, fake_http: FakeFactory
) -> None:
    fake = fake_http()
    svc = start_service(agent_config(sinks=[{"type": "webhook", "url": fake.url}]), _LeakyInvestigator())
    alert = make_alert("leak", api_token="hunter2hunter2")
    post_alerts(svc.url, make_payload([alert]))
    posted = fake.wait_for(1)[0].body.decode()
    for secret in ("hunter2hunter2", "sk-abcdefghijklmnopqrstuvwx", "s3cretpass", "Bearer abcdefghijkl"):
        assert secret not in posted, secret
    stored = json.dumps(svc.findings())
    assert "sk-abcdefghijklmnopqrstuvwx" not in stored and "s3cretpass" not in stored


class _LeakyInvestigator(ScriptedInvestigator):
    async def investigate(self, alert: Any) -> Any:
        diagnosis = await super().investigate(alert)
        diagnosis.diagnosis_markdown = (
            "found key sk-abcdefghijklmnopqrstuvwx in env; curl http://admin:s3cretpass@10.0.0.1/ "
            "with Authorization: Bearer abcdefghijkl"
        )
        return diagnosis


def test_stdout_sink_prints_json_lines(tmp_path: Path, token_file: Path) -> None:
    """The real console script: findings as JSON lines on stdout, logs on stderr."""
    config = tmp_path / "agent.yml"
    config.write_text(f"sinks:\n  - type: stdout\ntoken_file: {token_file}\n")
    port = free_port()
    stdout_path = tmp_path / "stdout.jsonl"
    with open(stdout_path, "wb") as out:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "agent-webhook"),
                "--config",
                str(config),
                "--db",
                str(tmp_path / "a.db"),
                "--listen",
                f"127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until(lambda: http_get(f"{url}/healthz")[0] == 200, 30, what="agent-webhook")
            assert post_alerts(url, sample("firing.json")).status == 202
            wait_until(lambda: stdout_path.read_text().strip(), 15, what="a stdout line")
        finally:
            proc.terminate()
            proc.wait(10)
    line = json.loads(stdout_path.read_text().splitlines()[0])
    assert line["event"] == "new" and line["finding"]["alertname"] == "GPUXidError"


def test_resolve_waits_for_the_first_post_while_the_sink_is_down(
    agent_config: Callable[..., AgentConfig], start_service: StartService, fake_http: FakeFactory
) -> None:
    """Grafana down when the alert fires and resolves: once back, POST first, then PATCH that id."""
    state = {"up": False}

    def grafana(r: Recorded) -> web.Response:
        if not state["up"]:
            return web.Response(status=502, text="bad gateway")
        return web.json_response({"id": 7} if r.method == "POST" else {"message": "ok"})

    fake = fake_http(grafana)
    svc = start_service(agent_config(sinks=[{"type": "grafana", "url": fake.url}], sink_retry=FAST_RETRY))
    post_alerts(svc.url, sample("firing.json"))
    fake.wait_for(2)
    post_alerts(svc.url, sample("resolved.json"))
    fake.wait_for(4)
    state["up"] = True
    wait_until(
        lambda: any(r.method == "PATCH" and r.path == "/api/annotations/7" for r in fake.requests), 15, what="the PATCH"
    )
    methods = [r.method for r in fake.requests]
    first_patch = methods.index("PATCH")
    assert set(methods[:first_patch]) == {"POST"}  # while down, only the first post was retried
    assert methods.count("PATCH") == 1
