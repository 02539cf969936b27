"""`ask` about a GPU, against a real Prometheus and Alertmanager (issue 10's newcomer questions).

Two nodes, each scraped as job "gpu" with its Slurm name as a target label, as deployed. GPU 3
of gpu-a1 carries 60 error counters (54 NVLink, 4 ECC, PCIe replays, an XID): more than the
50-series cap that once pushed the XID counter out of the answer. Its corrected-ECC counters
stand at 12 from the first scrape (history, not an increase); its XID 79 counter appears only
after Prometheus has scraped the exporter (a new XID).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from agent_webhook.investigation import Investigation, InvestigationConfig
from agent_webhook.investigation.prometheus import PrometheusAPI
from agent_webhook.investigation.safety import URLAllowlist
from agent_webhook.investigation.tools import ToolBox
from tests.fakes.exposition_server import ExpositionServer
from tests.harness.processes import ProcessManager, wait_until
from tests.harness.promstack import (
    AlertmanagerServer,
    MissingBinary,
    PrometheusServer,
    prometheus_config,
    start_alertmanager,
    start_prometheus,
)

pytestmark = pytest.mark.slow

Series = list[tuple[dict[str, str], list[float]]]


def _gpu(gpu: str, *, last_xid: float = 0) -> Series:
    return [
        ({"__name__": "nvidia_gpu_up", "gpu": gpu, "uuid": f"GPU-{gpu}"}, [1.0]),
        ({"__name__": "nvidia_gpu_last_xid", "gpu": gpu}, [0.0, last_xid]),
        ({"__name__": "nvidia_gpu_temperature_celsius", "gpu": gpu}, [45.0]),
    ]


def _counters(gpu: str) -> Series:
    series: Series = [
        ({"__name__": "nvidia_gpu_nvlink_errors_total", "gpu": gpu, "link": str(link), "type": kind}, [0.0])
        for link in range(18)
        for kind in ("crc_flit", "crc_data", "replay")
    ]
    series += [
        ({"__name__": "nvidia_gpu_ecc_errors_total", "gpu": gpu, "type": kind, "counter": counter}, [value])
        for kind, value in (("correctable", 12.0), ("uncorrectable", 0.0))
        for counter in ("volatile", "aggregate")
    ]
    series.append(({"__name__": "nvidia_gpu_pcie_replay_errors_total", "gpu": gpu}, [0.0]))
    return series


@dataclass
class AskCluster:
    prometheus: PrometheusServer
    alertmanager: AlertmanagerServer

    def config(self) -> InvestigationConfig:
        return InvestigationConfig.from_mapping(
            {"prometheus_url": self.prometheus.url, "alertmanager_url": self.alertmanager.url}
        )


@pytest.fixture(scope="module")
def cluster(session_procs: ProcessManager, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AskCluster]:
    a1 = ExpositionServer([*_gpu("0"), *_gpu("3", last_xid=79), *_counters("3")]).start()
    a2 = ExpositionServer([*_gpu("0"), *_gpu("3")]).start()
    try:
        workdir = tmp_path_factory.mktemp("ask-live")
        try:
            prom = start_prometheus(
                session_procs,
                workdir,
                config=prometheus_config(
                    extra_scrape_configs=[
                        {
                            "job_name": "gpu",
                            "static_configs": [
                                {"targets": [e.target], "labels": {"node": node}}
                                for node, e in (("gpu-a1", a1), ("gpu-a2", a2))
                            ],
                        }
                    ]
                ),
            )
            am = start_alertmanager(
                session_procs, workdir, {"route": {"receiver": "null"}, "receivers": [{"name": "null"}]}
            )
        except MissingBinary as exc:
            pytest.fail(str(exc), pytrace=False)
        prom.wait_for('nvidia_gpu_temperature_celsius{node="gpu-a1",gpu="3"} == 45', timeout=30)
        # The XID arrives while Prometheus watches: its counter is created at 1.
        a1.add([({"__name__": "nvidia_gpu_xid_errors_total", "gpu": "3", "xid": "79"}, [1.0])])
        a1.set_phase(1)
        prom.wait_for('nvidia_gpu_xid_errors_total{node="gpu-a1",gpu="3",xid="79"} == 1', timeout=30)
        prom.wait_for('nvidia_gpu_last_xid{node="gpu-a1",gpu="3"} == 79', timeout=30)
        yield AskCluster(prom, am)
    finally:
        a1.stop()
        a2.stop()


async def test_error_counters_beyond_the_series_cap(cluster: AskCluster) -> None:
    cfg = cluster.config()
    assert cfg.max_series == 50
    assert cfg.prometheus_url
    source = PrometheusAPI(cfg.prometheus_url, URLAllowlist([cfg.prometheus_url]), max_series=cfg.max_series)
    box = ToolBox(cfg, source)
    try:
        out = await box.call("gpu_error_counters", {"node": "gpu-a1", "gpu": "3", "window_minutes": 60})
    finally:
        await source.close()
    assert out.ok, out.text
    assert 'xid="79"} increase=1 now=1' in out.text, out.text
    # Corrected ECC at 12 since the exporter's first scrape: history, not an increase.
    assert 'type="correctable"} increase=0 now=12' in out.text
    # NVLink alone fills the cap: its own query, so the XID and ECC counters above are all there.
    assert "NVLink error counters: 0 increased, 50 did not, 4 not read (series cap)" in out.text
    names = [inc.labels["__name__"] for inc in out.data]
    assert names.count("nvidia_gpu_xid_errors_total") == 1 and "nvidia_gpu_nvlink_errors_total" not in names


async def test_gpu_without_node_picks_the_node_in_trouble(cluster: AskCluster) -> None:
    dx = await Investigation(cluster.config()).ask("what is wrong with gpu 3?")
    assert dx.triage_rule == "xid:79", dx.diagnosis_markdown
    assert "node gpu-a1: picked among 2 nodes with GPU 3: last XID = 79" in dx.diagnosis_markdown
    assert "fallen off the bus" in dx.likely_cause and dx.severity == "critical"
    assert "XID counters increased: 79 (+1)" in dx.diagnosis_markdown
    assert "ECC errors increased" not in dx.diagnosis_markdown
    assert dx.degraded == []


async def test_gpu_without_node_none_or_no_trouble_says_so(cluster: AskCluster) -> None:
    investigation = Investigation(cluster.config())
    missing = await investigation.ask("what is wrong with gpu 5?")
    assert missing.summary.startswith("no node reports GPU 5"), missing.summary
    healthy = await investigation.ask("what is wrong with gpu 0?")
    assert healthy.summary.startswith("2 nodes have GPU 0 (gpu-a1, gpu-a2) and none has an alert"), healthy.summary
    assert healthy.triage_rule is None and healthy.severity == "info"


async def test_firing_alert_and_findings_are_in_the_answer(cluster: AskCluster) -> None:
    labels = {"alertname": "GPUFellOffBus", "node": "gpu-a1", "gpu": "3", "severity": "critical"}
    cluster.alertmanager.post_alerts(
        [
            {"labels": labels, "annotations": {"summary": "GPU 3 on gpu-a1 raised XID 79"}},
            # Another GPU's alert is not this GPU's answer.
            {"labels": {**labels, "alertname": "GPUThermalThrottling", "gpu": "0"}, "annotations": {}},
        ]
    )
    wait_until(lambda: len(cluster.alertmanager.alerts()) >= 2, 30, what="the two alerts in Alertmanager")
    asked: list[str] = []

    def findings(node: str) -> list[dict[str, Any]]:
        asked.append(node)
        return [
            {"id": "f-1", "status": "firing", "alertname": "GPUXidError", "severity": "critical", "gpu": "3",
             "summary": "GPUXidError on node gpu-a1 gpu 3: XID 79 (GPU has fallen off the bus)"},
            {"id": "f-2", "status": "resolved", "alertname": "GPUXidError", "gpu": "3", "summary": "old"},
        ]  # fmt: skip

    dx = await Investigation(cluster.config()).ask("what is wrong with gpu 3 on node gpu-a1?", findings)
    assert asked == ["gpu-a1"]
    assert dx.summary.startswith("GPUFellOffBus on node gpu-a1 gpu 3: XID 79"), dx.summary
    assert "firing now: GPUFellOffBus (critical)" in dx.diagnosis_markdown
    assert "GPUThermalThrottling" not in dx.diagnosis_markdown
    assert "the agent's finding f-1 (GPUXidError, critical)" in dx.diagnosis_markdown
    assert "f-2" not in dx.diagnosis_markdown  # resolved findings are not what is wrong now
    assert [e.tool for e in dx.evidence if e.tool in ("active_alerts", "agent_findings")] == [
        "active_alerts",
        "agent_findings",
    ]

    def unreachable(node: str) -> list[dict[str, Any]]:
        raise RuntimeError("cannot reach http://127.0.0.1:9: connection refused")

    dx = await Investigation(cluster.config()).ask("what is wrong with gpu 3 on node gpu-a1?", unreachable)
    assert dx.triage_rule == "xid:79" and dx.degraded == []  # the findings are extra; the answer stands
    assert any(e.tool == "agent_findings" and not e.ok and "connection refused" in e.excerpt for e in dx.evidence)
