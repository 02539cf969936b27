"""A real VictoriaMetrics (Debian's `victoria-metrics`, single node) on a loopback port, for tests.

vm = start_victoria_metrics(procs, tmp_path)
prom = start_prometheus(procs, tmp_path, config={..., "remote_write": [vm.remote_write()]})
vm.wait_for('up{job="gpu"} == 1')

It serves the Prometheus query API (/api/v1/query, /api/v1/query_range, /api/v1/series) at its
root, so the returned server has the same query helpers as :class:`PrometheusServer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.harness.processes import LOOPBACK, ManagedProcess, ProcessManager, free_port, http_get
from tests.harness.promstack import PrometheusServer, find_binary

VICTORIA_BINARIES = ("victoria-metrics",)


@dataclass
class VictoriaMetricsServer(PrometheusServer):
    """Query helpers of PrometheusServer (query, query_range, wait_for); the config path is unused."""

    def remote_write(self, deadline: str = "500ms") -> dict[str, Any]:
        """A Prometheus `remote_write` entry for this server (batches sent at least every `deadline`)."""
        return {"url": f"{self.url}/api/v1/write", "queue_config": {"batch_send_deadline": deadline}}


def start_victoria_metrics(
    procs: ProcessManager,
    workdir: Path,
    *,
    retention: str = "1d",
    latency_offset: str = "1s",
    timeout: float = 30.0,
    extra_args: Sequence[str] = (),
) -> VictoriaMetricsServer:
    """Start VictoriaMetrics with its data in `workdir`.

    `latency_offset`: VictoriaMetrics hides the newest 30 s of samples by default (they may be
    incomplete); an agent investigating an alert that fired a second ago needs them, as does a
    time-compressed pipeline. The role sets the same flag (victoria_metrics_latency_offset).
    The response cache is off: tests compare answers seconds apart.
    """
    binary = find_binary(VICTORIA_BINARIES, "victoria-metrics")
    port = free_port()
    root = workdir / f"victoria-metrics-{port}"
    data_dir = root / "data"
    data_dir.mkdir(parents=True)
    proc: ManagedProcess = procs.start(
        "victoria-metrics",
        [
            binary,
            f"-httpListenAddr={LOOPBACK}:{port}",
            f"-storageDataPath={data_dir}",
            f"-retentionPeriod={retention}",
            f"-search.latencyOffset={latency_offset}",
            "-search.disableCache",
            "-loggerLevel=INFO",
            *extra_args,
        ],
    )
    url = f"http://{LOOPBACK}:{port}"
    proc.wait_ready(lambda: http_get(f"{url}/health", timeout=2)[0] == 200, timeout, what=f"VictoriaMetrics at {url}")
    return VictoriaMetricsServer(url=url, port=port, process=proc, config_path=root, data_dir=data_dir)
