"""Collectors over the sim through the shared poller: names, labels, lost GPUs, attribution."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from exporters.gpu.backend import NvmlBackend
from exporters.gpu.cli import build, choose_collectors
from exporters.gpu.sim import SimNvml
from exporters.gpu.sim.faults import make_fault, save_faults
from gpu_watchdog_core.poller import SnapshotPoller
from tests.gpu.conftest import samples, value
from tests.harness.processes import ManagedProcess

ISSUE_METRICS = [
    "nvidia_gpu_info",
    "nvidia_gpu_up",
    "nvidia_gpu_utilization_ratio",
    "nvidia_gpu_memory_utilization_ratio",
    "nvidia_gpu_memory_used_bytes",
    "nvidia_gpu_memory_total_bytes",
    "nvidia_gpu_temperature_celsius",
    "nvidia_gpu_power_watts",
    "nvidia_gpu_power_limit_watts",
    "nvidia_gpu_energy_joules_total",
    "nvidia_gpu_sm_clock_hertz",
    "nvidia_gpu_memory_clock_hertz",
    "nvidia_gpu_clocks_event_reasons",
    "nvidia_gpu_ecc_errors_total",
    "nvidia_gpu_remapped_rows",
    "nvidia_gpu_last_xid",
    "nvidia_gpu_pcie_replay_errors_total",
    "nvidia_gpu_nvlink_errors_total",
    "gpu_exporter_collect_duration_seconds",
    "gpu_exporter_collect_errors_total",
    "gpu_exporter_last_collect_timestamp_seconds",
    # issue #16
    "nvidia_gpu_down_reason",
    "gpu_exporter_field_errors_total",
    "gpu_exporter_nvml_late_samples_discarded_total",
    "nvidia_gpu_sm_active_ratio",
    "nvidia_gpu_sm_occupancy_ratio",
    "nvidia_gpu_tensor_active_ratio",
    "nvidia_gpu_dram_active_ratio",
    "nvidia_gpu_pipe_active_ratio",
    "nvidia_gpu_pcie_throughput_bytes_per_second",
    "nvidia_gpu_nvlink_throughput_bytes_per_second",
    "nvidia_gpu_pcie_link_generation",
    "nvidia_gpu_pcie_link_width",
    "nvidia_gpu_pcie_link_max_generation",
    "nvidia_gpu_pcie_link_max_width",
    "nvidia_gpu_memory_temperature_celsius",
    "nvidia_gpu_power_default_limit_watts",
    "nvidia_gpu_power_min_limit_watts",
    "nvidia_gpu_power_max_limit_watts",
    "nvidia_gpu_pstate",
    "nvidia_gpu_ecc_mode_enabled",
    "nvidia_gpu_encoder_utilization_ratio",
    "nvidia_gpu_decoder_utilization_ratio",
    "nvidia_gpu_recovery_action",
    "nvidia_gpu_memory_reserved_bytes",
]


def _poller(sim: SimNvml, proc_roots: list[str | Path], wanted: tuple[str, ...] = ()) -> SnapshotPoller:
    be = NvmlBackend(sim)
    be.open()
    _ctx, collectors = build(be, choose_collectors(wanted), timeout=2.0, proc_roots=proc_roots)
    return SnapshotPoller("gpu_exporter", list(collectors), interval=60)


def test_every_issue_metric_is_exported(sim: SimNvml, faults_path: Path) -> None:
    save_faults(faults_path, [make_fault(2, "lost")])  # a down GPU, for nvidia_gpu_down_reason
    sim._reload_faults(force=True)
    poller = _poller(sim, ["/proc"])
    poller.collect_once()
    time.sleep(0.01)  # GPM rates need two samples apart in time
    text = poller.collect_once().text().decode()
    names = {name for name, _ in samples(text)}
    missing = [m for m in ISSUE_METRICS if m not in names]
    assert not missing
    assert value(text, "nvidia_gpu_info", gpu="0", mig_mode="disabled", driver_version="580.82.07") == 1
    assert value(text, "nvidia_gpu_collector_success") is None
    assert value(text, "gpu_exporter_collector_success", collector="xid") == 1
    assert value(text, "gpu_exporter_nvml_calls", gpu="3") == 17  # second cycle: fan skipped, GPM metrics read
    # NVLink errors summed over the 18 links by default: 3 series per GPU, not 54.
    assert value(text, "nvidia_gpu_nvlink_errors_total", gpu="1", type="crc") == 0
    assert not any(
        name == "nvidia_gpu_nvlink_errors_total" and ("link", "0") in labels for name, labels in samples(text)
    )


def test_faults_show_in_metrics(sim: SimNvml, faults_path: Path) -> None:
    poller = _poller(sim, ["/proc"])
    save_faults(
        faults_path,
        [
            make_fault(0, "temperature", ["93"]),
            make_fault(0, "throttle", ["thermal"]),
            make_fault(1, "ecc_dbe", ["2"]),
            make_fault(1, "row_remap_failure"),
            make_fault(2, "utilization", ["7"]),
        ],
    )
    sim._reload_faults(force=True)
    text = poller.collect_once().text().decode()
    assert value(text, "nvidia_gpu_temperature_celsius", gpu="0") == 93
    assert value(text, "nvidia_gpu_clocks_event_reasons", gpu="0", reason="thermal") == 1
    assert value(text, "nvidia_gpu_clocks_event_reasons", gpu="1", reason="thermal") == 0
    assert value(text, "nvidia_gpu_sm_clock_hertz", gpu="0") == 1305e6
    assert value(text, "nvidia_gpu_ecc_errors_total", gpu="1", type="uncorrectable", counter="volatile") == 2
    assert value(text, "nvidia_gpu_remapped_rows", gpu="1", state="pending") == 1
    assert value(text, "nvidia_gpu_remapped_rows", gpu="1", state="failure") == 1
    assert value(text, "nvidia_gpu_utilization_ratio", gpu="2") == 0.07


def test_lost_gpu_drops_its_value_series(sim: SimNvml, faults_path: Path) -> None:
    poller = _poller(sim, ["/proc"])
    poller.collect_once()
    save_faults(faults_path, [make_fault(1, "lost")])
    sim._reload_faults(force=True)
    text = poller.collect_once().text().decode()
    assert value(text, "nvidia_gpu_up", gpu="1") == 0
    assert value(text, "nvidia_gpu_up", gpu="0") == 1
    assert value(text, "nvidia_gpu_info", gpu="1") == 1  # identity stays for the join
    for name in ("nvidia_gpu_temperature_celsius", "nvidia_gpu_power_watts", "nvidia_gpu_ecc_errors_total"):
        assert value(text, name, gpu="1") is None, name
        assert value(text, name, gpu="0") is not None, name
    assert value(text, "gpu_exporter_nvml_errors_total", gpu="1", error="GpuIsLost") == 1


def test_processes_attributed_from_real_proc(sim: SimNvml, faults_path: Path, sleeper: ManagedProcess) -> None:
    poller = _poller(sim, [sim.proc_root, "/proc"])
    save_faults(
        faults_path,
        [make_fault(0, "process", [str(sleeper.pid)]), make_fault(2, "process", ["3999998", "777"])],
    )
    sim._reload_faults(force=True)
    text = poller.collect_once().text().decode()
    assert value(text, "nvidia_gpu_process_info", gpu="0", pid=str(sleeper.pid), slurm_job_id="4242") == 1
    assert value(text, "nvidia_gpu_process_memory_used_bytes", gpu="0", slurm_job_id="4242") == 8 * 1024**3
    assert value(text, "nvidia_gpu_process_info", gpu="2", pid="3999998", slurm_job_id="777") == 1


def test_collector_selection_always_keeps_device(sim: SimNvml, tmp_path: Path) -> None:
    poller = _poller(sim, ["/proc"], ("power",))
    text = poller.collect_once().text().decode()
    assert value(text, "nvidia_gpu_power_watts", gpu="0") is not None
    assert value(text, "nvidia_gpu_up", gpu="0") == 1
    assert value(text, "nvidia_gpu_sm_clock_hertz", gpu="0") is None
    # power needs only the batched field call plus the device reads (utilization, temperature,
    # MIG, pstate, fan, encoder, decoder)
    assert value(text, "gpu_exporter_nvml_calls", gpu="0") == 8


def test_promtool_accepts_output(sim: SimNvml, tmp_path: Path) -> None:
    text = _poller(sim, ["/proc"]).collect_once().text()
    result = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip() and not result.stderr.strip(), (
        result.stdout + result.stderr
    ).decode()


def test_links_identity_and_node_health(sim: SimNvml, faults_path: Path) -> None:
    save_faults(
        faults_path,
        [
            make_fault(0, "utilization", ["80"]),
            make_fault(0, "pcie_link", ["5x8"]),
            make_fault(1, "utilization", ["0"]),
            make_fault(2, "recovery_action", ["1"]),
        ],
    )
    sim._reload_faults(force=True)
    text = _poller(sim, ["/proc"]).collect_once().text().decode()
    # GPU 0 trained at x8 under load; GPU 1 idle drops to gen 1 (power saving); maxima from start-up
    assert value(text, "nvidia_gpu_pcie_link_width", gpu="0") == 8
    assert value(text, "nvidia_gpu_pcie_link_max_width", gpu="0") == 16
    assert value(text, "nvidia_gpu_pcie_link_generation", gpu="1") == 1
    assert value(text, "nvidia_gpu_pcie_link_max_generation", gpu="1") == 5
    assert value(text, "nvidia_gpu_pcie_link_generation", gpu="3") == 5
    info = {dict(labels)["gpu"]: dict(labels) for name, labels in samples(text) if name == "nvidia_gpu_info"}
    assert info["0"]["serial"] == "1654923000000" and info["1"]["serial"] == "1654923000017"
    assert info["0"]["vbios_version"] == "96.00.99.00.01" and info["0"]["board_part_number"] == "692-2G520-0200-000"
    assert (info["0"]["minor_number"], info["1"]["minor_number"], info["2"]["minor_number"]) == ("1", "0", "2")
    assert (
        value(text, "nvidia_gpu_memory_temperature_celsius", gpu="0")
        == value(text, "nvidia_gpu_temperature_celsius", gpu="0") + 6
    )  # type: ignore[operator]
    assert value(text, "nvidia_gpu_power_default_limit_watts", gpu="0") == 700
    assert value(text, "nvidia_gpu_power_min_limit_watts", gpu="0") == 200
    assert value(text, "nvidia_gpu_power_max_limit_watts", gpu="0") == 700
    assert value(text, "nvidia_gpu_pstate", gpu="0") == 0 and value(text, "nvidia_gpu_pstate", gpu="1") == 1
    assert value(text, "nvidia_gpu_ecc_mode_enabled", gpu="0", state="current") == 1
    assert value(text, "nvidia_gpu_ecc_mode_enabled", gpu="0", state="pending") == 1
    assert value(text, "nvidia_gpu_decoder_utilization_ratio", gpu="1") == 0.03
    assert value(text, "nvidia_gpu_encoder_utilization_ratio", gpu="0") == 0
    assert value(text, "nvidia_gpu_fan_speed_ratio", gpu="0") is None  # SXM: no fan, left out
    assert value(text, "nvidia_gpu_recovery_action", gpu="2") == 1
    assert value(text, "nvidia_gpu_recovery_action", gpu="0") == 0


def test_nvlink_counters_per_link_behind_a_flag(sim: SimNvml) -> None:
    be = NvmlBackend(sim)
    be.open()
    _ctx, collectors = build(be, choose_collectors(()), timeout=2.0, proc_roots=["/proc"], nvlink_per_link=True)
    text = SnapshotPoller("gpu_exporter", collectors, interval=60).collect_once().text().decode()
    per_link = [labels for name, labels in samples(text) if name == "nvidia_gpu_nvlink_errors_total"]
    assert len(per_link) == 4 * 18 * 3
    assert value(text, "nvidia_gpu_nvlink_errors_total", gpu="1", link="17", type="crc") == 0


def test_gpm_activity_ratios_and_throughput(faults_path: Path) -> None:
    now = [1_000_000.0]
    save_faults(faults_path, [make_fault(0, "utilization", ["80"])])
    sim = SimNvml(gpus=2, faults_path=faults_path, clock=lambda: now[0])
    poller = _poller(sim, ["/proc"], ("activity",))
    first = poller.collect_once().text().decode()
    # GPM gives rates between two samples: nothing after the first cycle, no error either.
    assert value(first, "nvidia_gpu_sm_active_ratio", gpu="0") is None
    assert value(first, "gpu_exporter_nvml_errors_total") is None
    now[0] += 5
    text = poller.collect_once().text().decode()
    assert value(text, "nvidia_gpu_sm_active_ratio", gpu="0") == pytest.approx(0.72)
    assert value(text, "nvidia_gpu_sm_occupancy_ratio", gpu="0") == pytest.approx(0.36)
    assert value(text, "nvidia_gpu_tensor_active_ratio", gpu="0") == pytest.approx(0.48)
    assert value(text, "nvidia_gpu_dram_active_ratio", gpu="0") == pytest.approx(0.40)
    assert value(text, "nvidia_gpu_graphics_engine_active_ratio", gpu="0") == pytest.approx(0.80)
    assert value(text, "nvidia_gpu_pipe_active_ratio", gpu="0", pipe="fp64") == pytest.approx(0.016)
    assert value(text, "nvidia_gpu_pipe_active_ratio", gpu="0", pipe="fp16") == pytest.approx(0.08)
    mib = 1024 * 1024
    pcie_rx = value(text, "nvidia_gpu_pcie_throughput_bytes_per_second", gpu="0", direction="rx")
    assert pcie_rx == pytest.approx((20 + 120 * 80) * mib)
    nvlink_tx = value(text, "nvidia_gpu_nvlink_throughput_bytes_per_second", gpu="0", direction="tx")
    assert nvlink_tx == pytest.approx(2000 * 80 * mib)
    assert value(text, "nvidia_gpu_sm_active_ratio", gpu="1") is not None


def test_gpm_skipped_cleanly_where_unsupported(faults_path: Path) -> None:
    sim = SimNvml(gpus=2, faults_path=faults_path, gpm=False)  # an A100: GPM says not supported
    poller = _poller(sim, ["/proc"], ("activity",))
    poller.collect_once()
    text = poller.collect_once().text().decode()
    assert value(text, "nvidia_gpu_up", gpu="0") == 1
    assert value(text, "nvidia_gpu_sm_active_ratio") is None
    assert value(text, "gpu_exporter_nvml_errors_total") is None
    assert value(text, "gpu_exporter_collector_success", collector="activity") == 1


def test_mig_instances_memory_and_activity(sim: SimNvml, faults_path: Path) -> None:
    save_faults(faults_path, [make_fault(1, "mig", ["3"]), make_fault(1, "utilization", ["80"])])
    sim._reload_faults(force=True)
    poller = _poller(sim, ["/proc"])
    poller.collect_once()
    time.sleep(0.01)  # GPM rates need two samples apart in time
    text = poller.collect_once().text().decode()
    assert value(text, "nvidia_gpu_info", gpu="1", mig_mode="enabled") == 1
    assert value(text, "nvidia_gpu_info", gpu="0", mig_mode="disabled") == 1
    instances = [dict(labels) for name, labels in samples(text) if name == "nvidia_gpu_mig_memory_total_bytes"]
    assert sorted(i["gpu_instance_id"] for i in instances) == ["1", "2", "3"]
    assert all(i["gpu"] == "1" and i["mig_uuid"].startswith("MIG-") for i in instances)
    assert len({i["mig_uuid"] for i in instances}) == 3
    assert value(text, "nvidia_gpu_mig_memory_total_bytes", gpu="1", gpu_instance_id="2") == 9856 * 1024**2
    assert value(text, "nvidia_gpu_mig_memory_used_bytes", gpu="1", gpu_instance_id="2") == 16 * 1024**2 + 1024**3
    assert value(text, "gpu_exporter_nvml_errors_total", gpu="1") is None  # empty slots are not errors
    # GPM per GPU instance (nvmlGpmMigSampleGet): the sim gives instance N (1 - 0.1 (N-1)) of the load
    assert value(text, "nvidia_gpu_mig_sm_active_ratio", gpu="1", gpu_instance_id="1") == pytest.approx(0.72)
    assert value(text, "nvidia_gpu_mig_sm_active_ratio", gpu="1", gpu_instance_id="2") == pytest.approx(0.648)
    assert value(text, "nvidia_gpu_mig_tensor_active_ratio", gpu="1", gpu_instance_id="3") == pytest.approx(0.384)
    assert value(text, "nvidia_gpu_mig_sm_active_ratio", gpu="0") is None
