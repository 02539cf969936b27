"""NVML access for the GPU exporter, written against pynvml's function surface.

`NvmlBackend` takes the NVML surface as an object: the real `pynvml` module (`--backend nvml`)
or the simulated library in :mod:`exporters.gpu.sim` (`--backend sim`). Both raise pynvml's own
`NVMLError` subclasses and return pynvml's own structs, so everything above this module runs
the same code whichever library sits underneath.

Per GPU per cycle the backend makes one batched `nvmlDeviceGetFieldValues` call for every value
NVML offers as a field (ECC, retired pages, row remapping, power, energy, PCIe replays, NVLink
errors, throttle time) plus one call per value that has no field id.
"""

from __future__ import annotations

import ctypes
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import pynvml

from exporters.gpu.fields import FieldIds

log = logging.getLogger(__name__)

# (field id name, scope id): scope is the NVLink link for per-link fields. Names, not ids: the
# ids move between pynvml releases and driver branches (exporters/gpu/fields.py).
FieldKey = tuple[str, int]

# Reads that have no field id, by the name collectors ask for them.
READ_UTILIZATION = "utilization"
READ_MEMORY = "memory"
READ_TEMPERATURE = "temperature"
READ_CLOCKS = "clocks"
READ_CLOCK_REASONS = "clock_reasons"
READ_PROCESSES = "processes"
READ_MIG = "mig"
READ_PCIE = "pcie"
READ_PSTATE = "pstate"
READ_ECC_MODE = "ecc_mode"
READ_FAN = "fan"
READ_CODEC = "codec"
READ_GPM = "gpm"

# GPM (GPU Performance Monitoring, Hopper and later) metrics by our key: the pynvml constant
# name, resolved by name so a pynvml without one just leaves it out.
GPM_METRICS: dict[str, str] = {
    "graphics_active": "NVML_GPM_METRIC_GRAPHICS_UTIL",
    "sm_active": "NVML_GPM_METRIC_SM_UTIL",
    "sm_occupancy": "NVML_GPM_METRIC_SM_OCCUPANCY",
    "tensor_active": "NVML_GPM_METRIC_ANY_TENSOR_UTIL",
    "dram_active": "NVML_GPM_METRIC_DRAM_BW_UTIL",
    "fp64_active": "NVML_GPM_METRIC_FP64_UTIL",
    "fp32_active": "NVML_GPM_METRIC_FP32_UTIL",
    "fp16_active": "NVML_GPM_METRIC_FP16_UTIL",
    "pcie_tx": "NVML_GPM_METRIC_PCIE_TX_PER_SEC",
    "pcie_rx": "NVML_GPM_METRIC_PCIE_RX_PER_SEC",
    "nvlink_tx": "NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC",
    "nvlink_rx": "NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC",
}

# Fields that older drivers lack, and the function that reads the same value.
FIELD_FALLBACKS: dict[str, str] = {
    "NVML_FI_DEV_POWER_INSTANT": "nvmlDeviceGetPowerUsage",
    "NVML_FI_DEV_POWER_CURRENT_LIMIT": "nvmlDeviceGetEnforcedPowerLimit",
    "NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION": "nvmlDeviceGetTotalEnergyConsumption",
}


class BackendUnavailable(RuntimeError):
    """NVML cannot be loaded or initialised (no driver, no library, no permission)."""


class GpuLost(RuntimeError):
    """NVML says the GPU fell off the bus (NVML_ERROR_GPU_IS_LOST)."""


# Why a GPU is reported down (`nvidia_gpu_down_reason{reason}`): a bounded set of values.
REASON_NOT_READ_YET = "not_read_yet"
REASON_TIMEOUT = "timeout"
REASON_EXPORTER_ERROR = "exporter_error"


def reason_of(error_name: str) -> str:
    """An NVML error class name as a reason label: `GpuIsLost` -> `gpu_is_lost`."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", error_name).lower() if error_name != "NVMLError" else "nvml_error"


@dataclass(frozen=True)
class GpuStatic:
    """What does not change while the driver is loaded: read once at start-up."""

    index: int
    uuid: str
    name: str
    pci_bus_id: str
    nvlink_count: int
    # Set when NVML would not give this GPU's handle (GpuIsLost, NoPermission, Unknown): the GPU
    # is exported as down with this reason, and the lookup is retried every cycle.
    handle_error: str | None = None
    serial: str = ""  # what an RMA asks for
    vbios_version: str = ""
    board_part_number: str = ""
    minor_number: str = ""  # N of /dev/nvidiaN: what Slurm's gres.conf File= names
    pcie_max_generation: int | None = None  # the most GPU and slot together can do
    pcie_max_width: int | None = None
    gpm_supported: bool = False  # NVML GPM (Hopper and later): DCGM-class activity metrics


@dataclass(frozen=True)
class ProcessSample:
    pid: int
    used_memory_bytes: float | None
    gpu_instance_id: int | None
    compute_instance_id: int | None


@dataclass(frozen=True)
class MigSample:
    """One MIG instance (a `MIG-...` device) of a GPU in MIG mode."""

    gpu_instance_id: int
    compute_instance_id: int
    uuid: str
    memory_used_bytes: float | None
    memory_total_bytes: float | None
    gpm: dict[str, float] = field(default_factory=dict)  # GPM metrics of its GPU instance


@dataclass
class GpuSample:
    """One GPU's readings from one cycle. None means not supported or not readable this time."""

    index: int
    up: bool = True
    error: str | None = None
    reason: str | None = None  # bounded, for the down-reason label; set whenever up is False
    utilization_gpu: float | None = None  # percent
    utilization_memory: float | None = None
    memory_used_bytes: float | None = None
    memory_total_bytes: float | None = None
    memory_reserved_bytes: float | None = None  # v2 memory API only
    temperature_celsius: float | None = None
    sm_clock_mhz: float | None = None
    memory_clock_mhz: float | None = None
    clocks_event_reasons: int | None = None
    mig_mode: int | None = None
    pcie_generation: int | None = None
    pcie_width: int | None = None
    pstate: int | None = None
    ecc_mode_current: int | None = None
    ecc_mode_pending: int | None = None
    fan_speed_percent: float | None = None
    encoder_utilization: float | None = None  # percent
    decoder_utilization: float | None = None
    # GPM metrics over the interval since the previous cycle's GPM sample, as NVML gives them
    # (percent, or MiB/s for throughput); empty on the first cycle and where unsupported.
    gpm: dict[str, float] = field(default_factory=dict)
    mig_instances: list[MigSample] = field(default_factory=list)
    processes: list[ProcessSample] = field(default_factory=list)
    fields: dict[FieldKey, float] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # NVML error class -> count this cycle
    field_errors: dict[tuple[str, str], int] = field(default_factory=dict)  # (field name, error) -> count
    calls: int = 0

    def field(self, name: str, scope: int = 0) -> float | None:
        return self.fields.get((name, scope))

    def field_error(self, name: str, error: str) -> None:
        key = (name, error)
        self.field_errors[key] = self.field_errors.get(key, 0) + 1


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return str(value)


def _int_or_none(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _error_name(exc: pynvml.NVMLError) -> str:
    return type(exc).__name__.removeprefix("NVMLError_") or "NVMLError"


def handle_key(handle: Any) -> int:
    """A stable integer for an NVML device handle (its address), to map event data to GPUs."""
    return int(ctypes.cast(handle, ctypes.c_void_p).value or 0)


# Which member of NVML's value union holds the number, by nvmlValueType_t (by name: older
# pynvml releases lack UNSIGNED_SHORT).
_FIELD_VALUE_ATTR = {
    getattr(pynvml, f"NVML_VALUE_TYPE_{kind}"): attr
    for kind, attr in (
        ("DOUBLE", "dVal"),
        ("UNSIGNED_INT", "uiVal"),
        ("UNSIGNED_LONG", "ulVal"),
        ("UNSIGNED_LONG_LONG", "ullVal"),
        ("SIGNED_LONG_LONG", "sllVal"),
        ("SIGNED_INT", "siVal"),
        ("UNSIGNED_SHORT", "usVal"),
    )
    if hasattr(pynvml, f"NVML_VALUE_TYPE_{kind}")
}


# Memory info v2 (pynvml 12.535+ knows it; the driver may not).
_MEMORY_V2: int | None = getattr(pynvml, "nvmlMemory_v2", None)
_VERSION_MISMATCH: type[Exception] = getattr(pynvml, "NVMLError_ArgumentVersionMismatch", pynvml.NVMLError_NotSupported)


def return_name(code: int) -> str:
    """NVML return code -> pynvml's error class name without the prefix (`NotSupported`)."""
    return _error_name(pynvml.NVMLError(code))


def field_value(entry: Any) -> float | None:
    """The numeric value of one c_nvmlFieldValue_t, or None when NVML returned an error for it."""
    if entry.nvmlReturn != pynvml.NVML_SUCCESS:
        return None
    attr = _FIELD_VALUE_ATTR.get(entry.valueType)
    return float(getattr(entry.value, attr)) if attr else None


@dataclass
class _GpmState:
    buffers: list[Any]
    previous: Any = None


class NvmlBackend:
    """Reads GPUs through an NVML surface (`pynvml` or the simulated library)."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        self.static: list[GpuStatic] = []
        self.handles: list[Any] = []
        self.driver_version = ""
        self.cuda_version = ""
        self.field_ids = FieldIds()
        self._memory_v2 = True
        # (GPU, function) pairs that answered NOT_SUPPORTED: a GPU without a fan never grows one,
        # so they are not asked again (until the exporter restarts).
        self._unsupported: set[tuple[int, str]] = set()
        # Per GPU: two GPM sample buffers and which holds the previous cycle's sample. Only that
        # GPU's worker thread touches its entry.
        self._gpm: dict[tuple[int, int | None], _GpmState] = {}  # (GPU, MIG GPU instance) -> state
        self._gpm_ids = {k: getattr(pynvml, v) for k, v in GPM_METRICS.items() if hasattr(pynvml, v)}
        self._opened = False

    # -- start-up -------------------------------------------------------------------------

    def open(self) -> None:
        """nvmlInit and read what does not change; BackendUnavailable if NVML cannot start."""
        try:
            self.nvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise BackendUnavailable(f"cannot initialise NVML: {exc}") from None
        except OSError as exc:  # a broken libnvidia-ml can fail to load before NVML answers
            raise BackendUnavailable(f"cannot load NVML: {exc}") from None
        self._opened = True
        try:
            count = int(self.nvml.nvmlDeviceGetCount())
            self.driver_version = _text(self.nvml.nvmlSystemGetDriverVersion())
        except pynvml.NVMLError as exc:
            raise BackendUnavailable(f"NVML initialised but cannot list GPUs: {exc}") from None
        self.cuda_version = self._cuda_version()
        self.field_ids = FieldIds(self.driver_version)
        for index in range(count):
            # One GPU off the bus must not cost the others: its lookup failing leaves a placeholder
            # (exported as down with the reason) and the lookup is retried every cycle.
            self.handles.append(None)
            self.static.append(self._unavailable(index, "NotReadYet"))
            self.acquire(index)

    def _unavailable(self, index: int, reason: str) -> GpuStatic:
        return GpuStatic(
            index=index, uuid=f"unknown-{index}", name="unknown", pci_bus_id="", nvlink_count=0, handle_error=reason
        )

    def acquire(self, index: int) -> bool:
        """Look the GPU's handle up (again); False, with the static info saying why, when NVML refuses."""
        try:
            handle = self.nvml.nvmlDeviceGetHandleByIndex(index)
            static = self._read_static(index, handle)
        except pynvml.NVMLError as exc:
            reason = _error_name(exc)
            if self.static[index].handle_error != reason:
                log.warning("cannot get GPU handle; GPU reported down", extra={"gpu": index, "error": str(exc)})
            self.handles[index] = None
            self.static[index] = self._unavailable(index, reason)
            return False
        if self.static[index].handle_error not in (None, "NotReadYet"):
            log.info("GPU handle acquired after earlier failure", extra={"gpu": index})
        self.handles[index] = handle
        self.static[index] = static
        return True

    def _cuda_version(self) -> str:
        try:
            version = int(self.nvml.nvmlSystemGetCudaDriverVersion())
        except pynvml.NVMLError:
            return ""
        return f"{version // 1000}.{(version % 1000) // 10}"

    def _read_static(self, index: int, handle: Any) -> GpuStatic:
        def read(name: str, fallback: str) -> str:
            try:
                return _text(getattr(self.nvml, name)(handle))
            except pynvml.NVMLError_GpuIsLost:
                raise  # the GPU went away between lookup and reads: treat as a failed lookup
            except pynvml.NVMLError as exc:
                log.warning("cannot read GPU property", extra={"gpu": index, "call": name, "error": str(exc)})
                return fallback

        uuid = read("nvmlDeviceGetUUID", f"unknown-{index}")
        name = read("nvmlDeviceGetName", "unknown")
        try:
            pci = _text(self.nvml.nvmlDeviceGetPciInfo(handle).busId)
        except pynvml.NVMLError_GpuIsLost:
            raise
        except pynvml.NVMLError:
            pci = ""
        nvlinks = 0
        link_count = self.field_ids.id("NVML_FI_DEV_NVLINK_LINK_COUNT")
        try:
            if link_count is not None:
                values = self.nvml.nvmlDeviceGetFieldValues(handle, [link_count])
                nvlinks = int(field_value(values[0]) or 0)
        except pynvml.NVMLError_GpuIsLost:
            raise
        except pynvml.NVMLError:
            pass
        return GpuStatic(
            index=index,
            uuid=uuid,
            name=name,
            pci_bus_id=pci,
            nvlink_count=nvlinks,
            serial=read("nvmlDeviceGetSerial", ""),
            vbios_version=read("nvmlDeviceGetVbiosVersion", ""),
            board_part_number=read("nvmlDeviceGetBoardPartNumber", ""),
            minor_number=read("nvmlDeviceGetMinorNumber", ""),
            pcie_max_generation=_int_or_none(read("nvmlDeviceGetMaxPcieLinkGeneration", "")),
            pcie_max_width=_int_or_none(read("nvmlDeviceGetMaxPcieLinkWidth", "")),
            gpm_supported=self._gpm_supported(index, handle),
        )

    def _gpm_supported(self, index: int, handle: Any) -> bool:
        if not hasattr(self.nvml, "nvmlGpmQueryDeviceSupport"):
            return False
        try:
            return bool(self.nvml.nvmlGpmQueryDeviceSupport(handle).isSupportedDevice)
        except pynvml.NVMLError_GpuIsLost:
            raise
        except pynvml.NVMLError as exc:  # pre-Hopper GPUs, drivers before 520: skipped cleanly
            log.info("GPM not available; no DCGM-class activity metrics", extra={"gpu": index, "error": str(exc)})
            return False

    def close(self) -> None:
        if self._opened:
            self._opened = False
            try:
                self.nvml.nvmlShutdown()
            except pynvml.NVMLError as exc:
                log.debug("nvmlShutdown failed", extra={"error": str(exc)})

    @property
    def count(self) -> int:
        return len(self.handles)

    # -- one cycle, one GPU -------------------------------------------------------------------

    def sample(self, index: int, reads: frozenset[str], fields: Iterable[FieldKey]) -> GpuSample:
        """Everything the enabled collectors need from one GPU. Never raises for NVML errors."""
        sample = GpuSample(index=index)
        if self.handles[index] is None and not self.acquire(index):
            error = self.static[index].handle_error or "NVMLError"
            sample.calls = 1
            sample.up = False
            sample.reason = reason_of(error)
            sample.error = f"nvmlDeviceGetHandleByIndex failed: {error}"
            sample.errors[error] = 1
            return sample
        handle = self.handles[index]
        try:
            self._sample(sample, handle, reads, list(fields))
        except GpuLost:
            sample.up = False
            sample.reason = "gpu_is_lost"
            sample.error = "GPU is lost"
        # Readable means at least one call answered: a GPU whose every call fails is as good as gone.
        if sample.up and sample.calls and sum(sample.errors.values()) >= sample.calls:
            sample.up = False
            sample.reason = reason_of(max(sorted(sample.errors), key=lambda e: sample.errors[e]))
            sample.error = "every NVML call failed: " + ", ".join(sorted(sample.errors))
        return sample

    def _call(self, sample: GpuSample, name: str, *args: Any) -> Any:
        """One NVML call: GpuIsLost aborts the GPU's sample, other errors return None."""
        key = (sample.index, name)
        # Only calls on the GPU's own handle (not a MIG instance's) are remembered as unsupported.
        own = len(args) == 1 and args[0] is self.handles[sample.index]
        if own and key in self._unsupported:
            return None
        sample.calls += 1
        try:
            return getattr(self.nvml, name)(*args)
        except pynvml.NVMLError_GpuIsLost:
            sample.errors["GpuIsLost"] = sample.errors.get("GpuIsLost", 0) + 1
            raise GpuLost() from None
        except pynvml.NVMLError_NotSupported:
            # normal: not every GPU has every counter; the series is left out
            if own:  # calls with arguments (a clock type, a sensor) may work for others
                self._unsupported.add(key)
            return None
        except pynvml.NVMLError as exc:
            err = _error_name(exc)
            sample.errors[err] = sample.errors.get(err, 0) + 1
            return None

    def _read_mig(self, sample: GpuSample, handle: Any, gpm: bool) -> None:
        """Each MIG instance's memory, and its activity from GPM per GPU instance where the GPU
        has GPM; slots without an instance answer NOT_FOUND (not an error)."""
        slots = self._call(sample, "nvmlDeviceGetMaxMigDeviceCount", handle)
        for slot in range(int(slots or 0)):
            sample.calls += 1
            try:
                mig = self.nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
            except pynvml.NVMLError_NotFound:
                continue
            except pynvml.NVMLError_GpuIsLost:
                sample.errors["GpuIsLost"] = sample.errors.get("GpuIsLost", 0) + 1
                raise GpuLost() from None
            except pynvml.NVMLError as exc:
                err = _error_name(exc)
                sample.errors[err] = sample.errors.get(err, 0) + 1
                continue
            gi = self._call(sample, "nvmlDeviceGetGpuInstanceId", mig)
            ci = self._call(sample, "nvmlDeviceGetComputeInstanceId", mig)
            mig_uuid = self._call(sample, "nvmlDeviceGetUUID", mig)
            mem = self._call(sample, "nvmlDeviceGetMemoryInfo", mig)
            if gi is None or ci is None:
                continue
            activity: dict[str, float] = {}
            if gpm and self.static[sample.index].gpm_supported:
                activity = self._gpm_interval(sample, int(gi), "nvmlGpmMigSampleGet", handle, int(gi))
            sample.mig_instances.append(
                MigSample(
                    gpu_instance_id=int(gi),
                    compute_instance_id=int(ci),
                    uuid=_text(mig_uuid) if mig_uuid is not None else "",
                    memory_used_bytes=None if mem is None else float(mem.used),
                    memory_total_bytes=None if mem is None else float(mem.total),
                    gpm=activity,
                )
            )

    def _read_gpm(self, sample: GpuSample, handle: Any) -> None:
        """One GPM sample per cycle; metrics from this one and the previous cycle's (GPM gives
        rates over an interval between two samples, so the first cycle has none)."""
        sample.gpm = self._gpm_interval(sample, None, "nvmlGpmSampleGet", handle)

    def _gpm_interval(self, sample: GpuSample, instance: int | None, take: str, *args: Any) -> dict[str, float]:
        """Take a GPM sample into this GPU's (or MIG GPU instance's) spare buffer with `take`
        (nvmlGpmSampleGet or nvmlGpmMigSampleGet), and the metrics since the previous one."""
        state = self._gpm.get((sample.index, instance))
        if state is None:
            try:
                state = _GpmState(buffers=[self.nvml.nvmlGpmSampleAlloc(), self.nvml.nvmlGpmSampleAlloc()])
            except pynvml.NVMLError as exc:
                log.warning("cannot allocate GPM samples", extra={"gpu": sample.index, "error": str(exc)})
                self.static[sample.index] = replace(self.static[sample.index], gpm_supported=False)
                return {}
            self._gpm[(sample.index, instance)] = state
        current = state.buffers[1] if state.previous is state.buffers[0] else state.buffers[0]
        if self._call(sample, take, *args, current) is None:
            state.previous = None  # a gap: the next interval starts from the next good sample
            return {}
        previous, state.previous = state.previous, current
        if previous is None or not self._gpm_ids:
            return {}
        request = pynvml.c_nvmlGpmMetricsGet_t()
        request.version = pynvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(self._gpm_ids)
        request.sample1 = previous
        request.sample2 = current
        keys = list(self._gpm_ids)
        for slot, key in enumerate(keys):
            request.metrics[slot].metricId = self._gpm_ids[key]
        result = self._call(sample, "nvmlGpmMetricsGet", request)
        if result is None:
            return {}
        values: dict[str, float] = {}
        for slot, key in enumerate(keys):
            metric = result.metrics[slot]
            if metric.nvmlReturn == pynvml.NVML_SUCCESS:
                values[key] = float(metric.value)
            else:
                sample.field_error(GPM_METRICS[key], return_name(metric.nvmlReturn))
        return values

    def _memory_info(self, sample: GpuSample, handle: Any) -> Any:
        """v2 where the driver has it: its `used` leaves out the driver's reserved memory, matching
        nvidia-smi (v1 counts it as used). A driver without v2 falls back to v1 for good."""
        if self._memory_v2 and _MEMORY_V2 is not None:
            sample.calls += 1
            try:
                return self.nvml.nvmlDeviceGetMemoryInfo(handle, version=_MEMORY_V2)
            except pynvml.NVMLError_GpuIsLost:
                sample.errors["GpuIsLost"] = sample.errors.get("GpuIsLost", 0) + 1
                raise GpuLost() from None
            except (pynvml.NVMLError_FunctionNotFound, pynvml.NVMLError_NotSupported, _VERSION_MISMATCH):
                log.info("NVML memory info v2 unavailable; using v1 (reserved memory counted as used)")
                self._memory_v2 = False
                sample.calls -= 1
            except pynvml.NVMLError as exc:
                err = _error_name(exc)
                sample.errors[err] = sample.errors.get(err, 0) + 1
                return None
        return self._call(sample, "nvmlDeviceGetMemoryInfo", handle)

    def _sample(self, sample: GpuSample, handle: Any, reads: frozenset[str], fields: list[FieldKey]) -> None:
        call: Callable[..., Any] = self._call
        request: list[tuple[FieldKey, int]] = []
        for name, scope in fields:
            field_id = self.field_ids.id(name)
            if field_id is None:
                sample.field_error(name, self.field_ids.unresolved.get(name, "Unresolved"))
            else:
                request.append(((name, scope), field_id))
        if request:
            values = call(sample, "nvmlDeviceGetFieldValues", handle, [(fid, key[1]) for key, fid in request])
            failed: list[str] = []
            if values is not None:
                for (key, _fid), entry in zip(request, values, strict=False):
                    if entry.nvmlReturn == pynvml.NVML_ERROR_GPU_IS_LOST:
                        raise GpuLost()
                    value = field_value(entry)
                    if value is None:
                        failed.append(key[0])
                        sample.field_error(key[0], return_name(entry.nvmlReturn))
                    else:
                        sample.fields[key] = value
            else:
                failed = [key[0] for key, _fid in request]
            for name in failed:
                fallback = FIELD_FALLBACKS.get(name)
                if fallback:
                    value = call(sample, fallback, handle)
                    if value is not None:
                        sample.fields[(name, 0)] = float(value)
        if READ_UTILIZATION in reads:
            util = call(sample, "nvmlDeviceGetUtilizationRates", handle)
            if util is not None:
                sample.utilization_gpu = float(util.gpu)
                sample.utilization_memory = float(util.memory)
        if READ_TEMPERATURE in reads:
            temp = call(sample, "nvmlDeviceGetTemperature", handle, pynvml.NVML_TEMPERATURE_GPU)
            sample.temperature_celsius = None if temp is None else float(temp)
        if READ_MEMORY in reads:
            mem = self._memory_info(sample, handle)
            if mem is not None:
                sample.memory_used_bytes = float(mem.used)
                sample.memory_total_bytes = float(mem.total)
                reserved = getattr(mem, "reserved", None)
                sample.memory_reserved_bytes = None if reserved is None else float(reserved)
        if READ_CLOCKS in reads:
            sm = call(sample, "nvmlDeviceGetClockInfo", handle, pynvml.NVML_CLOCK_SM)
            sample.sm_clock_mhz = None if sm is None else float(sm)
            mem_clock = call(sample, "nvmlDeviceGetClockInfo", handle, pynvml.NVML_CLOCK_MEM)
            sample.memory_clock_mhz = None if mem_clock is None else float(mem_clock)
        if READ_CLOCK_REASONS in reads:
            reasons = call(sample, "nvmlDeviceGetCurrentClocksEventReasons", handle)
            sample.clocks_event_reasons = None if reasons is None else int(reasons)
        if READ_MIG in reads:
            mig = call(sample, "nvmlDeviceGetMigMode", handle)
            sample.mig_mode = None if mig is None else int(mig[0])
            if sample.mig_mode == 1:
                self._read_mig(sample, handle, READ_GPM in reads)
        if READ_PCIE in reads:
            gen = call(sample, "nvmlDeviceGetCurrPcieLinkGeneration", handle)
            sample.pcie_generation = None if gen is None else int(gen)
            width = call(sample, "nvmlDeviceGetCurrPcieLinkWidth", handle)
            sample.pcie_width = None if width is None else int(width)
        if READ_PSTATE in reads:
            pstate = call(sample, "nvmlDeviceGetPerformanceState", handle)
            sample.pstate = None if pstate is None else int(pstate)
        if READ_ECC_MODE in reads:
            ecc = call(sample, "nvmlDeviceGetEccMode", handle)
            if ecc is not None:
                sample.ecc_mode_current, sample.ecc_mode_pending = int(ecc[0]), int(ecc[1])
        if READ_FAN in reads:
            fan = call(sample, "nvmlDeviceGetFanSpeed", handle)
            sample.fan_speed_percent = None if fan is None else float(fan)
        if READ_CODEC in reads:
            enc = call(sample, "nvmlDeviceGetEncoderUtilization", handle)
            sample.encoder_utilization = None if enc is None else float(enc[0])
            dec = call(sample, "nvmlDeviceGetDecoderUtilization", handle)
            sample.decoder_utilization = None if dec is None else float(dec[0])
        if READ_GPM in reads and self.static[sample.index].gpm_supported:
            self._read_gpm(sample, handle)
        if READ_PROCESSES in reads:
            procs = call(sample, "nvmlDeviceGetComputeRunningProcesses", handle)
            for proc in procs or ():
                used = getattr(proc, "usedGpuMemory", None)
                gi = getattr(proc, "gpuInstanceId", None)
                ci = getattr(proc, "computeInstanceId", None)
                sample.processes.append(
                    ProcessSample(
                        pid=int(proc.pid),
                        used_memory_bytes=None if used is None else float(used),
                        # 0xFFFFFFFF: not a MIG process
                        gpu_instance_id=None if gi is None or gi == 0xFFFFFFFF else int(gi),
                        compute_instance_id=None if ci is None or ci == 0xFFFFFFFF else int(ci),
                    )
                )
