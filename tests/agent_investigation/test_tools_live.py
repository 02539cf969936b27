"""Evidence tools against a real Prometheus scraping simulated exporter series."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp import web

from agent_webhook.investigation import Investigation, InvestigationConfig
from agent_webhook.investigation.prometheus import PrometheusAPI, UnavailableSource
from agent_webhook.investigation.safety import URLAllowlist
from agent_webhook.investigation.tools import ToolBox
from agent_webhook.model import Alert
from tests.agent_investigation.conftest import LiveCluster
from tests.fakes.exposition_server import ExpositionServer
from tests.fakes.threaded_server import ThreadedServer
from tests.harness.processes import free_port

pytestmark = pytest.mark.slow


def _alert(**labels: str) -> Alert:
    return Alert(fingerprint="t", status="firing", labels=labels, annotations={}, starts_at="", ends_at=None)


def _toolbox(live: LiveCluster, **overrides: object) -> ToolBox:
    cfg = live.config(**overrides)
    assert cfg.prometheus_url
    source = PrometheusAPI(
        cfg.prometheus_url,
        URLAllowlist([cfg.prometheus_url]),
        timeout_seconds=cfg.tool_timeout_seconds,
        max_series=cfg.max_series,
        max_points=cfg.max_points,
    )
    return ToolBox(cfg, source)


async def test_instant_query_caps_series(live_cluster: LiveCluster) -> None:
    box = _toolbox(live_cluster, max_series=50)
    out = await box.call("prometheus_query", {"query": "test_many_series"})
    assert out.ok
    assert len(out.data.series) == 50 and out.data.dropped_series == 70
    assert "70 more series not shown" in out.text
    await box.source.close()


async def test_range_query_points_are_bounded(live_cluster: LiveCluster) -> None:
    box = _toolbox(live_cluster, max_points=100)
    out = await box.call("prometheus_range_query", {"query": "vector(1)", "range_seconds": 3600, "step_seconds": 1})
    assert out.ok
    points = len(out.data.series[0].values)
    assert 50 < points <= 100
    await box.source.close()


async def test_output_is_capped(live_cluster: LiveCluster) -> None:
    box = _toolbox(live_cluster, tool_output_chars=500)
    out = await box.call("prometheus_query", {"query": "test_long_label"})
    assert len(out.text) < 600 and "truncated" in out.text
    assert box.evidence[-1].excerpt == out.text
    await box.source.close()


async def test_gpu_and_slurm_tools(live_cluster: LiveCluster) -> None:
    box = _toolbox(live_cluster)
    gpu = await box.call("gpu_detail", {"node": "gpu-e01", "gpu": "3"})
    assert 'nvidia_gpu_up{gpu="3"' in gpu.text and gpu.text.count("nvidia_gpu_up") == 1
    counters = await box.call("gpu_error_counters", {"node": "gpu-e02", "gpu": "1", "window_minutes": 30})
    assert 'xid="48"} increase=1' in counters.text
    node = await box.call("slurm_node", {"node": "gpu-e07"})
    assert node.data["states"] == ["drained"] and node.data["reason"] == "Kill task failed"
    job = await box.call("slurm_job", {"job_id": "81234"})
    assert job.data[0]["node"] == "gpu-e12"
    cluster = await box.call("slurm_cluster", {})
    assert cluster.ok
    await box.source.close()


async def test_invalid_arguments_never_reach_prometheus(live_cluster: LiveCluster) -> None:
    box = _toolbox(live_cluster)
    out = await box.call("gpu_detail", {"node": 'gpu-e01"} or vector(1) or {x="'})
    assert not out.ok and "does not match" in out.text
    out = await box.call("prometheus_query", {"query": "up", "url": "http://evil.example/"})
    assert not out.ok and "unexpected property 'url'" in out.text
    out = await box.call("prometheus_query", {"query": "sum(("})
    assert not out.ok and out.text.startswith("query error:")
    assert not box.unavailable  # a bad query is the caller's fault, not a dead Prometheus
    await box.source.close()


async def test_investigate_uses_the_alert_expression(live_cluster: LiveCluster) -> None:
    alert = Alert(
        fingerprint="t",
        status="firing",
        labels={"alertname": "GPUFellOffBus", "node": "gpu-e01", "gpu": "3"},
        annotations={},
        starts_at="",
        ends_at=None,
        generator_url="http://prometheus.example/graph?g0.expr=nvidia_gpu_up+%3D%3D+0&g0.tab=1",
    )
    investigation = Investigation(live_cluster.config())
    dx = await investigation.investigate(alert)
    await investigation.close()
    first = dx.evidence[0]
    assert first.tool == "alert_expression" and "nvidia_gpu_up == 0" in first.excerpt and first.ok
    assert dx.triage_rule == "xid:79" and dx.degraded == []
    # generatorURL's host is never contacted: only the configured Prometheus.
    assert all("prometheus.example" not in e.excerpt.split("expr:")[0] for e in dx.evidence)


async def test_unreachable_prometheus_degrades_to_label_triage() -> None:
    cfg = InvestigationConfig.from_mapping({"prometheus_url": f"http://127.0.0.1:{free_port()}"})
    investigation = Investigation(cfg)
    dx = await investigation.investigate(_alert(alertname="GPUXidError", node="gpu-9", gpu="0", xid="79"))
    await investigation.close()
    assert dx.triage_rule == "xid:79" and dx.severity == "critical"
    assert any(d.startswith("prometheus unavailable") for d in dx.degraded)
    assert all(not e.ok for e in dx.evidence)


async def test_hanging_prometheus_hits_the_tool_timeout() -> None:
    async def hang(request: web.Request) -> web.Response:
        await asyncio.sleep(30)
        return web.Response(text="{}")

    app = web.Application()
    app.router.add_get("/api/v1/query", hang)
    with ThreadedServer(app) as server:
        cfg = InvestigationConfig.from_mapping({"prometheus_url": server.base_url, "tool_timeout_seconds": 0.3})
        investigation = Investigation(cfg)
        started = time.monotonic()
        dx = await investigation.investigate(_alert(alertname="SlurmNodeDrained", node="gpu-3", reason="XID 48"))
        await investigation.close()
    assert time.monotonic() - started < 5
    assert dx.triage_rule == "drain-reason:xid-in-reason/xid:48"
    assert dx.degraded and "unavailable" in dx.degraded[0]


async def test_metric_series_and_redaction(live_cluster: LiveCluster) -> None:
    box = _toolbox(live_cluster)
    out = await box.call("metric_series", {"metric": "slurm_node_reason_info", "node": "gpu-e07"})
    assert out.ok and "Kill task failed" in out.text and "gpu-e08" not in out.text
    out = await box.call("metric_series", {"metric": "up or vector(1)"})
    assert not out.ok and "does not match" in out.text
    out = await box.call("metric_series", {"metric": "test_secret_info"})
    assert out.ok and "hunter2" not in out.text and "admin:<redacted>@db" in out.text
    assert all("hunter2" not in e.excerpt for e in box.evidence)
    await box.source.close()


async def test_prometheus_dying_mid_service(prometheus_factory: Any) -> None:
    series = [
        ({"__name__": "slurm_node_state", "node": "gpu-x1", "state": "drained"}, [1.0]),
        ({"__name__": "slurm_node_reason_info", "node": "gpu-x1", "state": "drained", "reason": "NHC: bad fan"}, [1.0]),
        ({"__name__": "slurm_jobs_pending", "partition": "gpu", "reason": "Resources"}, [12.0]),
    ]
    with ExpositionServer(series) as exporter:
        prom = prometheus_factory(scrape_targets={"slurm": [exporter.target]})
        prom.wait_for('slurm_node_reason_info{node="gpu-x1"}')
        investigation = Investigation(InvestigationConfig.from_mapping({"prometheus_url": prom.url}))
        alert = _alert(alertname="SlurmNodeDrained", node="gpu-x1")
        before = await investigation.investigate(alert)
        queue = await investigation.ask("why do GPU jobs wait so long in the queue?")
        prom.process.stop()
        after = await investigation.investigate(alert)
    assert before.triage_rule == "drain-reason:nhc" and before.degraded == []
    assert queue.triage_rule == "alert:SlurmGPUQueueBacklog" and "12 jobs pending" in queue.likely_cause
    assert after.triage_rule == "alert:SlurmNodeDrained" and after.severity == "warning"
    assert any(d.startswith("prometheus unavailable") for d in after.degraded)


async def test_active_alerts_from_a_real_alertmanager(alertmanager_factory: Any) -> None:
    am = alertmanager_factory({"route": {"receiver": "null"}, "receivers": [{"name": "null"}]})
    am.post_alerts(
        [
            {
                "labels": {
                    "alertname": "GPUXidError",
                    "node": "gpu-a1",
                    "gpu": "0",
                    "xid": "79",
                    "severity": "critical",
                },
                "annotations": {"summary": "XID 79 on gpu-a1"},
            },
            {"labels": {"alertname": "SlurmNodeDown", "node": "gpu-a2", "severity": "critical"}},
        ]
    )
    cfg = InvestigationConfig.from_mapping({"alertmanager_url": am.url})
    box = ToolBox(cfg, UnavailableSource())
    assert "active_alerts" in box.names
    out = await box.call("active_alerts", {"node": "gpu-a1"})
    await box.close()
    assert out.ok and "GPUXidError node=gpu-a1" in out.text and "gpu-a2" not in out.text
    everything = ToolBox(cfg, UnavailableSource())
    out = await everything.call("active_alerts", {})
    await everything.close()
    assert "SlurmNodeDown node=gpu-a2" in out.text
