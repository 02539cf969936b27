"""NvmlBackend over the simulated NVML: values, pynvml's error classes, watchdog, XID events."""

from __future__ import annotations

import time
from pathlib import Path

import pynvml
import pytest

from exporters.gpu.backend import BackendUnavailable, NvmlBackend
from exporters.gpu.collectors import COLLECTOR_CLASSES
from exporters.gpu.sampler import GpuSampler
from exporters.gpu.sim import SimNvml
from exporters.gpu.sim.faults import Fault, load_faults, make_fault, save_faults
from exporters.gpu.xid import XidWatcher

ALL_READS = frozenset().union(*(c.reads for c in COLLECTOR_CLASSES))
ALL_FIELDS = sorted({f for c in COLLECTOR_CLASSES for f in (*c.fields, *c.slow_fields) if f[1] < 18})
SLOW_FIELDS = sorted({f for c in COLLECTOR_CLASSES for f in c.slow_fields})


def test_open_reads_h100_identity(backend: NvmlBackend) -> None:
    assert backend.count == 4
    assert backend.driver_version == "580.82.07"
    assert backend.cuda_version == "13.0"
    assert len({s.uuid for s in backend.static}) == 4
    assert all(s.uuid.startswith("GPU-") and s.name == "NVIDIA H100 80GB HBM3" for s in backend.static)
    assert all(s.nvlink_count == 18 and s.pci_bus_id.startswith("00000000:") for s in backend.static)


def test_sample_uses_one_batched_field_call(backend: NvmlBackend) -> None:
    sample = backend.sample(0, ALL_READS, ALL_FIELDS)
    assert sample.up and not sample.errors
    # 1 field-values call + utilization, temperature, memory, 2 clocks, reasons, MIG, processes,
    # 2 PCIe link, pstate, ECC mode, fan, encoder, decoder, GPM sample
    assert sample.calls == 17
    # The fan answered NOT_SUPPORTED (an SXM part has none): it is not asked again; from the
    # second cycle GPM also reads the metrics between two samples.
    assert sample.fan_speed_percent is None and not sample.gpm
    second = backend.sample(0, ALL_READS, ALL_FIELDS)
    assert second.calls == 17 and second.gpm
    assert 0 <= (sample.utilization_gpu or 0) <= 100
    assert sample.memory_total_bytes == 81559 * 1024 * 1024
    assert sample.field("NVML_FI_DEV_POWER_CURRENT_LIMIT") == 700_000
    assert sample.field("NVML_FI_DEV_NVLINK_ERROR_DL_CRC", 17) == 0
    # H100 answers NOT_SUPPORTED for retired pages: left out, not an error
    assert sample.field("NVML_FI_DEV_RETIRED_DBE") is None


def test_values_move_over_time(faults_path: Path) -> None:
    now = [1_000_000.0]
    sim = SimNvml(gpus=1, faults_path=faults_path, clock=lambda: now[0])
    be = NvmlBackend(sim)
    be.open()
    reads = frozenset({"utilization"})
    energy = ("NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION", 0)
    first = be.sample(0, reads, [energy])
    now[0] += 75  # a quarter of the sim's load period
    second = be.sample(0, reads, [energy])
    be.close()  # nvmlShutdown: the sim removes its proc directory
    assert not sim.proc_root.exists()
    assert first.utilization_gpu != second.utilization_gpu
    assert (second.field(energy[0]) or 0) > (first.field(energy[0]) or 0)


def test_sim_raises_pynvml_error_classes(sim: SimNvml, faults_path: Path) -> None:
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        sim.nvmlDeviceGetCount()
    sim.nvmlInit()
    handle = sim.nvmlDeviceGetHandleByIndex(1)
    assert isinstance(handle, pynvml.c_nvmlDevice_t)
    with pytest.raises(pynvml.NVMLError_NotSupported):
        sim.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU_MAX)
    save_faults(faults_path, [make_fault(1, "lost")])
    sim._reload_faults(force=True)
    with pytest.raises(pynvml.NVMLError_GpuIsLost):
        sim.nvmlDeviceGetUtilizationRates(handle)


def test_lost_gpu_maps_to_down_others_unaffected(backend: NvmlBackend, sim: SimNvml, faults_path: Path) -> None:
    save_faults(faults_path, [make_fault(2, "lost")])
    sim._reload_faults(force=True)
    results = [backend.sample(i, ALL_READS, ALL_FIELDS) for i in range(4)]
    assert [s.up for s in results] == [True, True, False, True]
    assert results[2].error == "GPU is lost"
    assert results[2].errors == {"GpuIsLost": 1}
    assert results[1].temperature_celsius is not None


class _OldDriverSim(SimNvml):
    """A driver without the POWER_INSTANT field id: the backend must fall back to the function."""

    def _field(self, gpu, faults, fid, scope, now):  # type: ignore[no-untyped-def]
        if fid == pynvml.NVML_FI_DEV_POWER_INSTANT:
            return None
        return super()._field(gpu, faults, fid, scope, now)


def test_field_not_supported_falls_back_to_function(faults_path: Path) -> None:
    be = NvmlBackend(_OldDriverSim(gpus=1, faults_path=faults_path))
    be.open()
    sample = be.sample(0, frozenset(), [("NVML_FI_DEV_POWER_INSTANT", 0)])
    be.close()
    assert sample.calls == 2  # the batched call, then nvmlDeviceGetPowerUsage
    assert (sample.field("NVML_FI_DEV_POWER_INSTANT") or 0) >= 70_000


def test_malformed_fault_file_keeps_last_good(backend: NvmlBackend, sim: SimNvml, faults_path: Path) -> None:
    save_faults(faults_path, [make_fault(0, "temperature", ["91"])])
    sim._reload_faults(force=True)
    assert backend.sample(0, ALL_READS, []).temperature_celsius == 91
    faults_path.write_text("faults: [ {gpu: 0, kind: temperature, value: }\n")  # half-written
    sim._reload_faults(force=True)
    assert backend.sample(0, ALL_READS, []).temperature_celsius == 91
    assert sim.fault_errors == 1
    faults_path.write_text("faults:\n  - {gpu: 0, kind: melt}\n")  # unknown kind
    sim._reload_faults(force=True)
    assert backend.sample(0, ALL_READS, []).temperature_celsius == 91


def test_hung_gpu_times_out_alone(backend: NvmlBackend, sim: SimNvml, faults_path: Path) -> None:
    save_faults(faults_path, [make_fault(1, "hang", ["2"])])
    sim._reload_faults(force=True)
    sampler = GpuSampler(backend, ALL_READS, ALL_FIELDS, timeout=0.3)
    try:
        started = time.monotonic()
        samples = sampler.refresh()
        assert time.monotonic() - started < 1.0
        assert [s.up for s in samples] == [True, False, True, True]
        assert "timeout" in (samples[1].error or "")
        # Still stuck next cycle: not asked again, not counted twice, others fine.
        samples = sampler.refresh()
        assert [s.up for s in samples] == [True, False, True, True]
        assert sampler.timeouts_total == [0, 1, 0, 0]
    finally:
        sampler.close()


def test_xid_delivered_once_per_injection(backend: NvmlBackend, sim: SimNvml, faults_path: Path) -> None:
    old = Fault(gpu=0, kind="xid", value=13, id="old", injected_at=time.time() - 3600)
    save_faults(faults_path, [old])
    watcher = XidWatcher(backend, wait_ms=100)
    watcher.register()
    watcher.start()
    try:
        save_faults(faults_path, [old, make_fault(3, "xid", ["79"])])
        deadline = time.monotonic() + 5
        while not watcher.snapshot().counts and time.monotonic() < deadline:
            time.sleep(0.05)
        state = watcher.snapshot()
        assert state.counts == {(3, 79): 1}  # the pre-start XID is history, as with NVML
        assert state.last == {3: 79}
        # Rewriting the file (another fault added) does not deliver the XID again.
        save_faults(faults_path, [*load_faults(faults_path), make_fault(0, "temperature", ["50"])])
        time.sleep(0.5)
        assert watcher.snapshot().counts == {(3, 79): 1}
        assert all(watcher.snapshot().registered.values())
    finally:
        watcher.stop()


def _real_nvml_reason() -> str | None:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return f"no NVIDIA driver here ({exc})"
    pynvml.nvmlShutdown()
    return None


NO_DRIVER = _real_nvml_reason()


@pytest.mark.skipif(NO_DRIVER is None, reason="an NVIDIA driver is present")
def test_real_pynvml_without_driver_is_unavailable() -> None:
    with pytest.raises(BackendUnavailable, match="NVML"):
        NvmlBackend(pynvml).open()


@pytest.mark.gpu
@pytest.mark.skipif(NO_DRIVER is not None, reason=f"real-NVML test: {NO_DRIVER}")
def test_real_nvml_backend_reads_every_gpu() -> None:
    be = NvmlBackend(pynvml)
    be.open()
    try:
        assert be.count >= 1
        for index in range(be.count):
            sample = be.sample(
                index, ALL_READS, [f for f in ALL_FIELDS if f[1] < be.static[index].nvlink_count or f[1] == 0]
            )
            assert sample.up, sample.error
            assert sample.memory_total_bytes and sample.temperature_celsius is not None
            assert sample.calls <= 18
    finally:
        be.close()


@pytest.mark.gpu
@pytest.mark.skipif(NO_DRIVER is not None, reason=f"real-NVML test: {NO_DRIVER}")
def test_real_nvml_xid_registration() -> None:
    be = NvmlBackend(pynvml)
    be.open()
    watcher = XidWatcher(be, wait_ms=100)
    try:
        watcher.register()
        watcher.start()
        time.sleep(0.3)
        assert any(watcher.snapshot().registered.values()), "no GPU accepted XID event registration"
    finally:
        watcher.stop()
        be.close()


@pytest.mark.parametrize("driver_events", [None, pynvml.nvmlEventTypeXidCriticalError])
def test_xid_watcher_registers_newer_event_types_where_the_driver_takes_them(
    faults_path: Path, driver_events: int | None
) -> None:
    sim = SimNvml(gpus=2, faults_path=faults_path, event_types=driver_events)
    be = NvmlBackend(sim)
    be.open()
    watcher = XidWatcher(be, wait_ms=100)
    try:
        watcher.register()
        assert watcher.snapshot().registered == {0: True, 1: True}
        masks = {gpu.event_mask for gpu in sim._gpus}
        if driver_events is None:  # a recent driver: XIDs plus the newer types this pynvml has
            assert masks == {sim.event_types} and sim.event_types != pynvml.nvmlEventTypeXidCriticalError
        else:  # an old driver refuses them: XIDs only, still registered
            assert masks == {pynvml.nvmlEventTypeXidCriticalError}
    finally:
        watcher.stop()
        be.close()


def test_hung_gpu_does_not_hold_the_gate_shut(backend: NvmlBackend, sim: SimNvml, faults_path: Path) -> None:
    """One GPU read at a time (parallelism 1) and GPU 0 hangs: at its timeout it gives its place
    back, and the other GPUs are still read in the same cycle."""
    save_faults(faults_path, [make_fault(0, "hang", ["3"])])
    sim._reload_faults(force=True)
    sampler = GpuSampler(backend, ALL_READS, ALL_FIELDS, timeout=0.3, parallelism=1)
    try:
        started = time.monotonic()
        samples = sampler.refresh()
        assert time.monotonic() - started < 1.0
        assert [s.up for s in samples] == [False, True, True, True]
        assert samples[0].reason == "timeout"
    finally:
        sampler.close()


@pytest.mark.gpu
@pytest.mark.skipif(NO_DRIVER is not None, reason=f"real-NVML test: {NO_DRIVER}")
def test_real_nvml_every_collector_two_cycles() -> None:
    """Every collector over the real driver, twice (GPM needs two samples); prints what the
    driver lacks, for docs/gpu-exporter.md."""
    from exporters.gpu.cli import build, choose_collectors
    from gpu_watchdog_core.poller import SnapshotPoller

    be = NvmlBackend(pynvml)
    be.open()
    ctx, collectors = build(be, choose_collectors(()), timeout=5.0, proc_roots=["/proc"])
    try:
        poller = SnapshotPoller("gpu_exporter", collectors, interval=60)
        poller.collect_once()
        time.sleep(1)
        text = poller.collect_once().text().decode()
        assert all(s.up for s in ctx.sampler.samples), [s.error for s in ctx.sampler.samples]
        assert "gpu_exporter_collector_success{collector=" in text
        assert 'gpu_exporter_collector_success{collector="device"} 1.0' in text
        print("\n".join(line for line in text.splitlines() if line.startswith("gpu_exporter_field_errors_total")))
        print("GPM supported per GPU:", [st.gpm_supported for st in be.static])
    finally:
        if ctx.xid:
            ctx.xid.stop()
        ctx.sampler.close()
        be.close()


def test_slow_fields_read_every_few_seconds_and_carried_between(
    backend: NvmlBackend, sim: SimNvml, faults_path: Path
) -> None:
    crc = ("NVML_FI_DEV_NVLINK_ERROR_DL_CRC", 3)
    fast = sorted(set(ALL_FIELDS) - set(SLOW_FIELDS))
    sampler = GpuSampler(backend, ALL_READS, fast, timeout=2.0, slow_fields=SLOW_FIELDS, slow_every_s=0.5)
    try:
        assert sampler.refresh()[0].field(*crc) == 0
        # The driver stops answering the field: not asked again yet, the last value carries.
        save_faults(faults_path, [make_fault(0, "unsupported", ["NVML_FI_DEV_NVLINK_ERROR_DL_CRC"])])
        sim._reload_faults(force=True)
        assert sampler.refresh()[0].field(*crc) == 0
        time.sleep(0.5)
        assert sampler.refresh()[0].field(*crc) is None  # read again: and now it is missing
        assert sampler.samples[1].field(*crc) == 0
    finally:
        sampler.close()
