"""Output hygiene of the sinks (issue #18 section 3): permanent refusals are dead-lettered, not
retried forever; Slack gets alert and model text escaped."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from agent_webhook.config import AgentConfig
from agent_webhook.model import Alert, Diagnosis
from tests.agent.conftest import (
    FakeHTTP,
    Recorded,
    ScriptedInvestigator,
    ServiceThread,
    make_alert,
    make_payload,
    post_alerts,
)
from tests.harness.processes import http_get, wait_until

StartService = Callable[..., ServiceThread]
FakeFactory = Callable[..., FakeHTTP]
FAST_RETRY = {"initial_seconds": 0.05, "max_seconds": 0.2}


def metrics(svc: ServiceThread) -> str:
    return http_get(f"{svc.url}/metrics")[1].decode()


def test_permanent_4xx_is_dead_lettered_not_retried(
    agent_config: Callable[..., AgentConfig],
    start_service: StartService,
    fake_http: FakeFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = fake_http(lambda r: web.json_response({"error": "unknown field 'finding'"}, status=422))
    svc = start_service(agent_config(sinks=[{"type": "webhook", "url": f"{fake.url}/hook"}], sink_retry=FAST_RETRY))
    with caplog.at_level(logging.ERROR, logger="agent_webhook.delivery"):
        post_alerts(svc.url, make_payload([make_alert(f"fp{i}") for i in range(3)]))
        wait_until(
            lambda: 'agent_webhook_sink_dead_letters_total{reason="http_422",sink="webhook"} 3.0' in metrics(svc),
            15,
            what="three dead letters",
        )
        time.sleep(1.0)  # several retry periods: nothing more may be sent
    assert len(fake.requests) == 3
    assert 'agent_webhook_sink_pending{sink="webhook"} 0.0' in metrics(svc)
    lines = [r for r in caplog.records if "dead-lettered" in r.getMessage()]
    assert len(lines) == 3 and all(getattr(r, "reason", "") == "http_422" for r in lines)
    assert "unknown field" in getattr(lines[0], "error", "")
    store = svc.service.store
    rows = svc.call(store.run(lambda: store.conn.execute("SELECT state, last_error FROM outbox").fetchall()))
    assert {r[0] for r in rows} == {"done"}
    assert all(str(r[1]).startswith("dead-lettered: POST") and "422" in r[1] for r in rows)


def test_rate_limits_and_slack_ratelimited_are_still_retried(
    agent_config: Callable[..., AgentConfig], start_service: StartService, fake_http: FakeFactory
) -> None:
    answers = iter([web.json_response({}, status=429), web.json_response({"ok": False, "error": "ratelimited"})])

    def slack(r: Recorded) -> web.Response:
        return next(answers, None) or web.json_response({"ok": True, "ts": "1.2"})

    fake = fake_http(slack)
    svc = start_service(agent_config(sinks=[{"type": "slack", "url": fake.url}], sink_retry=FAST_RETRY))
    post_alerts(svc.url, make_payload([make_alert("fp")]))
    wait_until(lambda: 'agent_webhook_sink_posts_total{sink="slack"} 1.0' in metrics(svc), 10, what="delivered")
    assert len(fake.requests) == 3 and "agent_webhook_sink_dead_letters_total{" not in metrics(svc)


def test_slack_permanent_error_is_dead_lettered(
    agent_config: Callable[..., AgentConfig], start_service: StartService, fake_http: FakeFactory
) -> None:
    fake = fake_http(lambda r: web.json_response({"ok": False, "error": "channel_not_found"}))
    svc = start_service(agent_config(sinks=[{"type": "slack", "url": fake.url}], sink_retry=FAST_RETRY))
    post_alerts(svc.url, make_payload([make_alert("fp")]))
    wait_until(
        lambda: (
            'agent_webhook_sink_dead_letters_total{reason="slack_channel_not_found",sink="slack"} 1.0' in metrics(svc)
        ),
        10,
        what="the dead letter",
    )
    time.sleep(0.5)
    assert len(fake.requests) == 1


class _HostileInvestigator(ScriptedInvestigator):
    """A model that echoes Slack control sequences (as a fooled or careless one would)."""

    async def investigate(self, alert: Alert) -> Diagnosis:
        dx = await super().investigate(alert)
        dx.diagnosis_markdown = "Paging <!channel> & <!here>: see <http://evil.example/x|the runbook> <@U024BE7LH>"
        dx.summary = alert.annotations["summary"]
        return dx


def test_slack_text_from_alerts_and_the_model_is_escaped(
    agent_config: Callable[..., AgentConfig], start_service: StartService, fake_http: FakeFactory
) -> None:
    fake = fake_http(lambda r: web.json_response({"ok": True, "ts": "1.1"}))
    svc = start_service(
        agent_config(sinks=[{"type": "slack", "url": fake.url}], public_url="http://agent.example:9095"),
        _HostileInvestigator(),
    )
    alert: dict[str, Any] = make_alert("fp", alertname="GPUXidError")
    alert["annotations"]["summary"] = "XID <!channel> <http://x|runbook> on gpu-worker-1"
    post_alerts(svc.url, make_payload([alert]))
    text = fake.wait_for(1)[0].json()["text"]
    for raw in ("<!channel>", "<!here>", "<http://x|runbook>", "<http://evil.example/x|the runbook>", "<@U024"):
        assert raw not in text, raw
    assert "&lt;!channel&gt;" in text and "&lt;http://x|runbook&gt;" in text and " &amp; " in text
    assert "\nhttp://agent.example:9095/findings/f-" in text  # the agent's own link stays a link
