"""`SimNvml`: the pynvml function surface over simulated H100s whose readings move over time.

Everything the exporter calls is here with pynvml's signature, return types (pynvml's own
ctypes structs and friendly objects) and errors (pynvml's `NVMLError_*` classes), so
`NvmlBackend(SimNvml(...))` runs exactly the code `NvmlBackend(pynvml)` runs on a GPU node.

Faults come from a file (see faults.py) that is re-read when its mtime changes, checked at
most every 100 ms from inside NVML calls, so a fault shows up in the next collection cycle
and an injected XID reaches a waiting `nvmlEventSetWait_v2` within ~100 ms.
"""

from __future__ import annotations

import collections
import ctypes
import logging
import math
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pynvml

from exporters.gpu.sim.faults import Fault, FaultFileError, load_faults

log = logging.getLogger(__name__)

GIB = 1024**3
H100_NAME = "NVIDIA H100 80GB HBM3"
H100_MEMORY = 81559 * 1024 * 1024
H100_POWER_LIMIT_MW = 700_000
H100_IDLE_MW = 70_000
H100_SM_MAX_MHZ = 1980
H100_SM_IDLE_MHZ = 345
H100_MEM_MHZ = 2619
H100_NVLINKS = 18
H100_PCIE_GEN = 5
H100_MIG_SLICES = 7
H100_MIG_MEMORY = 9856 * 1024 * 1024  # a 1g.10gb instance
H100_PCIE_WIDTH = 16
H100_POWER_MIN_MW = 200_000
H100_VBIOS = "96.00.99.00.01"
H100_BOARD_PART = "692-2G520-0200-000"
DRIVER_VERSION = "580.82.07"
CUDA_VERSION = 13000
H100_RESERVED = 535 * 1024 * 1024  # what the driver keeps for itself: in v1 "used", not in v2
NOT_MIG = 0xFFFFFFFF
RELOAD_EVERY_S = 0.1

_THROTTLE_BITS = {
    "idle": pynvml.nvmlClocksEventReasonGpuIdle,
    "applications_clocks": pynvml.nvmlClocksEventReasonApplicationsClocksSetting,
    "power_cap": pynvml.nvmlClocksEventReasonSwPowerCap,
    "hw_slowdown": pynvml.nvmlClocksEventReasonHwSlowdown,
    "sync_boost": pynvml.nvmlClocksEventReasonSyncBoost,
    "sw_thermal": pynvml.nvmlClocksEventReasonSwThermalSlowdown,
    "thermal": pynvml.nvmlClocksEventReasonHwThermalSlowdown,
    "hw_power_brake": pynvml.nvmlClocksEventReasonHwPowerBrakeSlowdown,
    "display_clocks": pynvml.nvmlClocksEventReasonDisplayClockSetting,
}
# The driver's own field numbering, by name. Stable ids are pynvml's; the throttle-duration ids
# depend on the driver branch (absent before 575, 251-253 in 575, 269-271 from 580 on, where
# 251-253 are power-smoothing fields this sim does not have).
_THROTTLE_TIME_FIELDS = {
    "NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_POWER_CAP": "power_cap",
    "NVML_FI_DEV_CLOCKS_EVENT_REASON_SYNC_BOOST": "sync_boost",
    "NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN": "sw_thermal",
    "NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN": "thermal",
    "NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN": "hw_power_brake",
    # the same ids under the names pynvml releases before 12.575 use
    "NVML_FI_DEV_PERF_POLICY_POWER": "power_cap",
    "NVML_FI_DEV_PERF_POLICY_SYNC_BOOST": "sync_boost",
}
_DRIVER_THROTTLE_IDS = {
    575: {
        "NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN": 251,
        "NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN": 252,
        "NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN": 253,
    },
    580: {
        "NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN": 269,
        "NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN": 270,
        "NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN": 271,
    },
}
_NVLINK_FIELDS = {
    "NVML_FI_DEV_NVLINK_ERROR_DL_CRC",
    "NVML_FI_DEV_NVLINK_ERROR_DL_REPLAY",
    "NVML_FI_DEV_NVLINK_ERROR_DL_RECOVERY",
}
# H100 replaced page retirement with row remapping: these answer NOT_SUPPORTED, as on the real part.
_UNSUPPORTED_FIELDS = {"NVML_FI_DEV_RETIRED_SBE", "NVML_FI_DEV_RETIRED_DBE", "NVML_FI_DEV_RETIRED_PENDING"}


_SERVED_FIELDS = (
    "NVML_FI_DEV_NVLINK_LINK_COUNT",
    "NVML_FI_DEV_ECC_SBE_VOL_TOTAL",
    "NVML_FI_DEV_ECC_DBE_VOL_TOTAL",
    "NVML_FI_DEV_ECC_SBE_AGG_TOTAL",
    "NVML_FI_DEV_ECC_DBE_AGG_TOTAL",
    "NVML_FI_DEV_REMAPPED_COR",
    "NVML_FI_DEV_REMAPPED_UNC",
    "NVML_FI_DEV_REMAPPED_PENDING",
    "NVML_FI_DEV_REMAPPED_FAILURE",
    "NVML_FI_DEV_PCIE_REPLAY_COUNTER",
    "NVML_FI_DEV_POWER_INSTANT",
    "NVML_FI_DEV_POWER_CURRENT_LIMIT",
    "NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
    "NVML_FI_DEV_MEMORY_TEMP",
    "NVML_FI_DEV_POWER_DEFAULT_LIMIT",
    "NVML_FI_DEV_POWER_MIN_LIMIT",
    "NVML_FI_DEV_POWER_MAX_LIMIT",
    "NVML_FI_DEV_GET_GPU_RECOVERY_ACTION",
)


def driver_field_ids(driver_version: str) -> dict[int, str]:
    """Field id -> name as a driver of this version numbers them."""
    branch = int(driver_version.split(".", maxsplit=1)[0])
    moved = {name for ids in _DRIVER_THROTTLE_IDS.values() for name in ids}
    out: dict[int, str] = {}
    # The names this sim serves first: pynvml has aliases (SW_POWER_CAP is PERF_POLICY_POWER).
    names = [*_SERVED_FIELDS, *_THROTTLE_TIME_FIELDS, *_NVLINK_FIELDS, *_UNSUPPORTED_FIELDS, *dir(pynvml)]
    for name in names:
        if name.startswith("NVML_FI_") and name not in moved and isinstance(getattr(pynvml, name, None), int):
            out.setdefault(getattr(pynvml, name), name)
    for first, ids in sorted(_DRIVER_THROTTLE_IDS.items()):
        if branch >= first:
            for name, fid in ids.items():
                out[fid] = name
    return out


XID_AND_NEWER_EVENTS = (
    pynvml.nvmlEventTypeXidCriticalError
    | getattr(pynvml, "nvmlEventTypeGpuUnavailableError", 0)
    | getattr(pynvml, "nvmlEventTypeGpuRecoveryAction", 0)
)

# GPM metric id -> (base, per percent of load): percentages, or MiB/s for throughput. A busy
# H100 training job: SMs mostly active, tensor cores about half the time, little FP64.
_GPM_LOAD_FACTORS: dict[int, tuple[float, float]] = {
    getattr(pynvml, name): factors
    for name, factors in {
        "NVML_GPM_METRIC_GRAPHICS_UTIL": (0.0, 1.0),
        "NVML_GPM_METRIC_SM_UTIL": (0.0, 0.9),
        "NVML_GPM_METRIC_SM_OCCUPANCY": (0.0, 0.45),
        "NVML_GPM_METRIC_ANY_TENSOR_UTIL": (0.0, 0.6),
        "NVML_GPM_METRIC_DRAM_BW_UTIL": (0.0, 0.5),
        "NVML_GPM_METRIC_FP64_UTIL": (0.0, 0.02),
        "NVML_GPM_METRIC_FP32_UTIL": (0.0, 0.2),
        "NVML_GPM_METRIC_FP16_UTIL": (0.0, 0.1),
        "NVML_GPM_METRIC_PCIE_TX_PER_SEC": (12.0, 40.0),
        "NVML_GPM_METRIC_PCIE_RX_PER_SEC": (20.0, 120.0),
        "NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC": (0.0, 2000.0),
        "NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC": (0.0, 2000.0),
    }.items()
    if hasattr(pynvml, name)
}

_HANDLE_ERRORS = {
    "gpu_is_lost": pynvml.NVML_ERROR_GPU_IS_LOST,
    "no_permission": pynvml.NVML_ERROR_NO_PERMISSION,
    "unknown": pynvml.NVML_ERROR_UNKNOWN,
}


def _err(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


@dataclass
class _Gpu:
    index: int
    handle: Any
    uuid: str
    pci_bus_id: str
    phase: float
    sbe_baseline: int
    energy_mj: float = 0.0
    last_energy_at: float = 0.0
    throttle_ns: dict[str, float] = field(default_factory=dict)
    last_throttle_at: float = 0.0
    registered: set[int] = field(default_factory=set)  # ids of event sets
    event_mask: int = 0  # event types last registered


@dataclass
class _GpuFaults:
    lost: bool = False
    hang: float = 0.0
    stalls: list[Fault] = field(default_factory=list)  # each blocks one call, once
    handle_error: str | None = None
    unsupported: set[str] = field(default_factory=set)  # pynvml function or NVML_FI_ names
    pcie_link: tuple[int, int] | None = None  # (generation, width) the link trained at
    mig: int = 0  # MIG instances (0: MIG mode off)
    recovery_action: int = 0
    temperature: float | None = None
    utilization: float | None = None
    ecc_dbe: int = 0
    remap_failure: bool = False
    throttle: set[str] = field(default_factory=set)
    processes: list[Fault] = field(default_factory=list)


class _EventSet:
    def __init__(self) -> None:
        self.struct = pynvml.struct_c_nvmlEventSet_t()
        self.pointer = ctypes.pointer(self.struct)
        self.events: collections.deque[pynvml.c_nvmlEventData_t] = collections.deque()


class SimNvml:
    """Simulated NVML with `gpus` H100s. `clock` is injectable so tests can move time."""

    def __init__(
        self,
        gpus: int = 8,
        faults_path: str | Path | None = None,
        *,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
        event_types: int | None = None,
        driver_version: str = DRIVER_VERSION,
        gpm: bool = True,
    ) -> None:
        self.gpu_count = gpus
        self.driver_version = driver_version
        self.gpm = gpm
        self._gpm_samples: dict[int, list[Any]] = {}  # struct address -> [struct, (gpu, time, load)]
        self._field_names = driver_field_ids(driver_version)
        # Event types the simulated driver accepts: by default XIDs plus the newer types this
        # pynvml knows (a recent driver); pass nvmlEventTypeXidCriticalError to model an old one.
        self.event_types = event_types if event_types is not None else XID_AND_NEWER_EVENTS
        self.faults_path = Path(faults_path) if faults_path else None
        self.clock = clock
        self.started_at = clock()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._initialised = 0
        self._gpus: list[_Gpu] = []
        self._by_handle: dict[int, _Gpu] = {}
        self._structs: list[Any] = []
        for i in range(gpus):
            struct = pynvml.struct_c_nvmlDevice_t()
            self._structs.append(struct)
            handle = ctypes.pointer(struct)
            gpu = _Gpu(
                index=i,
                handle=handle,
                uuid=f"GPU-{uuid.uuid5(uuid.NAMESPACE_OID, f'gpu-watchdog-sim/{seed}/{i}')}",
                pci_bus_id=f"00000000:{0x18 + 0x10 * i:02X}:00.0" if i < 14 else f"00000001:{i:02X}:00.0",
                phase=(i * 2.399) % (2 * math.pi),
                sbe_baseline=(i * 7) % 3,
                energy_mj=(1_000_000_000 + i * 37_000_000) * 1.0,
                last_energy_at=self.started_at,
                last_throttle_at=self.started_at,
            )
            self._gpus.append(gpu)
            self._by_handle[ctypes.addressof(struct)] = gpu
        self._faults: dict[int, _GpuFaults] = {}
        self._delivered: set[str] = set()
        self._stalled: set[str] = set()  # stall faults already served
        self._mig_structs: dict[tuple[int, int], Any] = {}  # (gpu, MIG index) -> device struct
        self._mig_by_handle: dict[int, tuple[int, int]] = {}
        self._event_sets: dict[int, _EventSet] = {}
        self._mtime: tuple[int, int, int] | None = None
        self._next_reload = 0.0
        self._reload_lock = threading.Lock()
        self.fault_errors = 0
        self.proc_root = Path(tempfile.mkdtemp(prefix="gpu-sim-proc-"))
        self._reload_faults(force=True)

    # -- faults ----------------------------------------------------------------------------

    def _reload_faults(self, force: bool = False) -> None:
        if not force and time.monotonic() < self._next_reload:
            return
        with self._reload_lock:  # GPU worker threads call in parallel: one reads, the rest wait
            if not force and time.monotonic() < self._next_reload:
                return
            self._next_reload = time.monotonic() + RELOAD_EVERY_S
            self._reload_locked(force)

    def _reload_locked(self, force: bool) -> None:
        if self.faults_path is None:
            return
        try:
            st = self.faults_path.stat()
            # rename-on-write gives a new inode even within one mtime tick
            mtime: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_ino, st.st_size)
        except FileNotFoundError:
            mtime = None
        except OSError:
            return
        if mtime == self._mtime and not force:
            return
        try:
            faults = load_faults(self.faults_path)
        except FaultFileError as exc:
            # Keep the last good faults: a half-edited file must not heal every GPU at once.
            self.fault_errors += 1
            self._mtime = mtime
            log.warning("ignoring malformed fault file, keeping the last good faults", extra={"error": str(exc)})
            return
        self._mtime = mtime
        self._apply(faults)

    def _apply(self, faults: Sequence[Fault]) -> None:
        by_gpu: dict[int, _GpuFaults] = {}
        new_xids: list[Fault] = []
        for fault in faults:
            if fault.gpu >= self.gpu_count:
                log.warning("fault names a GPU the sim does not have", extra={"gpu": fault.gpu, "kind": fault.kind})
                continue
            state = by_gpu.setdefault(fault.gpu, _GpuFaults())
            if fault.kind == "xid":
                if fault.id not in self._delivered:
                    self._delivered.add(fault.id)
                    # Like NVML, events from before this process registered are never delivered.
                    if fault.injected_at is None or fault.injected_at >= self.started_at - 1:
                        new_xids.append(fault)
            elif fault.kind == "lost":
                state.lost = True
            elif fault.kind == "stall":
                state.stalls.append(fault)
            elif fault.kind == "handle_error":
                state.handle_error = str(fault.value)
            elif fault.kind == "unsupported":
                state.unsupported.add(str(fault.value))
            elif fault.kind == "pcie_link":
                gen, width = str(fault.value).lower().split("x")
                state.pcie_link = (int(gen), int(width))
            elif fault.kind == "mig":
                state.mig = int(fault.value)
            elif fault.kind == "recovery_action":
                state.recovery_action = int(fault.value)
            elif fault.kind == "hang":
                state.hang = float(fault.value)
            elif fault.kind == "temperature":
                state.temperature = float(fault.value)
            elif fault.kind == "utilization":
                state.utilization = float(fault.value)
            elif fault.kind == "ecc_dbe":
                state.ecc_dbe += int(fault.value if fault.value is not None else 1)
            elif fault.kind == "row_remap_failure":
                state.remap_failure = True
            elif fault.kind == "throttle":
                state.throttle.add(str(fault.value))
            elif fault.kind == "process":
                state.processes.append(fault)
        self._write_proc_entries(by_gpu)
        with self._cond:
            for index, before in self._faults.items():
                if before.lost and not by_gpu.get(index, _GpuFaults()).lost:
                    # Back on the bus means the GPU was reset: like the driver, forget its event
                    # registrations; a watcher must register it again to see its XIDs.
                    self._gpus[index].registered.clear()
            self._faults = by_gpu
            for fault in new_xids:
                gpu = self._gpus[fault.gpu]
                for set_id in gpu.registered:
                    event_set = self._event_sets.get(set_id)
                    if event_set is None:
                        continue
                    data = pynvml.c_nvmlEventData_t()
                    data.device = gpu.handle
                    data.eventType = pynvml.nvmlEventTypeXidCriticalError
                    data.eventData = int(fault.value)
                    data.gpuInstanceId = NOT_MIG
                    data.computeInstanceId = NOT_MIG
                    event_set.events.append(data)
            if new_xids:
                self._cond.notify_all()

    def _write_proc_entries(self, by_gpu: dict[int, _GpuFaults]) -> None:
        """A cgroup file per simulated process with a job id, as slurmd would leave under /proc."""
        wanted: dict[str, str] = {}
        for state in by_gpu.values():
            for proc in state.processes:
                if proc.job_id:
                    wanted[str(proc.value)] = proc.job_id
        for entry in self.proc_root.iterdir():
            if entry.name not in wanted:
                shutil.rmtree(entry, ignore_errors=True)
        for pid, job in wanted.items():
            base = self.proc_root / pid
            base.mkdir(exist_ok=True)
            # Alternate the cgroup v2 and v1 layouts so both parsers paths are exercised.
            if int(pid) % 2:
                text = f"0::/system.slice/slurmstepd.scope/job_{job}/step_0/user/task_0\n"
            else:
                text = f"12:memory:/slurm/uid_0/job_{job}/step_0/task_0\n4:devices:/slurm/uid_0/job_{job}/step_0\n"
            path = base / "cgroup"
            if not path.exists() or path.read_text() != text:
                path.write_text(text)

    # -- helpers ---------------------------------------------------------------------------

    def _check_init(self) -> None:
        if not self._initialised:
            raise _err(pynvml.NVML_ERROR_UNINITIALIZED)

    def _device(self, handle: Any) -> tuple[_Gpu, _GpuFaults]:
        self._check_init()
        try:
            gpu = self._by_handle[ctypes.addressof(handle.contents)]
        except (AttributeError, KeyError, ValueError):
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT) from None
        self._reload_faults()
        faults = self._faults.get(gpu.index) or _GpuFaults()
        if faults.hang:
            time.sleep(faults.hang)  # a wedged driver call: the exporter's watchdog must cope
        stall = self._take_stall(faults)
        if stall:
            # Blocks, then answers from the state at the time of the call (`faults` was read
            # before the sleep): a late answer carries old readings, as a stuck driver call does.
            time.sleep(stall)
        if faults.lost:
            raise _err(pynvml.NVML_ERROR_GPU_IS_LOST)
        if faults.handle_error:  # a GPU in this state answers every call with the same error
            raise _err(_HANDLE_ERRORS[faults.handle_error])
        # The calling sim function's name: a driver branch lacking it answers NOT_SUPPORTED.
        if faults.unsupported and sys._getframe(1).f_code.co_name in faults.unsupported:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return gpu, faults

    def _take_stall(self, faults: _GpuFaults) -> float:
        with self._lock:
            for fault in faults.stalls:
                if fault.id not in self._stalled:
                    self._stalled.add(fault.id)
                    return float(fault.value)
        return 0.0

    def _utilization(self, gpu: _Gpu, faults: _GpuFaults, now: float) -> float:
        if faults.utilization is not None:
            return faults.utilization
        wave = 55 + 40 * math.sin(2 * math.pi * now / 300 + gpu.phase) + 4 * math.sin(now * 1.7 + gpu.phase * 3)
        return max(0.0, min(100.0, round(wave)))

    def _power_mw(self, gpu: _Gpu, faults: _GpuFaults, now: float) -> float:
        util = self._utilization(gpu, faults, now)
        power = H100_IDLE_MW + util / 100 * (H100_POWER_LIMIT_MW - H100_IDLE_MW - 40_000)
        if "power_cap" in faults.throttle:
            power = H100_POWER_LIMIT_MW - 2_000
        return float(round(power))

    def _temperature(self, gpu: _Gpu, faults: _GpuFaults, now: float) -> float:
        if faults.temperature is not None:
            return faults.temperature
        return float(round(31 + 0.45 * self._utilization(gpu, faults, now)))

    def _reasons(self, gpu: _Gpu, faults: _GpuFaults, now: float) -> int:
        bits = 0
        if self._utilization(gpu, faults, now) < 5:
            bits |= _THROTTLE_BITS["idle"]
        for reason in faults.throttle:
            bits |= _THROTTLE_BITS[reason]
        return bits

    def _advance(self, gpu: _Gpu, faults: _GpuFaults, now: float) -> None:
        """Integrate energy and throttle time up to now (counters only ever move forward)."""
        dt = max(0.0, now - gpu.last_energy_at)
        gpu.energy_mj += self._power_mw(gpu, faults, now) * dt
        gpu.last_energy_at = now
        dt = max(0.0, now - gpu.last_throttle_at)
        for reason in faults.throttle:
            gpu.throttle_ns[reason] = gpu.throttle_ns.get(reason, 0.0) + dt * 1e9
        gpu.last_throttle_at = now

    def _process_memory(self, gpu: _Gpu, faults: _GpuFaults) -> int:
        return len(faults.processes) * 8 * GIB

    # -- system ----------------------------------------------------------------------------

    def nvmlInit(self) -> None:
        with self._lock:
            self._initialised += 1

    def nvmlInitWithFlags(self, flags: int) -> None:
        self.nvmlInit()

    def nvmlShutdown(self) -> None:
        self._check_init()
        with self._lock:
            self._initialised -= 1
            if not self._initialised:
                shutil.rmtree(self.proc_root, ignore_errors=True)

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check_init()
        return self.driver_version

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._check_init()
        return CUDA_VERSION

    def nvmlDeviceGetCount(self) -> int:
        self._check_init()
        return self.gpu_count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        self._check_init()
        if not 0 <= index < self.gpu_count:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        self._reload_faults()
        faults = self._faults.get(index) or _GpuFaults()
        if faults.lost:
            raise _err(pynvml.NVML_ERROR_GPU_IS_LOST)
        if faults.handle_error:
            raise _err(_HANDLE_ERRORS[faults.handle_error])
        return self._gpus[index].handle

    # -- device identity -------------------------------------------------------------------

    def nvmlDeviceGetIndex(self, handle: Any) -> int:
        return self._device(handle)[0].index

    def nvmlDeviceGetUUID(self, handle: Any) -> str:
        mig = self._mig(handle)
        if mig is not None:
            return f"MIG-{uuid.uuid5(uuid.NAMESPACE_OID, f'{mig[0].uuid}/{mig[2]}')}"
        return self._device(handle)[0].uuid

    def nvmlDeviceGetName(self, handle: Any) -> str:
        self._device(handle)
        return H100_NAME

    def nvmlDeviceGetPciInfo(self, handle: Any) -> Any:
        gpu, _ = self._device(handle)
        info = pynvml.nvmlPciInfo_t()
        info.busId = gpu.pci_bus_id.encode()
        info.busIdLegacy = gpu.pci_bus_id.encode()
        info.domain = int(gpu.pci_bus_id[:8], 16)
        info.bus = int(gpu.pci_bus_id[9:11], 16)
        info.pciDeviceId = 0x233010DE
        return info

    def nvmlDeviceGetSerial(self, handle: Any) -> str:
        gpu, _ = self._device(handle)
        return f"{1654923000000 + gpu.index * 17:013d}"

    def nvmlDeviceGetVbiosVersion(self, handle: Any) -> str:
        self._device(handle)
        return H100_VBIOS

    def nvmlDeviceGetBoardPartNumber(self, handle: Any) -> str:
        self._device(handle)
        return H100_BOARD_PART

    def nvmlDeviceGetMinorNumber(self, handle: Any) -> int:
        gpu, _ = self._device(handle)
        # Not the NVML index on every real node (the index follows PCI order, the minor the
        # driver's probe order): the sim swaps the first two so a join on index would show it.
        return {0: 1, 1: 0}.get(gpu.index, gpu.index) if self.gpu_count > 1 else gpu.index

    def nvmlDeviceGetMaxPcieLinkGeneration(self, handle: Any) -> int:
        self._device(handle)
        return H100_PCIE_GEN

    def nvmlDeviceGetMaxPcieLinkWidth(self, handle: Any) -> int:
        self._device(handle)
        return H100_PCIE_WIDTH

    def nvmlDeviceGetCurrPcieLinkGeneration(self, handle: Any) -> int:
        gpu, faults = self._device(handle)
        if faults.pcie_link is not None:
            return faults.pcie_link[0]
        # Like the real part, an idle GPU drops its link to gen 1 to save power: not a fault.
        return 1 if self._utilization(gpu, faults, self.clock()) < 5 else H100_PCIE_GEN

    def nvmlDeviceGetCurrPcieLinkWidth(self, handle: Any) -> int:
        _gpu, faults = self._device(handle)
        return faults.pcie_link[1] if faults.pcie_link is not None else H100_PCIE_WIDTH

    def nvmlDeviceGetPerformanceState(self, handle: Any) -> int:
        gpu, faults = self._device(handle)
        return 0 if self._utilization(gpu, faults, self.clock()) >= 5 else 1

    def nvmlDeviceGetEccMode(self, handle: Any) -> list[int]:
        self._device(handle)
        return [1, 1]

    def nvmlDeviceGetFanSpeed(self, handle: Any) -> int:
        self._device(handle)
        raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)  # SXM parts have no fan of their own

    def nvmlDeviceGetEncoderUtilization(self, handle: Any) -> list[int]:
        self._device(handle)
        return [0, 167_000]

    def nvmlDeviceGetDecoderUtilization(self, handle: Any) -> list[int]:
        gpu, _ = self._device(handle)
        return [3 if gpu.index % 4 == 1 else 0, 167_000]

    def nvmlDeviceGetMigMode(self, handle: Any) -> list[int]:
        _gpu, faults = self._device(handle)
        return [1, 1] if faults.mig else [0, 0]

    # -- MIG: `mig N` carves the GPU into N 1g.10gb instances (GPU instance i+1, compute instance 0)

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: Any) -> int:
        self._device(handle)
        return H100_MIG_SLICES

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: Any, index: int) -> Any:
        gpu, faults = self._device(handle)
        if not faults.mig:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)  # not in MIG mode
        if not 0 <= index < faults.mig:
            raise _err(pynvml.NVML_ERROR_NOT_FOUND)
        key = (gpu.index, index)
        with self._lock:
            if key not in self._mig_structs:
                struct = pynvml.struct_c_nvmlDevice_t()
                self._mig_structs[key] = struct
                self._mig_by_handle[ctypes.addressof(struct)] = key
            return ctypes.pointer(self._mig_structs[key])

    def _mig(self, handle: Any) -> tuple[_Gpu, _GpuFaults, int] | None:
        """(parent GPU, its faults, MIG index) when `handle` is a MIG device handle."""
        try:
            key = self._mig_by_handle.get(ctypes.addressof(handle.contents))
        except (AttributeError, ValueError):
            return None
        if key is None:
            return None
        gpu = self._gpus[key[0]]
        _gpu, faults = self._device(gpu.handle)
        if key[1] >= faults.mig:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)  # the instance was destroyed
        return gpu, faults, key[1]

    def nvmlDeviceGetGpuInstanceId(self, handle: Any) -> int:
        mig = self._mig(handle)
        if mig is None:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return mig[2] + 1

    def nvmlDeviceGetComputeInstanceId(self, handle: Any) -> int:
        if self._mig(handle) is None:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return 0

    # -- readings --------------------------------------------------------------------------

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        gpu, faults = self._device(handle)
        util = self._utilization(gpu, faults, self.clock())
        rates = pynvml.c_nvmlUtilization_t()
        rates.gpu = int(util)
        rates.memory = int(util * 0.6)
        return rates

    def nvmlDeviceGetTemperature(self, handle: Any, sensor: int) -> int:
        gpu, faults = self._device(handle)
        if sensor != pynvml.NVML_TEMPERATURE_GPU:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        return int(self._temperature(gpu, faults, self.clock()))

    def nvmlDeviceGetMemoryInfo(self, handle: Any, version: int | None = None) -> Any:
        """v1 counts the driver's reserved memory as used; v2 (`version=nvmlMemory_v2`) reports it
        apart and leaves it out of `used`, as nvidia-smi shows it."""
        mig = self._mig(handle)
        if mig is not None:  # one 1g.10gb instance: its own slice of memory, its own processes' use
            mem = pynvml.c_nvmlMemory_t()
            mem.total = H100_MIG_MEMORY
            mem.used = min(H100_MIG_MEMORY, 16 * 1024 * 1024 + (mig[2] % 3) * GIB)
            mem.free = mem.total - mem.used
            return mem
        gpu, faults = self._device(handle)
        util = self._utilization(gpu, faults, self.clock())
        used = min(
            H100_MEMORY - H100_RESERVED,
            64 * 1024 * 1024 + self._process_memory(gpu, faults) + int(util / 100 * 60 * GIB),
        )
        if version:
            if "nvmlDeviceGetMemoryInfo_v2" in faults.unsupported:  # an old driver without the v2 entry point
                raise _err(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
            if version != getattr(pynvml, "nvmlMemory_v2", None):
                raise _err(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
            mem2 = pynvml.c_nvmlMemory_v2_t()
            mem2.version = version
            mem2.total = H100_MEMORY
            mem2.reserved = H100_RESERVED
            mem2.used = used
            mem2.free = H100_MEMORY - H100_RESERVED - used
            return mem2
        mem = pynvml.c_nvmlMemory_t()
        mem.total = H100_MEMORY
        mem.used = used + H100_RESERVED
        mem.free = H100_MEMORY - H100_RESERVED - used
        return mem

    def nvmlDeviceGetClockInfo(self, handle: Any, clock_type: int) -> int:
        gpu, faults = self._device(handle)
        if clock_type == pynvml.NVML_CLOCK_MEM:
            return H100_MEM_MHZ
        if clock_type != pynvml.NVML_CLOCK_SM:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        now = self.clock()
        if self._utilization(gpu, faults, now) < 5:
            return H100_SM_IDLE_MHZ
        held = faults.throttle - {"idle", "applications_clocks", "display_clocks", "sync_boost"}
        return 1305 if held else H100_SM_MAX_MHZ

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: Any) -> int:
        gpu, faults = self._device(handle)
        return self._reasons(gpu, faults, self.clock())

    def nvmlDeviceGetPowerUsage(self, handle: Any) -> int:
        gpu, faults = self._device(handle)
        return int(self._power_mw(gpu, faults, self.clock()))

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: Any) -> int:
        self._device(handle)
        return H100_POWER_LIMIT_MW

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: Any) -> int:
        gpu, faults = self._device(handle)
        self._advance(gpu, faults, self.clock())
        return int(gpu.energy_mj)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: Any) -> list[Any]:
        _gpu, faults = self._device(handle)
        procs = []
        for fault in faults.processes:
            info = pynvml.c_nvmlProcessInfo_t()
            info.pid = int(fault.value)
            info.usedGpuMemory = 8 * GIB
            info.gpuInstanceId = NOT_MIG
            info.computeInstanceId = NOT_MIG
            procs.append(pynvml.nvmlStructToFriendlyObject(info))
        return procs

    def nvmlDeviceGetFieldValues(self, handle: Any, field_ids: Sequence[int | tuple[int, int]]) -> Any:
        gpu, faults = self._device(handle)
        now = self.clock()
        self._advance(gpu, faults, now)
        values = (pynvml.c_nvmlFieldValue_t * len(field_ids))()
        stamp = int(now * 1_000_000)
        for slot, requested in zip(values, field_ids, strict=True):
            fid, scope = requested if isinstance(requested, tuple) else (requested, 0)
            slot.fieldId = fid
            slot.scopeId = scope
            slot.timestamp = stamp
            value = self._field(gpu, faults, fid, scope, now)
            if value is None:
                slot.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
                continue
            slot.nvmlReturn = pynvml.NVML_SUCCESS
            if isinstance(value, float):
                slot.valueType = pynvml.NVML_VALUE_TYPE_DOUBLE
                slot.value.dVal = value
            else:
                slot.valueType = pynvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
                slot.value.ullVal = value
        return values

    def _field(self, gpu: _Gpu, faults: _GpuFaults, fid: int, scope: int, now: float) -> int | float | None:
        name = self._field_names.get(fid)
        if name is None or name in _UNSUPPORTED_FIELDS or name in faults.unsupported:
            return None
        if name in _NVLINK_FIELDS:
            if scope >= H100_NVLINKS:
                return None
            # One flaky link on every eighth GPU, so the series is not all zeros.
            return 3 if (gpu.index % 8 == 5 and scope == 7 and name == "NVML_FI_DEV_NVLINK_ERROR_DL_CRC") else 0
        if name in _THROTTLE_TIME_FIELDS:
            return int(gpu.throttle_ns.get(_THROTTLE_TIME_FIELDS[name], 0.0))
        fields: dict[str, Callable[[], int | float]] = {
            "NVML_FI_DEV_NVLINK_LINK_COUNT": lambda: H100_NVLINKS,
            "NVML_FI_DEV_ECC_SBE_VOL_TOTAL": lambda: gpu.sbe_baseline,
            "NVML_FI_DEV_ECC_DBE_VOL_TOTAL": lambda: faults.ecc_dbe,
            "NVML_FI_DEV_ECC_SBE_AGG_TOTAL": lambda: gpu.sbe_baseline + 12,
            "NVML_FI_DEV_ECC_DBE_AGG_TOTAL": lambda: faults.ecc_dbe,
            "NVML_FI_DEV_REMAPPED_COR": lambda: gpu.index % 2,
            "NVML_FI_DEV_REMAPPED_UNC": lambda: faults.ecc_dbe,
            "NVML_FI_DEV_REMAPPED_PENDING": lambda: 1 if faults.ecc_dbe else 0,
            "NVML_FI_DEV_REMAPPED_FAILURE": lambda: 1 if faults.remap_failure else 0,
            "NVML_FI_DEV_PCIE_REPLAY_COUNTER": lambda: 2 if gpu.index % 4 == 3 else 0,
            "NVML_FI_DEV_POWER_INSTANT": lambda: int(self._power_mw(gpu, faults, now)),
            "NVML_FI_DEV_POWER_CURRENT_LIMIT": lambda: H100_POWER_LIMIT_MW,
            "NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION": lambda: int(gpu.energy_mj),
            "NVML_FI_DEV_MEMORY_TEMP": lambda: int(self._temperature(gpu, faults, now)) + 6,
            "NVML_FI_DEV_POWER_DEFAULT_LIMIT": lambda: H100_POWER_LIMIT_MW,
            "NVML_FI_DEV_POWER_MIN_LIMIT": lambda: H100_POWER_MIN_MW,
            "NVML_FI_DEV_POWER_MAX_LIMIT": lambda: H100_POWER_LIMIT_MW,
            "NVML_FI_DEV_GET_GPU_RECOVERY_ACTION": lambda: faults.recovery_action,
        }
        reader = fields.get(name)
        return None if reader is None else reader()

    # -- GPM (Hopper and later) -----------------------------------------------------------------

    def nvmlGpmQueryDeviceSupport(self, handle: Any) -> Any:
        self._device(handle)
        support = pynvml.c_nvmlGpmSupport_t()
        support.version = pynvml.NVML_GPM_SUPPORT_VERSION
        support.isSupportedDevice = 1 if self.gpm else 0  # an A100 answers 0, not an error
        return support

    def nvmlGpmSampleAlloc(self) -> Any:
        self._check_init()
        struct = pynvml.struct_c_nvmlGpmSample_t()
        pointer = ctypes.pointer(struct)
        with self._lock:
            self._gpm_samples[ctypes.addressof(struct)] = [struct, None]
        return pointer

    def _gpm_slot(self, pointer: Any) -> list[Any]:
        try:
            return self._gpm_samples[ctypes.addressof(pointer.contents)]
        except (AttributeError, KeyError, ValueError):
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT) from None

    def nvmlGpmSampleFree(self, pointer: Any) -> None:
        self._check_init()
        with self._lock:
            self._gpm_samples.pop(ctypes.addressof(self._gpm_slot(pointer)[0]), None)

    def nvmlGpmSampleGet(self, handle: Any, pointer: Any) -> Any:
        gpu, faults = self._device(handle)
        if not self.gpm:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        # What the hardware counters would hold: a time stamp and the load at that moment.
        self._gpm_slot(pointer)[1] = (gpu.index, self.clock(), self._utilization(gpu, faults, self.clock()))
        return pointer

    def nvmlGpmMigSampleGet(self, handle: Any, gpu_instance_id: int, pointer: Any) -> Any:
        gpu, faults = self._device(handle)
        if not self.gpm:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if not 1 <= gpu_instance_id <= faults.mig:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)  # no such GPU instance (or MIG off)
        # Each instance gets its share of the load wave, the later ones a bit less busy.
        load = self._utilization(gpu, faults, self.clock()) * (1.0 - 0.1 * (gpu_instance_id - 1))
        self._gpm_slot(pointer)[1] = ((gpu.index, gpu_instance_id), self.clock(), load)
        return pointer

    def nvmlGpmMetricsGet(self, request: Any) -> Any:
        """Rates over the interval between two samples of one GPU, from the mean load in it."""
        self._check_init()
        if request.version != pynvml.NVML_GPM_METRICS_GET_VERSION:
            raise _err(pynvml.NVML_ERROR_ARGUMENT_VERSION_MISMATCH)
        first, second = self._gpm_slot(request.sample1)[1], self._gpm_slot(request.sample2)[1]
        # Samples never taken, of two GPUs, or not in time order: NVML refuses the pair.
        if first is None or second is None or first[0] != second[0] or second[1] <= first[1]:
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        load = (first[2] + second[2]) / 2
        for slot in request.metrics[: request.numMetrics]:
            factor = _GPM_LOAD_FACTORS.get(int(slot.metricId))
            if factor is None:
                slot.nvmlReturn = pynvml.NVML_ERROR_NOT_SUPPORTED
                continue
            slot.nvmlReturn = pynvml.NVML_SUCCESS
            base, per_load = factor
            slot.value = base + per_load * load
        return request

    # -- events ------------------------------------------------------------------------------

    def nvmlEventSetCreate(self) -> Any:
        self._check_init()
        event_set = _EventSet()
        with self._lock:
            self._event_sets[ctypes.addressof(event_set.struct)] = event_set
        return event_set.pointer

    def _event_set(self, pointer: Any) -> _EventSet:
        try:
            return self._event_sets[ctypes.addressof(pointer.contents)]
        except (AttributeError, KeyError, ValueError):
            raise _err(pynvml.NVML_ERROR_INVALID_ARGUMENT) from None

    def nvmlDeviceRegisterEvents(self, handle: Any, event_types: int, event_set: Any) -> None:
        gpu, _ = self._device(handle)
        if event_types & ~self.event_types:
            raise _err(pynvml.NVML_ERROR_NOT_SUPPORTED)
        with self._lock:
            gpu.registered.add(ctypes.addressof(self._event_set(event_set).struct))
            gpu.event_mask = event_types

    def nvmlEventSetWait_v2(self, event_set: Any, timeout_ms: int) -> Any:
        self._check_init()
        target = self._event_set(event_set)
        deadline = time.monotonic() + timeout_ms / 1000
        key = ctypes.addressof(target.struct)
        while True:
            self._reload_faults()
            with self._cond:
                # A registered GPU off the bus poisons the whole set, as the driver's wait does.
                if any(key in g.registered and self._faults.get(g.index, _GpuFaults()).lost for g in self._gpus):
                    raise _err(pynvml.NVML_ERROR_GPU_IS_LOST)
                if target.events:
                    return target.events.popleft()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise _err(pynvml.NVML_ERROR_TIMEOUT)
                self._cond.wait(min(remaining, RELOAD_EVERY_S))

    def nvmlEventSetWait(self, event_set: Any, timeout_ms: int) -> Any:
        return self.nvmlEventSetWait_v2(event_set, timeout_ms)

    def nvmlEventSetFree(self, event_set: Any) -> None:
        self._check_init()
        with self._lock:
            key = ctypes.addressof(self._event_set(event_set).struct)
            self._event_sets.pop(key, None)
            for gpu in self._gpus:
                gpu.registered.discard(key)
