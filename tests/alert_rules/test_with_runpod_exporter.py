"""The cost rules against the real runpod-exporter (on the fake RunPod API, through the real SDK),
scraped by a real Prometheus next to GPU and Slurm series with the suite's `node` labels: the
pod <-> node join of cost.rules.yml works on the exporter's actual labels, not only on the
promtool fixtures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import runpod

from tests.alert_rules.ruleset import rule_files
from tests.fakes.exposition_server import ExpositionServer
from tests.fakes.runpod_api import DEFAULT_API_KEY, FakeRunPod
from tests.harness.processes import ProcessManager
from tests.harness.promstack import PrometheusServer
from tests.runpod.exporter import start_runpod_exporter

pytestmark = pytest.mark.slow


@pytest.fixture
def fake_runpod(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRunPod]:
    server = FakeRunPod(start_delay=0).start()
    # The SDK in this process prepares the pods; the exporter gets the same settings by env.
    monkeypatch.setenv("RUNPOD_API_BASE_URL", server.url)
    monkeypatch.setattr(runpod, "api_key", DEFAULT_API_KEY)
    try:
        yield server
    finally:
        server.stop()


def test_idle_join_and_burn_from_the_real_exporter(
    procs: ProcessManager, prometheus_factory: Callable[..., PrometheusServer], fake_runpod: FakeRunPod
) -> None:
    # Named as provision.yml/scale.yml name them: WATCHDOG_NODE_NAME = the pod name.
    idle = runpod.create_pod("gw-worker-1", "img", "NVIDIA L4", env={"WATCHDOG_NODE_NAME": "gw-worker-1"})["id"]
    runpod.create_pod("gw-worker-2", "img", "NVIDIA L4", env={"WATCHDOG_NODE_NAME": "gw-worker-2"})
    runpod.create_pod("gw-head", "img", "NVIDIA L4", env={"WATCHDOG_ROLE": "head"})
    _, exporter_url = start_runpod_exporter(procs, fake_runpod.url, "--interval", "1", ready="/healthz")
    target = exporter_url.removeprefix("http://")
    # GPU exporters get `node` as a target label (as the prometheus role writes it); the Slurm
    # exporter names nodes itself. gw-worker-1 is idle, gw-worker-2 runs a job.
    gpu1 = ExpositionServer([({"__name__": "nvidia_gpu_utilization_ratio", "gpu": "0"}, [0.0])])
    gpu2 = ExpositionServer([({"__name__": "nvidia_gpu_utilization_ratio", "gpu": "0"}, [0.0])])
    slurm = ExpositionServer(
        [
            ({"__name__": "slurm_node_cpus_allocated", "node": "gw-worker-1"}, [0]),
            ({"__name__": "slurm_node_cpus_allocated", "node": "gw-worker-2"}, [8]),
        ]
    )
    with gpu1, gpu2, slurm:
        prom = prometheus_factory(
            rule_files=rule_files(),
            extra_scrape_configs=[
                {"job_name": "runpod", "static_configs": [{"targets": [target]}]},
                {
                    "job_name": "gpu",
                    "static_configs": [
                        {"targets": [gpu1.target], "labels": {"node": "gw-worker-1"}},
                        {"targets": [gpu2.target], "labels": {"node": "gw-worker-2"}},
                    ],
                },
                {"job_name": "slurm", "static_configs": [{"targets": [slurm.target]}]},
            ],
        )
        result = prom.wait_for("node:runpod_pod_idle_dollars_per_hour", timeout=60)
        assert [r["metric"]["node"] for r in result] == ["gw-worker-1"]
        assert result[0]["metric"]["pod_id"] == idle
        assert float(result[0]["value"][1]) == pytest.approx(0.28)
        burn = prom.wait_for("gpu_watchdog:runpod_burn_dollars_per_hour", timeout=30)
        assert float(burn[0]["value"][1]) == pytest.approx(3 * 0.28)
        assert float(prom.query("gpu_watchdog:runpod_budget_dollars_per_hour")[0]["value"][1]) == 20
        # RunPodPodIdle is pending (its `for:` is 30 minutes) for exactly that pod.
        pending = [a for a in prom.alerts() if a["labels"]["alertname"] == "RunPodPodIdle"]
        assert [a["labels"]["node"] for a in pending] in ([], ["gw-worker-1"])
