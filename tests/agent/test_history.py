"""History as evidence: the agent's earlier findings of a GPU (by UUID and serial) and node, read
from the real store through the real service, and a recurrence changing the recommendation."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from agent_webhook.config import AgentConfig
from agent_webhook.investigation import Investigation, InvestigationConfig
from agent_webhook.investigation.history import HistoryQuery
from agent_webhook.investigation.prometheus import RecordedPrometheus, parse_series_line
from agent_webhook.model import Alert
from tests.agent.conftest import ServiceThread, make_alert, make_payload, post_alerts

StartService = Callable[..., ServiceThread]

# Shapes of what the GPU exporter reports for node gpu-h1: GPU 2 lost, GPU 5 fine.
SERIES = [
    (parse_series_line(line), values)
    for line, values in [
        ('nvidia_gpu_up{node="gpu-h1",gpu="2",uuid="GPU-h1-2"}', [1.0, 0.0]),
        ('nvidia_gpu_info{node="gpu-h1",gpu="2",uuid="GPU-h1-2",serial="1650000000002"}', [1.0, 1.0]),
        ('nvidia_gpu_up{node="gpu-h1",gpu="5",uuid="GPU-h1-5"}', [1.0, 1.0]),
        ('nvidia_gpu_info{node="gpu-h1",gpu="5",uuid="GPU-h1-5",serial="1650000000005"}', [1.0, 1.0]),
    ]
]


def _iso(seconds_ago: float) -> str:
    return datetime.fromtimestamp(time.time() - seconds_ago, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _finding(svc: ServiceThread, fingerprint: str) -> dict[str, Any]:
    (found,) = [f for f in svc.findings() if fingerprint in f["fingerprints"]]
    return found


def test_a_second_xid79_on_one_gpu_within_30_days_says_rma(
    agent_config: Callable[..., AgentConfig], start_service: StartService
) -> None:
    investigator = Investigation(InvestigationConfig.from_mapping({}), source=RecordedPrometheus(SERIES))
    # The first alert is days old but posted a moment before the others: without incidents
    # (window 0) they are not one incident, as they would not be three days apart.
    svc = start_service(agent_config(incident_window_seconds=0), investigator)
    day = 86400.0
    post_alerts(svc.url, make_payload([make_alert("first", node="gpu-h1", gpu="2", xid="79", starts_at=_iso(3 * day))]))
    svc.wait_idle()
    first = _finding(svc, "first")
    assert first["triage_rule"] == "xid:79"
    assert (first["gpu_uuid"], first["gpu_serial"]) == ("GPU-h1-2", "1650000000002")

    post_alerts(
        svc.url,
        make_payload(
            [
                make_alert("again", node="gpu-h1", gpu="2", xid="79", starts_at=_iso(60)),
                make_alert("other-gpu", node="gpu-h1", gpu="5", xid="79", starts_at=_iso(60)),
            ]
        ),
    )
    svc.wait_idle()
    again = _finding(svc, "again")
    assert again["triage_rule"] == "recurrence:xid:79", again["diagnosis"]
    assert again["severity"] == "critical"
    assert any("RMA" in a for a in again["recommended_actions"])
    assert first["id"] in again["likely_cause"]
    (history,) = [e for e in again["evidence"] if e["tool"] == "gpu_history"]
    assert history["ok"] and first["id"] in history["excerpt"] and "1650000000002" in history["excerpt"]

    # Another GPU of the same node: the node's history, not a recurrence of this GPU.
    other = _finding(svc, "other-gpu")
    assert other["triage_rule"] == "xid:79"
    assert other["gpu_uuid"] == "GPU-h1-5"
    (history,) = [e for e in other["evidence"] if e["tool"] == "gpu_history"]
    assert "of this GPU (0)" in history["excerpt"] and first["id"] in history["excerpt"]


async def test_a_history_that_cannot_be_read_degrades_and_the_triage_stands() -> None:
    async def broken(query: HistoryQuery) -> list[dict[str, Any]]:
        raise OSError("database is locked")

    investigation = Investigation(
        InvestigationConfig.from_mapping({}), source=RecordedPrometheus(SERIES), history=broken
    )
    alert = Alert(
        fingerprint="x",
        status="firing",
        labels={"alertname": "GPUXidError", "node": "gpu-h1", "gpu": "2", "xid": "79"},
        annotations={},
        starts_at=_iso(0),
        ends_at=None,
    )
    dx = await investigation.investigate(alert)
    assert dx.triage_rule == "xid:79"
    assert any(d.startswith("history unavailable: OSError") for d in dx.degraded), dx.degraded
