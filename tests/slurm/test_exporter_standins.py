"""The real `slurm-exporter` process over stand-in Slurm commands (fixture output: 22.05 recorded, 23.11/24.11 shapes).

Stand-ins make the failure cases reproducible: a command that hangs, one that fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

from tests.harness.processes import free_port, http_get, wait_until
from tests.slurm.conftest import EXPORTER, ExporterFactory
from tests.slurm.metrics import scrape, series, value
from tests.slurm.standins import FIXTURES, calls, hung_children, make_standins


def test_metrics_from_23_11_output(tmp_path: Path, slurm_exporter: ExporterFactory, promtool: str) -> None:
    bin_dir = make_standins(tmp_path / "bin", "23.11")
    conf = tmp_path / "slurm.conf"
    conf.write_text("# a comment\nClusterName=from-file\n")
    env = {**os.environ, "SLURM_CONF": str(conf)}
    _, url = slurm_exporter(["--slurm-bin-dir", str(bin_dir), "--interval", "3600"], env=env)
    samples, _ = scrape(url)
    assert value(samples, "slurm_up") == 1
    assert value(samples, "slurm_exporter_info", backend="cli", cluster="from-file", slurm_version="23.11.4") == 1
    assert value(samples, "slurm_node_gpus", node="gpu-node-a100-rack12-slot07", gpu_type="a100") == 8
    assert value(samples, "slurm_node_gpus_allocated", node="gpu-node-a100-rack12-slot07", gpu_type="a100") == 5
    assert value(samples, "slurm_node_gpus_allocated", node="h100-06", gpu_type="l40s") == 0
    assert value(samples, "slurm_partition_gpus", partition="gpu") == 8 * 6 + 6
    assert (
        value(samples, "slurm_node_reason_info", node="h100-01", state="drained", reason="XID 79 GPU fell off the bus")
        == 1
    )
    assert value(samples, "slurm_node_state_flag", node="h100-01", flag="not_responding") == 1
    assert value(samples, "slurm_node_reason_info", node="h100-04") is None  # idle nodes carry no reason
    assert value(samples, "slurm_nodes", state="drained") == 1
    assert value(samples, "slurm_partition_nodes", partition="gpu", state="drained") == 1
    assert value(samples, "slurm_partition_nodes", partition="long", state="mixed") == 1
    assert value(samples, "slurm_node_memory_total_bytes", node="cpu-01") == 515000 * 1024 * 1024
    assert value(samples, "slurm_jobs", state="running", partition="gpu") == 4
    assert value(samples, "slurm_jobs_pending", partition="gpu", reason="Priority") == 2
    assert value(samples, "slurm_jobs_pending", partition="gpu", reason="QOSMaxGRESPerUser") == 1
    assert value(samples, "slurm_user_gpus_allocated", user="alice", account="ml-research") == 2
    assert value(samples, "slurm_user_gpus_allocated", user="dave", account="nlp") == 4
    assert value(samples, "slurm_job_gpu_info", job_id="4103", node="h100-06", gpu="1", user="carol-long-username") == 1
    assert len(series(samples, "slurm_job_gpu_info")) == 2 + 3 + 10
    assert value(samples, "slurm_scheduler_cycle_seconds", kind="main", stat="last") == 0.012043
    assert value(samples, "slurm_scheduler_cycle_seconds", kind="backfill", stat="mean") == 0.402117
    assert value(samples, "slurm_scheduler_queue_length") == 370
    assert value(samples, "slurm_rpc_calls_total", type="REQUEST_JOB_INFO") == 88210
    assert value(samples, "slurm_share_fairshare", account="vision", user="bob") == 0.625
    assert value(samples, "slurm_exporter_parse_errors_total", command="squeue") == 0

    # One poll ran; scrapes run no commands.
    before = calls(bin_dir)
    for _ in range(20):
        scrape(url)
    assert calls(bin_dir) == before
    polled = [c.split("/")[-1] for c in before if not c.endswith("--version")]
    # The job table is read once (squeue); scontrol reads only the GRES detail of the four running
    # GPU jobs that share a node with another, one job each, plus reservations and licenses.
    assert sorted(c.split()[0] for c in polled) == ["scontrol"] * 6 + ["sdiag", "sinfo", "squeue", "sshare"]
    detail = sorted(c.split()[-1] for c in polled if " show job " in c)
    assert detail == ["4101", "4102", "4103", "4104"]
    assert value(samples, "slurm_licenses_used", license="matlab") == 12
    assert series(samples, "slurm_reservation_info") == []  # "No reservations in the system"
    assert value(samples, "slurm_exporter_command_success", command="reservations") == 1
    stamp = value(samples, "slurm_node_reason_timestamp_seconds", node="h100-01")
    assert stamp == time.mktime((2025, 2, 3, 6, 12, 40, 0, 0, -1))
    assert value(samples, "slurm_node_reason_timestamp_seconds", node="h100-04") is None

    _status, body = http_get(f"{url}/metrics")
    check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


def test_unparseable_lines_are_counted_not_fatal(tmp_path: Path, slurm_exporter: ExporterFactory) -> None:
    bin_dir = make_standins(tmp_path / "bin", "24.11")
    _, url = slurm_exporter(["--slurm-bin-dir", str(bin_dir), "--interval", "3600"])
    samples, _ = scrape(url)
    assert value(samples, "slurm_up") == 1
    assert value(samples, "slurm_exporter_parse_errors_total", command="squeue") == 1
    assert value(samples, "slurm_jobs", state="running", partition="gpu") == 1
    assert value(samples, "slurm_node_gpus", node="h100-11", gpu_type="") == 8
    assert value(samples, "slurm_node_gpus_allocated", node="h100-13", gpu_type="") == 8  # gpu:(null):8(IDX:0-7)
    assert value(samples, "slurm_partition_gpus_allocated", partition="gpu") == 4 + 4 + 8
    assert value(samples, "slurm_reservation_maintenance", reservation="fw-update") == 1
    assert value(samples, "slurm_reservation_maintenance", reservation="llm-eval") == 0
    assert value(samples, "slurm_reservation_info", reservation="llm-eval", state="inactive", nodes="h100-[07-08]") == 1
    assert value(samples, "slurm_reservation_nodes", reservation="llm-eval") == 2
    end = value(samples, "slurm_reservation_end_time_seconds", reservation="fw-update")
    start = value(samples, "slurm_reservation_start_time_seconds", reservation="fw-update")
    assert end is not None and start is not None and end - start == 12 * 3600
    assert value(samples, "slurm_licenses", license="ansys@flex") == 100
    assert value(samples, "slurm_licenses_reserved", license="ansys@flex") == 10
    assert value(samples, "slurm_job_gpu_info", job_id="9001", node="h100-08", gpu="7") == 1
    # 9001 has h100-07 and h100-08 to itself: its GPUs come from sinfo's GresUsed, no job record read.
    assert not [c for c in calls(bin_dir) if " show job" in c]


def test_hanging_command_scrapes_stay_fast_and_data_stays(tmp_path: Path, slurm_exporter: ExporterFactory) -> None:
    marker = uuid.uuid4().hex[:12]
    bin_dir = make_standins(tmp_path / "bin", "23.11", marker=marker)
    proc, url = slurm_exporter(["--slurm-bin-dir", str(bin_dir), "--interval", "1", "--command-timeout", "2"])
    samples, _ = scrape(url)
    assert value(samples, "slurm_up") == 1
    (bin_dir / "squeue.hang").touch()
    hung_at = time.monotonic()
    slowest = 0.0
    went_down_after: float | None = None
    while time.monotonic() - hung_at < 8:
        samples, elapsed = scrape(url)
        slowest = max(slowest, elapsed)
        if went_down_after is None and value(samples, "slurm_up") == 0:
            went_down_after = time.monotonic() - hung_at
        time.sleep(0.1)
    assert proc.alive()
    assert slowest < 1.0, f"a scrape took {slowest:.2f}s while squeue hung"
    assert went_down_after is not None and went_down_after < 1 + 2 + 1.5, went_down_after
    # The last good squeue data is still served, marked by its command's state and age.
    assert value(samples, "slurm_jobs", state="running", partition="gpu") == 4
    assert value(samples, "slurm_exporter_command_success", command="squeue") == 0
    assert value(samples, "slurm_exporter_command_failures_total", command="squeue") >= 1
    last_ok = value(samples, "slurm_exporter_command_last_success_timestamp_seconds", command="squeue")
    assert last_ok is not None and time.time() - last_ok > 4
    assert value(samples, "slurm_node_gpus", node="h100-01", gpu_type="h100") == 8
    # Timed-out commands' process groups are killed, children included (the one in flight
    # now hangs until its own timeout).
    (bin_dir / "squeue.hang").unlink()
    wait_until(lambda: not hung_children(marker), 5, what="hung stand-in children to be killed")
    wait_until(lambda: value(scrape(url)[0], "slurm_up") == 1, 10, what="slurm_up to recover")


def test_failing_command_sets_up_zero(tmp_path: Path, slurm_exporter: ExporterFactory) -> None:
    bin_dir = make_standins(tmp_path / "bin", "22.05")
    (bin_dir / "sdiag.fail").touch()
    proc, url = slurm_exporter(["--slurm-bin-dir", str(bin_dir), "--interval", "1"])
    samples, _ = scrape(url)
    assert value(samples, "slurm_up") == 0
    assert value(samples, "slurm_exporter_command_success", command="sdiag") == 0
    assert value(samples, "slurm_exporter_collector_success", collector="scheduler") == 0
    assert value(samples, "slurm_node_state", node="vm", state="draining") == 1
    (bin_dir / "sdiag.fail").unlink()
    wait_until(lambda: value(scrape(url)[0], "slurm_up") == 1, 10, what="slurm_up to recover")
    assert proc.alive()


def test_backend_pyslurm_is_gone(tmp_path: Path) -> None:
    bin_dir = make_standins(tmp_path / "bin", "23.11")
    result = subprocess.run(
        [EXPORTER, "--backend", "pyslurm", "--slurm-bin-dir", str(bin_dir), "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "'pyslurm' is not one of 'auto', 'cli'" in result.stderr


def test_auto_backend_is_the_cli(tmp_path: Path, slurm_exporter: ExporterFactory) -> None:
    bin_dir = make_standins(tmp_path / "bin", "23.11")
    _, url = slurm_exporter(["--backend", "auto", "--slurm-bin-dir", str(bin_dir), "--interval", "3600"])
    assert value(scrape(url)[0], "slurm_exporter_info", backend="cli") == 1


def test_junk_output_exiting_zero_is_a_failed_poll(tmp_path: Path, slurm_exporter: ExporterFactory) -> None:
    bin_dir = make_standins(tmp_path / "bin", "23.11")
    _, url = slurm_exporter(["--slurm-bin-dir", str(bin_dir), "--interval", "1"])
    assert value(scrape(url)[0], "slurm_up") == 1
    (bin_dir / "sinfo.junk").write_text("<html><body>502 Bad Gateway</body></html>\n")
    (bin_dir / "squeue.junk").write_text("slurm_load_jobs: socket timed out\n" * 3)
    wait_until(lambda: value(scrape(url)[0], "slurm_exporter_command_success", command="sinfo") == 0, 10)
    samples, _ = scrape(url)
    assert value(samples, "slurm_up") == 0
    assert value(samples, "slurm_exporter_command_success", command="squeue") == 0
    # The last good snapshot is still served, with the time it was taken.
    assert value(samples, "slurm_node_gpus", node="h100-01", gpu_type="h100") == 8
    assert value(samples, "slurm_jobs", state="running", partition="gpu") == 4
    last_ok = value(samples, "slurm_exporter_command_last_success_timestamp_seconds", command="sinfo")
    assert last_ok is not None and last_ok < time.time()
    assert (value(samples, "slurm_exporter_parse_errors_total", command="squeue") or 0) >= 3
    status, body = http_get(f"{url}/healthz")
    assert status == 200 and body.startswith(b"degraded: ") and b"sinfo output unreadable" in body
    (bin_dir / "sinfo.junk").unlink()
    (bin_dir / "squeue.junk").unlink()
    wait_until(lambda: value(scrape(url)[0], "slurm_up") == 1, 10, what="slurm_up to recover")
    assert http_get(f"{url}/healthz")[1] == b"ok\n"


def test_output_cap_is_a_clear_error(tmp_path: Path, slurm_exporter: ExporterFactory) -> None:
    bin_dir = make_standins(tmp_path / "bin", "23.11")
    # 200 kB of well-formed squeue lines: within any timeout, past the 100 kB cap.
    line = (FIXTURES / "23.11" / "squeue.txt").read_text().splitlines()[0] + "\n"
    (bin_dir / "squeue.junk").write_text(line * (200_000 // len(line) + 1))
    proc, url = slurm_exporter(
        ["--slurm-bin-dir", str(bin_dir), "--interval", "3600", "--command-max-output", "100000"]
    )
    samples, _ = scrape(url)
    assert value(samples, "slurm_up") == 0
    assert value(samples, "slurm_exporter_command_success", command="squeue") == 0
    assert value(samples, "slurm_exporter_command_success", command="sinfo") == 1
    assert b"squeue printed more than 100000 bytes" in http_get(f"{url}/healthz")[1]
    assert proc.alive()


def test_port_opens_within_one_timeout_when_slurm_hangs_and_sigterm_leaves_no_child(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex[:12]
    bin_dir = make_standins(tmp_path / "bin", "23.11", marker=marker)
    for name in ("sinfo", "squeue", "scontrol", "sdiag", "sshare"):
        (bin_dir / f"{name}.hang").touch()
    env = {k: v for k, v in os.environ.items() if k != "SLURM_CONF"}  # cluster name via scontrol: it hangs too
    timeout = 3.0
    port = free_port()
    timeout_arg = ["--command-timeout", str(timeout)]
    started = time.monotonic()
    proc = subprocess.Popen(
        [EXPORTER, "--slurm-bin-dir", str(bin_dir), "--listen", f"127.0.0.1:{port}", "--interval", "1", *timeout_arg],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: http_get(f"http://127.0.0.1:{port}/metrics", timeout=1)[0] == 200, 20, interval=0.05)
        opened_after = time.monotonic() - started
        # One timeout, plus the interpreter's own start (~1 s on the 2-core CI machine).
        assert opened_after < timeout + 2.0, opened_after
        assert value(scrape(f"http://127.0.0.1:{port}")[0], "slurm_up") == 0
        wait_until(lambda: hung_children(marker), 10, what="a poll to hang in a command")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        assert not hung_children(marker)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_before_the_port_opens_leaves_no_child(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex[:12]
    bin_dir = make_standins(tmp_path / "bin", "23.11", marker=marker)
    (bin_dir / "sinfo.hang").touch()
    proc = subprocess.Popen(
        [EXPORTER, "--slurm-bin-dir", str(bin_dir), "--listen", f"127.0.0.1:{free_port()}", "--command-timeout", "60"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: hung_children(marker), 20, what="the first poll to hang in sinfo")
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        assert not hung_children(marker)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_user_and_account_metrics_are_capped(tmp_path: Path, slurm_exporter: ExporterFactory) -> None:
    bin_dir = make_standins(tmp_path / "bin", "23.11")
    _, url = slurm_exporter(["--slurm-bin-dir", str(bin_dir), "--interval", "3600", "--user-metrics-limit", "2"])
    samples, _ = scrape(url)
    gib = 1024**3
    # The two busiest (user, account) pairs by CPUs held, by name.
    assert value(samples, "slurm_user_cpus_allocated", user="carol-long-username", account="vision") == 192
    assert value(samples, "slurm_user_memory_allocated_bytes", user="carol-long-username") == 2000 * gib
    assert value(samples, "slurm_user_gpus_allocated", user="alice", account="ml-research") == 2
    assert value(samples, "slurm_user_jobs", user="alice", account="ml-research", state="pending") == 2
    # bob, dave, erin and frank are summed under (other): totals stay right.
    assert value(samples, "slurm_user_cpus_allocated", user="bob") is None
    assert value(samples, "slurm_user_cpus_allocated", user="(other)", account="(other)") == 8 + 4
    assert value(samples, "slurm_user_jobs", user="(other)", state="pending") == 2
    assert value(samples, "slurm_user_jobs", user="(other)", state="completing") == 1
    assert value(samples, "slurm_exporter_series_folded", kind="user") == 4
    assert value(samples, "slurm_account_cpus_allocated", account="vision") == 192 + 8
    assert value(samples, "slurm_account_jobs", account="vision", state="completed") == 1
    assert value(samples, "slurm_account_cpus_allocated", account="(other)") == 4
    assert value(samples, "slurm_exporter_series_folded", kind="account") == 2
    # Pending reasons keep Slurm's code, not the host lists some reasons carry.
    assert value(samples, "slurm_jobs_pending", partition="gpu", reason="QOSMaxGRESPerUser") == 1

    _, url = slurm_exporter(["--slurm-bin-dir", str(bin_dir), "--interval", "3600", "--no-user-metrics"])
    samples, _ = scrape(url)
    assert series(samples, "slurm_user_jobs") == [] and series(samples, "slurm_account_cpus_allocated") == []
    assert value(samples, "slurm_node_gpus", node="h100-01", gpu_type="h100") == 8


def _collection_process(pid: int) -> int:
    kids = [int(k) for task in Path(f"/proc/{pid}/task").iterdir() for k in (task / "children").read_text().split()]
    assert len(kids) == 1, kids
    return kids[0]


def test_killed_collection_process_is_restarted_and_data_stays(tmp_path: Path, slurm_exporter: ExporterFactory) -> None:
    bin_dir = make_standins(tmp_path / "bin", "22.05")
    proc, url = slurm_exporter(["--slurm-bin-dir", str(bin_dir), "--interval", "1"])
    samples, _ = scrape(url)
    assert value(samples, "slurm_exporter_collection_process_up") == 1
    assert value(samples, "slurm_exporter_collection_process_restarts_total") == 0
    child = _collection_process(proc.pid)
    os.kill(child, signal.SIGKILL)
    wait_until(
        lambda: value(scrape(url)[0], "slurm_exporter_collection_process_restarts_total") == 1,
        10,
        what="the restart to be counted",
    )
    samples, _ = scrape(url)
    assert value(samples, "slurm_node_state", node="vm", state="draining") == 1  # never dark
    assert _collection_process(proc.pid) != child
    # The new one polls again (its start-up budget is its own, not the long-spent first one).
    wait_until(
        lambda: (value(scrape(url)[0], "slurm_exporter_snapshot_age_seconds") or 99) < 1.5, 15, what="fresh data"
    )
    assert value(scrape(url)[0], "slurm_up") == 1
    assert proc.alive()


def test_hung_collection_process_is_restarted_and_its_hung_command_killed(tmp_path: Path) -> None:
    marker = uuid.uuid4().hex[:12]
    bin_dir = make_standins(tmp_path / "bin", "23.11", marker=marker)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = dict(os.environ, GPU_WATCHDOG_COLLECTION_HANG_AFTER="4")
    timeout = ["--command-timeout", "600"]
    proc = subprocess.Popen(
        [EXPORTER, "--slurm-bin-dir", str(bin_dir), "--listen", f"127.0.0.1:{port}", "--interval", "1", *timeout],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: http_get(f"{url}/metrics", timeout=1)[0] == 200, 30, interval=0.05)
        assert value(scrape(url)[0], "slurm_up") == 1
        (bin_dir / "squeue.hang").touch()  # the next poll hangs for up to the 600 s timeout
        wait_until(lambda: hung_children(marker), 10, what="a poll to hang in squeue")
        first = hung_children(marker)
        wait_until(
            lambda: value(scrape(url)[0], "slurm_exporter_collection_process_restarts_total") == 1,
            20,
            what="the hung collection process to be restarted",
        )
        # SIGTERM let it kill the command it was waiting on.
        wait_until(lambda: not set(first) & set(hung_children(marker)), 10, what="the hung squeue to be killed")
        samples, _ = scrape(url)
        assert value(samples, "slurm_nodes", state="draining") == 1  # the last good data, never dark
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
        assert not hung_children(marker)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
