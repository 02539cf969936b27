"""The monitored stack the dashboard queries run against: the GPU exporter (sim backend) and the
Slurm exporter against a real private Slurm cluster, the RunPod exporter against the fake RunPod
API, Alertmanager, and Prometheus with the rules of alert_rules/ loaded; plus a way to inject
GPU faults.

While the real exporters are not in the tree, a stand-in at the wire (static_exporters.py)
serves series of the same names and labels; `MonitoredStack.source` says which one a run used.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

from tests.harness.processes import LOOPBACK, ManagedProcess, ProcessManager, free_port, http_get
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
BIN = Path(sys.executable).parent
CLUSTER = "grafana-test"
# The scrape job names every generated config uses and the rules select on.
GPU_JOB = "gpu"
SLURM_JOB = "slurm"
RUNPOD_JOB = "runpod"
GPUS = 4
ACCOUNT = "research"

SOURCE_REAL = "real gpu-exporter --backend sim and slurm-exporter on a private Slurm cluster"
SOURCE_STATIC = "static stand-in exposition (tests/grafana/static_exporters.py)"


def real_exporters_available() -> bool:
    return (REPO / "exporters" / "gpu" / "sim").is_dir() and (REPO / "tests" / "harness" / "slurm.py").is_file()


# Used only while alert_rules/ has no alert rules: rules of the same shape so that the
# ALERTS-based panels have something to show.
STAND_IN_ALERT_RULES = {
    "groups": [
        {
            "name": "grafana-test-stand-in",
            "rules": [
                {
                    "alert": "GPUFellOffBus",
                    "expr": "nvidia_gpu_up == 0",
                    "labels": {"severity": "critical", "component": "gpu"},
                },
                {
                    "alert": "SlurmNodeDown",
                    "expr": 'slurm_node_state{state="down"} == 1',
                    "labels": {"severity": "critical", "component": "slurm"},
                },
            ],
        }
    ]
}


def rule_files(workdir: Path) -> tuple[list[Path], bool]:
    """alert_rules/*.rules.yml with every `for:` cut to 1s (this test checks the ALERTS series'
    shape; promtool tests the timing), and whether they held alert rules at all."""
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


def _scrape(job: str, address: str, labels: dict[str, str], path: str = "/metrics") -> dict[str, Any]:
    return {"job_name": job, "metrics_path": path, "static_configs": [{"targets": [address], "labels": labels}]}


# GPU faults, injected after the baseline checks. GPU 0 (held by a job) gets what the per-GPU
# panels show, so the first GPU the `gpu` variable lists has it; the others get the faults that
# make a GPU unreadable or unusable. (gpu, kind, values)
FAULTS: list[tuple[int, str, tuple[str, ...]]] = [
    (0, "throttle", ("thermal",)),
    (0, "xid", ("13",)),
    (1, "xid", ("79",)),
    (2, "ecc_dbe", ()),
    (2, "row_remap_failure", ()),
    (3, "lost", ()),
]
# Before Prometheus starts: GPU 0 idle from the first sample, so its 10-minute average (the
# idle-while-allocated recording rule) is 0 within the test.
IDLE_GPU = 0
PROCESS_PID = "4242"


def start_stack(procs: ProcessManager, workdir: Path) -> MonitoredStack:
    try:
        alertmanager = start_alertmanager(
            procs, workdir, {"route": {"receiver": "null", "group_wait": "1s"}, "receivers": [{"name": "null"}]}
        )
        if real_exporters_available():
            return _start_real(procs, workdir, alertmanager)
        return _start_static(procs, workdir, alertmanager)
    except MissingBinary as exc:
        pytest.fail(str(exc), pytrace=False)


def _start_prometheus(
    procs: ProcessManager, workdir: Path, alertmanager: AlertmanagerServer, scrape_configs: list[dict[str, Any]]
) -> tuple[PrometheusServer, bool]:
    rules, real_rules = rule_files(workdir)
    scrape_configs = [*scrape_configs, _scrape("alertmanager", f"{LOOPBACK}:{alertmanager.port}", {})]
    config = prometheus_config(
        rule_files=rules, alertmanager_urls=[alertmanager.url], extra_scrape_configs=scrape_configs
    )
    return start_prometheus(procs, workdir, config=config), real_rules


def _start_runpod(procs: ProcessManager, node: str) -> tuple[dict[str, Any], list[Callable[[], Any]]]:
    """The real runpod-exporter on the fake RunPod API with two pods, one of them the GPU node's
    (named after it, as the playbooks name pods); returns its scrape config and cleanups."""
    from runpod.api.graphql import run_graphql_query
    from runpod.api.mutations.pods import generate_pod_deployment_mutation

    from tests.fakes.runpod_api import DEFAULT_API_KEY, FakeRunPod
    from tests.runpod.exporter import start_runpod_exporter

    fake = FakeRunPod(start_delay=0).start()
    try:
        # The SDK reads RUNPOD_API_BASE_URL per call: set for this process only while preparing.
        with mock.patch.dict(os.environ, {"RUNPOD_API_BASE_URL": fake.url}):
            for name in (node, "gw-head"):
                query = generate_pod_deployment_mutation(
                    name, "gpu-watchdog-pod", "NVIDIA L4", "SECURE", env={"WATCHDOG_NODE_NAME": name}
                )
                run_graphql_query(query, api_key=DEFAULT_API_KEY)
        exporter, url = start_runpod_exporter(procs, fake.url, "--interval", "1")
        _wait_for_metric(exporter, f"{url}/metrics", "runpod_api_up 1.0")
    except BaseException:
        fake.stop()
        raise
    return _scrape(RUNPOD_JOB, url.removeprefix("http://"), {"cluster": CLUSTER}), [fake.stop, exporter.stop]


def _wait_ready(prometheus: PrometheusServer) -> None:
    prometheus.wait_for(f'up{{job="{GPU_JOB}"}} == 1 and on () up{{job="{SLURM_JOB}"}} == 1', timeout=60)
    prometheus.wait_for("count(nvidia_gpu_utilization_ratio offset 12s)", timeout=60)  # history for rates


def _start_real(procs: ProcessManager, workdir: Path, alertmanager: AlertmanagerServer) -> MonitoredStack:
    from tests.harness.slurm import SlurmUnavailable, start_cluster, wait_for_job_state

    try:
        cluster = start_cluster(procs, fake_nodes=2)
    except SlurmUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    faults_file = workdir / "sim-faults.yml"

    def sim(gpu: int, kind: str, *values: str) -> None:
        subprocess.run(
            [
                str(BIN / "gpu-watchdog"),
                "sim",
                "inject",
                "--faults",
                str(faults_file),
                "--gpu",
                str(gpu),
                kind,
                *values,
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )

    try:
        sim(IDLE_GPU, "utilization", "0")
        gpu_port, slurm_port = free_port(), free_port()
        gpu_exporter = procs.start(
            f"gpu-exporter-{gpu_port}",
            [
                str(BIN / "gpu-exporter"),
                f"--listen={LOOPBACK}:{gpu_port}",
                "--backend=sim",
                f"--sim-gpus={GPUS}",
                f"--sim-faults={faults_file}",
                "--interval=1",
            ],
        )
        slurm_exporter = procs.start(
            f"slurm-exporter-{slurm_port}",
            [str(BIN / "slurm-exporter"), f"--listen={LOOPBACK}:{slurm_port}", "--interval=1", "--backend=cli"],
            env=cluster.env,
        )
        gpu_exporter.wait_http(f"http://{LOOPBACK}:{gpu_port}/metrics")
        slurm_exporter.wait_http(f"http://{LOOPBACK}:{slurm_port}/metrics", timeout=60)
        _wait_for_metric(slurm_exporter, f"http://{LOOPBACK}:{slurm_port}/metrics", "slurm_up 1.0")

        # Submitted after the exporter's first poll, so their waits are observed. Two jobs hold
        # the node's 4 GPUs (GPU 0 and 1 for the first); in the other partition a CPU job runs
        # and a GPU job waits on Resources, so both partitions have jobs, waits and a queue.
        # (--mem: without it a job takes all of the node's memory and the next one waits.)
        job_args = (f"--account={ACCOUNT}", "--mem=1000", "-w", cluster.hostname)
        holding = [cluster.sbatch("--gres=gpu:h100:2", "-p", "gpu", *job_args) for _ in range(2)]
        cpu_job = cluster.sbatch("-p", "debug", *job_args)
        cluster.sbatch("--gres=gpu:h100:4", "-p", "debug", *job_args)
        for job in [*holding, cpu_job]:
            wait_for_job_state(cluster, job, "RUNNING")
        # A drained node with the reason an admin gave (the fake nodes also go down, later).
        cluster.scontrol("update", f"nodename={cluster.fake_nodes[0]}", "state=drain", "reason=bad PSU")
        _wait_for_metric(slurm_exporter, f"http://{LOOPBACK}:{slurm_port}/metrics", 'reason="bad PSU"')

        node_labels = {"node": cluster.hostname, "cluster": CLUSTER}
        runpod_scrape, runpod_cleanups = _start_runpod(procs, cluster.hostname)
        prometheus, real_rules = _start_prometheus(
            procs,
            workdir,
            alertmanager,
            [
                # `node` (the Slurm NodeName) and `cluster` as target labels, as docs/architecture.md says.
                _scrape(GPU_JOB, f"{LOOPBACK}:{gpu_port}", node_labels),
                _scrape(SLURM_JOB, f"{LOOPBACK}:{slurm_port}", {"cluster": CLUSTER}),
                runpod_scrape,
            ],
        )
        _wait_ready(prometheus)
    except BaseException:
        cluster.stop()
        raise

    def inject() -> None:
        sim(IDLE_GPU, "process", PROCESS_PID, holding[0])
        for gpu, kind, values in FAULTS:
            sim(gpu, kind, *values)

    stack = MonitoredStack(
        prometheus=prometheus,
        alertmanager=alertmanager,
        gpu_node=cluster.hostname,
        source=SOURCE_REAL,
        real_alert_rules=real_rules,
        inject=inject,
    )
    stack.cleanups.append(cluster.stop)
    stack.cleanups.extend(runpod_cleanups)
    for proc in (alertmanager.process, gpu_exporter, slurm_exporter, prometheus.process):
        stack.cleanups.append(proc.stop)
    return stack


def _wait_for_metric(proc: ManagedProcess, url: str, line: str) -> None:
    proc.wait_ready(lambda: line in http_get(url)[1].decode(), 60, what=f"{line!r} at {url}")


def _start_static(procs: ProcessManager, workdir: Path, alertmanager: AlertmanagerServer) -> MonitoredStack:
    from tests.grafana.static_exporters import GPU_NODE, StaticExporters

    exporters = StaticExporters().start()
    exporters.faults.utilization[IDLE_GPU] = 0.0
    runpod_scrape, runpod_cleanups = _start_runpod(procs, GPU_NODE)
    prometheus, real_rules = _start_prometheus(
        procs,
        workdir,
        alertmanager,
        [
            _scrape(GPU_JOB, exporters.address, {"node": GPU_NODE, "cluster": CLUSTER}, "/gpu"),
            _scrape(SLURM_JOB, exporters.address, {"cluster": CLUSTER}, "/slurm"),
            runpod_scrape,
        ],
    )
    _wait_ready(prometheus)

    def inject() -> None:
        faults = exporters.faults
        faults.processes[IDLE_GPU] = (int(PROCESS_PID), "101")
        for gpu, kind, values in FAULTS:
            if kind == "throttle":
                faults.throttle[gpu] = values[0]
            elif kind == "xid":
                faults.xid[gpu] = int(values[0])
            elif kind == "ecc_dbe":
                faults.ecc_dbe.add(gpu)
            elif kind == "row_remap_failure":
                faults.row_remap_failure.add(gpu)
            elif kind == "lost":
                faults.lost.add(gpu)

    stack = MonitoredStack(
        prometheus=prometheus,
        alertmanager=alertmanager,
        gpu_node=GPU_NODE,
        source=SOURCE_STATIC,
        real_alert_rules=real_rules,
        inject=inject,
    )
    stack.cleanups.extend([exporters.stop, *runpod_cleanups, alertmanager.process.stop, prometheus.process.stop])
    return stack
