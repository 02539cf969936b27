"""A sick GPU never takes the exporter down: the real `gpu-exporter` process over the sim's
modelled driver failures (handle lookup raising, event waits raising GpuIsLost, NotSupported
functions and fields, a call that hangs and then answers late)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from exporters.gpu.backend import NvmlBackend
from exporters.gpu.cli import build, choose_collectors
from exporters.gpu.sim import SimNvml
from exporters.gpu.sim.faults import load_faults, make_fault, save_faults
from gpu_watchdog_core.poller import SnapshotPoller
from tests.gpu.conftest import Exporter, samples, sim_cli, value
from tests.harness.processes import http_get

pytestmark = pytest.mark.slow

StartExporter = Callable[..., Exporter]


def _up(text: str, gpu: str) -> float | None:
    return value(text, "nvidia_gpu_up", gpu=gpu)


def test_handle_lookup_failing_at_startup_leaves_that_gpu_down(start_exporter: StartExporter) -> None:
    exp = start_exporter(
        interval=0.5,
        faults_at_start=[make_fault(1, "handle_error", ["no_permission"]), make_fault(2, "lost")],
    )
    text, _ = exp.wait_for(lambda t: _up(t, "0") == 1, 5, "the healthy GPUs reporting")
    assert _up(text, "3") == 1 and value(text, "nvidia_gpu_temperature_celsius", gpu="3") is not None
    assert _up(text, "1") == 0 and _up(text, "2") == 0
    assert value(text, "nvidia_gpu_down_reason", gpu="1", uuid="unknown-1", reason="no_permission") == 1
    assert value(text, "nvidia_gpu_down_reason", gpu="2", reason="gpu_is_lost") == 1
    assert value(text, "nvidia_gpu_down_reason", gpu="0") is None
    assert value(text, "nvidia_gpu_temperature_celsius", gpu="1") is None
    status, health = http_get(f"{exp.url}/healthz")
    assert status == 200 and b"2/4 GPUs up (down: 1, 2)" in health
    # The lookup is retried every cycle: once NVML gives the handle, the GPU reports under its UUID.
    assert sim_cli(exp.faults, "clear", "--gpu", "1").returncode == 0
    text, _ = exp.wait_for(lambda t: _up(t, "1") == 1, 5, "GPU 1 acquired later")
    info = [dict(labels) for n, labels in samples(text) if n == "nvidia_gpu_info" and ("gpu", "1") in labels]
    assert info and info[0]["name"] == "NVIDIA H100 80GB HBM3" and info[0]["uuid"].startswith("GPU-"), info
    assert value(text, "nvidia_gpu_down_reason", gpu="1") is None
    assert value(text, "nvidia_gpu_temperature_celsius", gpu="1") is not None


def test_gpu_failing_every_call_later_is_down_with_reason(start_exporter: StartExporter) -> None:
    exp = start_exporter(interval=0.5)
    assert sim_cli(exp.faults, "inject", "--gpu", "3", "handle_error", "unknown").returncode == 0
    text, _ = exp.wait_for(lambda t: _up(t, "3") == 0, 5, "GPU 3 down")
    assert value(text, "nvidia_gpu_down_reason", gpu="3", reason="unknown") == 1
    assert value(text, "gpu_exporter_nvml_errors_total", gpu="3", error="Unknown") is not None
    assert all(_up(text, g) == 1 for g in ("0", "1", "2"))


def test_event_wait_gpu_lost_rebuilds_set_and_reregisters_after_reset(start_exporter: StartExporter) -> None:
    exp = start_exporter(interval=0.5)
    assert sim_cli(exp.faults, "inject", "--gpu", "2", "lost").returncode == 0
    text, _ = exp.wait_for(
        lambda t: (
            (value(t, "gpu_exporter_xid_wait_errors_total", error="GpuIsLost") or 0) >= 1
            and value(t, "gpu_exporter_xid_events_registered", gpu="2") == 0
        ),
        5,
        "the wait error counted and GPU 2 left out of the new event set",
    )
    # The other GPUs' XIDs still arrive through the re-created set.
    assert sim_cli(exp.faults, "inject", "--gpu", "0", "xid", "48").returncode == 0
    exp.wait_for(lambda t: value(t, "nvidia_gpu_xid_errors_total", gpu="0", xid="48") == 1, 5, "XID 48 on GPU 0")
    # A reset brings GPU 2 back and drops its registration: the exporter registers it again.
    assert sim_cli(exp.faults, "clear", "--gpu", "2").returncode == 0
    exp.wait_for(
        lambda t: _up(t, "2") == 1 and value(t, "gpu_exporter_xid_events_registered", gpu="2") == 1,
        5,
        "GPU 2 back and registered",
    )
    assert sim_cli(exp.faults, "inject", "--gpu", "2", "xid", "94").returncode == 0
    text, _ = exp.wait_for(
        lambda t: value(t, "nvidia_gpu_xid_errors_total", gpu="2", xid="94") == 1, 5, "XID 94 on GPU 2 after reset"
    )
    assert value(text, "gpu_exporter_xid_wait_errors_total", error="GpuIsLost") == 1


def test_not_supported_function_and_field_leave_series_out(start_exporter: StartExporter) -> None:
    exp = start_exporter(interval=0.5)
    assert sim_cli(exp.faults, "inject", "--gpu", "1", "unsupported", "nvmlDeviceGetTemperature").returncode == 0
    assert sim_cli(exp.faults, "inject", "--gpu", "1", "unsupported", "NVML_FI_DEV_ECC_DBE_VOL_TOTAL").returncode == 0
    text, _ = exp.wait_for(
        lambda t: (
            value(t, "nvidia_gpu_temperature_celsius", gpu="1") is None
            and value(t, "nvidia_gpu_ecc_errors_total", gpu="1", type="uncorrectable", counter="volatile") is None
        ),
        5,
        "GPU 1 temperature and DBE counter gone",
    )
    assert _up(text, "1") == 1  # a missing counter is normal, not a sick GPU
    assert value(text, "nvidia_gpu_ecc_errors_total", gpu="1", type="correctable", counter="volatile") is not None
    assert value(text, "nvidia_gpu_ecc_errors_total", gpu="0", type="uncorrectable", counter="volatile") == 0
    assert value(text, "nvidia_gpu_temperature_celsius", gpu="0") is not None
    assert value(text, "gpu_exporter_nvml_errors_total", gpu="1") is None


def test_late_answer_is_discarded_not_published(start_exporter: StartExporter) -> None:
    exp = start_exporter("--nvml-timeout=0.2", interval=0.5)
    # One call on GPU 0 blocks 2 s, then answers with the state from before the block. The fault
    # file is written directly here (the CLI takes a second or more to start on a busy machine).
    save_faults(exp.faults, [make_fault(0, "stall", ["2"])])
    exp.wait_for(lambda t: value(t, "nvidia_gpu_down_reason", gpu="0", reason="timeout") == 1, 5, "GPU 0 timed out")
    # While the call is stuck, GPU 0 gets a double-bit error: the late answer does not know it.
    save_faults(exp.faults, [*load_faults(exp.faults), make_fault(0, "ecc_dbe", ["2"])])
    stale: list[str] = []
    deadline = time.monotonic() + 6
    while time.monotonic() < deadline:
        text = exp.metrics()
        dbe = value(text, "nvidia_gpu_ecc_errors_total", gpu="0", type="uncorrectable", counter="volatile")
        if _up(text, "0") == 1 and dbe == 0:
            stale.append(text)
        if dbe == 2:
            break
        time.sleep(0.03)
    else:
        raise AssertionError("GPU 0 never reported the double-bit errors")
    assert not stale, "a sample from the stuck call was published after its deadline"
    assert value(text, "gpu_exporter_nvml_late_samples_discarded_total", gpu="0") == 1
    assert value(text, "gpu_exporter_nvml_timeouts_total", gpu="0") == 1


def test_collectors_run_in_dependency_order(faults_path: Path) -> None:
    sim = SimNvml(gpus=2, faults_path=faults_path)
    be = NvmlBackend(sim)
    be.open()
    try:
        # `power` named before `device`: power must still see this cycle's sample, not "not read yet".
        _ctx, collectors = build(be, choose_collectors(("power", "device")), timeout=2.0, proc_roots=["/proc"])
        assert [c.name for c in collectors] == ["device", "power"]
        text = SnapshotPoller("gpu_exporter", collectors, interval=60).collect_once().text().decode()
        assert value(text, "nvidia_gpu_power_watts", gpu="1") is not None
    finally:
        be.close()
