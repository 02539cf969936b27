"""The real `slurm-exporter` against a real private slurmctld + slurmd (Debian's Slurm 22.05)."""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.harness.processes import http_get, wait_until
from tests.harness.slurm import SlurmCluster, wait_for_job_state
from tests.slurm.conftest import ExporterFactory
from tests.slurm.metrics import scrape, series, value

pytestmark = pytest.mark.slow


def test_gpu_jobs_drain_and_down_nodes(
    slurm_cluster: SlurmCluster, slurm_exporter: ExporterFactory, promtool: str
) -> None:
    cluster = slurm_cluster
    node = cluster.hostname
    _, url = slurm_exporter(["--interval", "1"], env=cluster.env)
    common = ["-p", "gpu", "-w", node, "--mem=100"]
    try:
        gpu_jobs = {
            "gres": cluster.sbatch(*common, "--gres=gpu:1"),
            "gpus": cluster.sbatch(*common, "--gpus=1"),
            "gpus-per-node": cluster.sbatch(*common, "--gpus-per-node=h100:1"),
            "gpus-per-task": cluster.sbatch(*common, "-n", "1", "--gpus-per-task=1"),
        }
        cpu_job = cluster.sbatch(*common)
        for job_id in [*gpu_jobs.values(), cpu_job]:
            wait_for_job_state(cluster, job_id, "RUNNING")
        waiting = cluster.sbatch(*common, "--gres=gpu:4")  # all 4 GPUs are taken
        cluster.scontrol("update", "nodename=fake0002", "state=down", "reason=no slurmd")

        def allocated() -> bool:
            s = scrape(url)[0]
            return (
                value(s, "slurm_node_gpus_allocated", node=node, gpu_type="h100") == 4
                and len(series(s, "slurm_job_gpu_info")) == 4
                and value(s, "slurm_jobs_pending", partition="gpu", reason="Resources") == 1
                and value(s, "slurm_node_reason_info", node="fake0002") is not None
            )

        wait_until(allocated, 30, interval=0.5, what="GPU allocation in the metrics")
        samples, _ = scrape(url)
        assert value(samples, "slurm_up") == 1
        assert value(samples, "slurm_node_gpus", node=node, gpu_type="h100") == 4
        assert value(samples, "slurm_user_gpus_allocated", user="root") == 4
        gpu_info = series(samples, "slurm_job_gpu_info")
        assert {s["job_id"] for s in gpu_info} == set(gpu_jobs.values())
        assert sorted(int(s["gpu"]) for s in gpu_info) == [0, 1, 2, 3]
        assert {s["node"] for s in gpu_info} == {node}
        assert value(samples, "slurm_jobs", state="running", partition="gpu") == 5
        assert value(samples, "slurm_node_cpus_allocated", node=node) == 5
        assert value(samples, "slurm_node_memory_allocated_bytes", node=node) == 5 * 100 * 1024 * 1024
        assert value(samples, "slurm_partition_gpus", partition="gpu") == 12
        assert value(samples, "slurm_partition_gpus_allocated", partition="gpu") == 4
        assert value(samples, "slurm_jobs_pending_gpus", partition="gpu") == 4
        assert value(samples, "slurm_job_wait_seconds_count", partition="gpu") == 5
        assert value(samples, "slurm_node_reason_info", node="fake0002", state="down", reason="no slurmd") == 1
        assert value(samples, "slurm_rpc_calls_total", type="REQUEST_JOB_INFO") is not None
        assert value(samples, "slurm_scheduler_cycle_seconds", kind="main", stat="last") is not None

        first = value(samples, "slurm_gpu_seconds_total", user="root", partition="gpu") or 0.0
        time.sleep(2.5)
        later = value(scrape(url)[0], "slurm_gpu_seconds_total", user="root", partition="gpu") or 0.0
        assert 4 * 1.5 <= later - first <= 4 * 4.5  # 4 GPUs over ~2.5 s of polls

        cluster.scontrol("update", f"nodename={node}", "state=drain", "reason=XID 79")
        wait_until(
            lambda: value(scrape(url)[0], "slurm_node_reason_info", node=node, reason="XID 79"),
            15,
            interval=0.5,
            what="the drain reason in the metrics",
        )
        samples, _ = scrape(url)
        assert value(samples, "slurm_node_state", node=node, state="draining") == 1
        assert value(samples, "slurm_node_state_flag", node=node, flag="drain") == 1

        _status, body = http_get(f"{url}/metrics")
        check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
        assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()
        assert waiting
        # fake0001 has no slurmd: once slurmctld's pings fail it is flagged not responding.
        wait_until(
            lambda: value(scrape(url)[0], "slurm_node_state_flag", node="fake0001", flag="not_responding"),
            60,
            interval=1,
            what="fake0001 to be not responding",
        )
    finally:
        cluster.scontrol("update", f"nodename={node}", "state=resume", check=False)
        cluster.cancel_all()


def test_dead_controller(slurm_cluster: SlurmCluster, slurm_exporter: ExporterFactory) -> None:
    cluster = slurm_cluster
    proc, url = slurm_exporter(["--interval", "1", "--command-timeout", "3"], env=cluster.env)
    assert value(scrape(url)[0], "slurm_up") == 1
    cluster.stop_controller()
    try:
        stopped = time.monotonic()
        slowest, down_after = 0.0, None
        while time.monotonic() - stopped < 12:
            samples, elapsed = scrape(url)
            slowest = max(slowest, elapsed)
            if value(samples, "slurm_up") == 0:
                down_after = time.monotonic() - stopped
                break
            time.sleep(0.2)
        assert down_after is not None and down_after <= 1 + 3 + 2, down_after
        for _ in range(10):  # still answering, from the last good data
            samples, elapsed = scrape(url)
            slowest = max(slowest, elapsed)
            time.sleep(0.3)
        assert slowest < 1.0, f"a scrape took {slowest:.2f}s with slurmctld down"
        assert value(samples, "slurm_up") == 0
        assert value(samples, "slurm_node_state", node=cluster.hostname) == 1
        assert proc.alive()
    finally:
        cluster.start_controller()
    wait_until(lambda: value(scrape(url)[0], "slurm_up") == 1, 30, interval=0.5, what="slurm_up after restart")
