"""The monitored stack the dashboard queries run against: exporters, Alertmanager, Prometheus
with the rules of alert_rules/ loaded, and a way to inject GPU faults."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.grafana.static_exporters import GPU_NODE, StaticExporters
from tests.harness.processes import ManagedProcess, ProcessManager
from tests.harness.promstack import (
    AlertmanagerServer,
    MissingBinary,
    PrometheusServer,
    prometheus_config,
    start_alertmanager,
    start_prometheus,
)

REPO = Path(__file__).resolve().parents[2]
RULES_DIR = REPO / "alert_rules"
CLUSTER = "grafana-test"
GPU_JOB = "gpu"
SLURM_JOB = "slurm"

# Shown by the report: which exporters this run scraped.
SOURCE_STATIC = "static stand-in exposition (tests/grafana/static_exporters.py)"

# Used only while alert_rules/ has no alert rules yet: one rule of the same shape so that the
# ALERTS-based panels have something to show. Dropped as soon as the real rules exist.
STAND_IN_ALERT_RULES = {
    "groups": [
        {
            "name": "grafana-test-stand-in",
            "rules": [
                {
                    "alert": "GPUFellOffBus",
                    "expr": "nvidia_gpu_up == 0",
                    "labels": {"severity": "critical", "component": "gpu"},
                    "annotations": {"summary": "GPU {{ $labels.gpu }} on {{ $labels.node }} fell off the bus"},
                },
                {
                    "alert": "SlurmNodeDown",
                    "expr": 'slurm_node_state{state="down"} == 1',
                    "labels": {"severity": "warning", "component": "slurm"},
                    "annotations": {"summary": "Slurm node {{ $labels.node }} is down"},
                },
            ],
        }
    ]
}


def rule_files(workdir: Path) -> tuple[list[Path], bool]:
    """alert_rules/*.rules.yml with every `for:` shortened to 1s (the test checks the ALERTS
    series' shape, not the rules' timing, which promtool tests cover), and whether they held
    alert rules at all (else a stand-in rule is added)."""
    out_dir = workdir / "rules"
    out_dir.mkdir()
    paths: list[Path] = []
    has_alerts = False
    for path in sorted(RULES_DIR.glob("*.rules.yml")):
        text = re.sub(r"^(\s*)for:\s*\S+", r"\1for: 1s", path.read_text(encoding="utf-8"), flags=re.MULTILINE)
        has_alerts = has_alerts or any("alert" in r for g in yaml.safe_load(text)["groups"] for r in g["rules"])
        target = out_dir / path.name
        target.write_text(text, encoding="utf-8")
        paths.append(target)
    if not has_alerts:
        target = out_dir / "stand-in.rules.yml"
        target.write_text(yaml.safe_dump(STAND_IN_ALERT_RULES), encoding="utf-8")
        paths.append(target)
    return paths, has_alerts


@dataclass
class MonitoredStack:
    prometheus: PrometheusServer
    alertmanager: AlertmanagerServer
    gpu_node: str
    source: str
    real_alert_rules: bool
    inject: Callable[[], None]
    started: float = field(default_factory=time.time)
    cleanups: list[Callable[[], Any]] = field(default_factory=list)
    processes: list[ManagedProcess] = field(default_factory=list)

    def inject_faults(self) -> None:
        self.inject()

    def builtin_variables(self) -> dict[str, str]:
        """Grafana's own variables for a dashboard looking at everything since the stack started,
        at the 1 s scrape interval the harness Prometheus uses."""
        since = int(time.time() - self.started) + 5
        return {"__rate_interval": "10s", "__interval": "2s", "__range": f"{since}s"}

    def stop(self) -> None:
        for cleanup in reversed(self.cleanups):
            cleanup()
        for proc in reversed(self.processes):
            proc.stop()


def _scrape(job: str, address: str, path: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"job_name": job, "metrics_path": path, "static_configs": [{"targets": [address], "labels": labels}]}


def start_stack(procs: ProcessManager, workdir: Path) -> MonitoredStack:
    try:
        alertmanager = start_alertmanager(
            procs,
            workdir,
            {"route": {"receiver": "null", "group_wait": "1s"}, "receivers": [{"name": "null"}]},
        )
    except MissingBinary as exc:
        import pytest

        pytest.fail(str(exc), pytrace=False)
    processes: list[ManagedProcess] = [alertmanager.process]
    exporters = StaticExporters().start()
    scrape_configs = [
        # `node` (the Slurm NodeName) and `cluster` are target labels, as docs/architecture.md says.
        _scrape(GPU_JOB, exporters.address, "/gpu", {"node": GPU_NODE, "cluster": CLUSTER}),
        _scrape(SLURM_JOB, exporters.address, "/slurm", {"cluster": CLUSTER}),
        _scrape("alertmanager", f"127.0.0.1:{alertmanager.port}", "/metrics", {}),
    ]
    rules, real_rules = rule_files(workdir)
    config = prometheus_config(
        rule_files=rules, alertmanager_urls=[alertmanager.url], extra_scrape_configs=scrape_configs
    )
    try:
        prometheus = start_prometheus(procs, workdir, config=config)
    except MissingBinary as exc:
        import pytest

        pytest.fail(str(exc), pytrace=False)
    processes.append(prometheus.process)

    def inject() -> None:
        # GPU 0 (held by a job) gets what the per-GPU panels show, so the first GPU the `gpu`
        # variable lists has it; the others get the faults that make a GPU unreadable or unusable.
        faults = exporters.faults
        faults.utilization[0] = 0.0
        faults.processes[0] = (4242, "101")
        faults.throttle[0] = "thermal"
        faults.xid[0] = 13
        faults.xid[1] = 79
        faults.ecc_dbe.add(2)
        faults.row_remap_failure.add(2)
        faults.lost.add(3)

    stack = MonitoredStack(
        prometheus=prometheus,
        alertmanager=alertmanager,
        gpu_node=GPU_NODE,
        source=SOURCE_STATIC,
        real_alert_rules=real_rules,
        inject=inject,
        processes=processes,
    )
    stack.cleanups.append(exporters.stop)
    prometheus.wait_for(f'up{{job="{GPU_JOB}"}} == 1 and on () up{{job="{SLURM_JOB}"}} == 1')
    prometheus.wait_for("count(nvidia_gpu_utilization_ratio offset 12s)")  # enough history for rates
    return stack
