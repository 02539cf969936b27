"""A real Alertmanager routing to the service: one alert, many notifications, exactly one finding."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent_webhook.config import AgentConfig
from tests.agent.conftest import ServiceThread
from tests.harness.processes import http_get, wait_until
from tests.harness.promstack import AlertmanagerServer

pytestmark = pytest.mark.slow


def _rfc3339(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _notifications(svc: ServiceThread) -> float:
    for line in http_get(f"{svc.url}/metrics")[1].decode().splitlines():
        if line.startswith('agent_webhook_notifications_total{code="202"}'):
            return float(line.split()[-1])
    return 0.0


def test_alertmanager_ha_pair_resends_make_exactly_one_finding_then_resolve(
    agent_config: Callable[..., AgentConfig],
    start_service: Callable[..., ServiceThread],
    alertmanager_factory: Callable[..., AlertmanagerServer],
    token_file: Path,
) -> None:
    svc = start_service(agent_config())
    config = {
        "route": {
            "receiver": "gpu-watchdog",
            "group_by": ["alertname", "node"],
            "group_wait": "0s",
            "group_interval": "1s",
            "repeat_interval": "1s",
        },
        "receivers": [
            {
                "name": "gpu-watchdog",
                "webhook_configs": [
                    {
                        "url": f"{svc.url}/alerts",
                        "send_resolved": True,
                        "http_config": {"authorization": {"type": "Bearer", "credentials_file": str(token_file)}},
                    }
                ],
            }
        ],
    }
    # Two Alertmanagers that cannot gossip: an HA pair during a partition, each notifying on its own.
    am, peer = alertmanager_factory(config), alertmanager_factory(config)
    started = datetime.now(UTC) - timedelta(seconds=5)
    alert: dict[str, Any] = {
        "labels": {"alertname": "GPUXidError", "node": "gpu-worker-1", "gpu": "3", "xid": "79", "severity": "critical"},
        "annotations": {"summary": "GPU 3 on gpu-worker-1 reported XID 79"},
        "startsAt": _rfc3339(started),
        "generatorURL": "http://prometheus.example:9090/graph?g0.expr=up",
    }
    # Prometheus sends to every Alertmanager and re-sends firing alerts every resend-delay;
    # each Alertmanager re-notifies the group every repeat_interval.
    deadline = time.monotonic() + 30
    while _notifications(svc) < 6 and time.monotonic() < deadline:
        am.post_alerts([alert])
        peer.post_alerts([alert])
        time.sleep(0.5)
    assert _notifications(svc) >= 6, "the Alertmanagers did not re-send the group"
    svc.wait_idle()
    findings = svc.findings()
    assert len(findings) == 1
    (finding,) = findings
    assert (finding["alertname"], finding["node"], finding["gpu"], finding["status"]) == (
        "GPUXidError",
        "gpu-worker-1",
        "3",
        "firing",
    )
    assert finding["fingerprints"] == [am.alerts()[0]["fingerprint"]]
    assert len(svc.investigator.calls) == 1  # type: ignore[attr-defined]
    metrics = http_get(f"{svc.url}/metrics")[1].decode()
    assert "agent_webhook_alerts_deduplicated_total 0.0" not in metrics

    # Resolve it at Alertmanager: the resolved notification updates the same finding.
    resolved = {**alert, "endsAt": _rfc3339(datetime.now(UTC))}
    am.post_alerts([resolved])
    peer.post_alerts([resolved])
    wait_until(lambda: svc.findings()[0]["status"] == "resolved", 30, what="the finding to resolve")
    assert [f["id"] for f in svc.findings()] == [finding["id"]]
    assert len(svc.investigator.calls) == 1  # type: ignore[attr-defined]
