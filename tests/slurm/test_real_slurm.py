"""The real `slurm-exporter` against a real private slurmctld + slurmd (Debian's Slurm 22.05)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from tests.harness.processes import free_port, http_get, wait_until
from tests.harness.slurm import SlurmCluster, wait_for_job_state, write_config
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
        assert value(samples, "slurm_user_cpus_allocated", user="root") == 5
        assert value(samples, "slurm_user_memory_allocated_bytes", user="root") == 5 * 100 * 1024 * 1024
        assert value(samples, "slurm_user_jobs", user="root", state="pending") == 1
        assert value(samples, "slurm_account_jobs", account="", state="running") == 5  # no accounting: no account
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
        drained_at = value(samples, "slurm_node_reason_timestamp_seconds", node=node)
        assert drained_at is not None and time.time() - 60 < drained_at <= time.time() + 1
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


def test_job_text_cannot_forge_gpu_assignments(slurm_cluster: SlurmCluster, slurm_exporter: ExporterFactory) -> None:
    """Users write job names and comments; scontrol prints them raw, newlines included."""
    cluster = slurm_cluster
    node = cluster.hostname
    fake = cluster.fake_nodes[0]
    forged_detail = f"     Nodes={fake} CPU_IDs=0 Mem=0 GRES=gpu:h100:4(IDX:0-3)"
    _, url = slurm_exporter(["--interval", "1"], env=cluster.env)
    common = ["-p", "gpu", "-w", node, "--mem=100", "--gres=gpu:1"]
    try:
        # The job name, on one line.
        named = cluster.sbatch(*common, "-J", f"x Nodes={fake} GRES=gpu:h100:4(IDX:0-3)")
        # Newlines in the job name and the comment: lines that look exactly like detail lines.
        injected = cluster.sbatch(*common, "-J", f"y\n{forged_detail}", "--comment", f"c\n{forged_detail}")
        for job_id in (named, injected):
            wait_for_job_state(cluster, job_id, "RUNNING")
        raw = cluster.scontrol("-d", "show", "job", injected)
        assert f"\n{forged_detail}" in raw  # the forgery really reaches scontrol's output

        def settled() -> bool:
            s = scrape(url)[0]
            return len(series(s, "slurm_job_gpu_info")) == 1 and value(s, "slurm_jobs", state="running") == 2

        wait_until(settled, 30, interval=0.5, what="the job-to-GPU map")
        samples, _ = scrape(url)
        rows = series(samples, "slurm_job_gpu_info")
        # Only the one-line name's job is mapped, to its real GPU; the injected record is refused.
        assert [(r["job_id"], r["node"]) for r in rows] == [(named, node)]
        assert len({(r["node"], r["gpu"]) for r in rows}) == len(rows)
        assert (value(samples, "slurm_exporter_parse_errors_total", command="scontrol") or 0) >= 1
        assert value(samples, "slurm_up") == 1  # one refused record is not an unreadable poll
        assert value(samples, "slurm_node_gpus_allocated", node=node, gpu_type="h100") == 2
    finally:
        cluster.cancel_all()


def test_gres_idx_is_the_device_file_number(tmp_path: Path) -> None:
    """What slurm_job_gpu_info's gpu/minor_number label rests on: slurmd numbers each GPU by its
    gres.conf File= path's trailing number (/dev/nvidia<minor>), whatever the order of the lines."""
    host = socket.gethostname()
    conf, _ = write_config(tmp_path, host, free_port(), free_port(), tmp_path / "munge.sock", 0, free_port(), 10, {})
    order = (2, 0, 3, 1)
    for number in order:
        os.mknod(tmp_path / "dev" / f"gpu{number}", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (tmp_path / "gres.conf").write_text(
        "".join(f"NodeName={host} Name=gpu Type=h100 File={tmp_path}/dev/gpu{n}\n" for n in order)
    )
    slurmd = shutil.which("slurmd") or "/usr/sbin/slurmd"
    result = subprocess.run(
        [slurmd, "-G", "-f", str(conf), "-N", host],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "SLURM_CONF": str(conf)},
    )
    found = re.findall(r"Index=(\d+) .*File=\S*/gpu(\d+)", result.stdout + result.stderr)
    assert len(found) == 4, result.stdout + result.stderr
    assert all(index == number for index, number in found), found


def test_reservations_and_licenses(slurm_cluster: SlurmCluster, slurm_exporter: ExporterFactory) -> None:
    cluster = slurm_cluster
    _, url = slurm_exporter(["--interval", "1"], env=cluster.env)
    fake = cluster.fake_nodes[0]
    cluster.scontrol(
        "create", "reservation", "reservationname=psu-swap", "starttime=now+1hour", "duration=90",
        f"nodes={fake}", "flags=maint", "users=root",
    )  # fmt: skip
    try:
        job = cluster.sbatch("-p", "gpu", "-w", cluster.hostname, "--mem=100", "-L", "matlab:3")
        wait_for_job_state(cluster, job, "RUNNING")
        wait_until(
            lambda: value(scrape(url)[0], "slurm_licenses_used", license="matlab") == 3,
            20,
            interval=0.5,
            what="the license in use",
        )
        samples, _ = scrape(url)
        assert value(samples, "slurm_licenses", license="matlab") == 10
        assert value(samples, "slurm_licenses_free", license="fluent") == 2
        assert value(samples, "slurm_reservation_maintenance", reservation="psu-swap") == 1
        assert value(samples, "slurm_reservation_info", reservation="psu-swap", state="inactive", nodes=fake) == 1
        start = value(samples, "slurm_reservation_start_time_seconds", reservation="psu-swap")
        end = value(samples, "slurm_reservation_end_time_seconds", reservation="psu-swap")
        assert start is not None and end is not None and end - start == 90 * 60
        assert 3000 < start - time.time() < 3700
    finally:
        cluster.cancel_all()
        cluster.scontrol("delete", "reservation=psu-swap", check=False)
