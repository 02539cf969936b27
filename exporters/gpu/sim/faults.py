"""The sim's fault file: what to break on which simulated GPU (format in docs/sim-faults.md).

```yaml
faults:
  - {id: 9f1c2a7b, gpu: 0, kind: xid, value: 79, injected_at: 1763890000.0}
  - {id: 0b7e11d2, gpu: 3, kind: lost}
  - {id: 5c9d0e44, gpu: 1, kind: process, value: 4242, job_id: "123"}
```

JSON with the same structure is accepted too. Writers replace the file atomically (temp file +
rename) so a reader never sees half of it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pynvml
import yaml

from gpu_watchdog_core.sections import reject_unknown

# Names of `throttle` reasons: the `reason` label values of nvidia_gpu_clocks_event_reasons.
THROTTLE_REASONS = (
    "idle",
    "applications_clocks",
    "power_cap",
    "hw_slowdown",
    "sync_boost",
    "sw_thermal",
    "thermal",
    "hw_power_brake",
    "display_clocks",
)

# kind -> (value type, required); None: the kind takes no value.
KINDS: dict[str, tuple[type | None, bool]] = {
    "xid": (int, True),
    "temperature": (float, True),
    "ecc_dbe": (int, False),
    "row_remap_failure": (None, False),
    "lost": (None, False),
    "throttle": (str, True),
    "utilization": (float, True),
    "process": (int, True),
    "hang": (float, True),
    "stall": (float, True),
    "handle_error": (str, True),
    "unsupported": (str, True),
    "pcie_link": (str, True),
    "recovery_action": (int, True),
    "mig": (int, True),
}

# `handle_error` values: what nvmlDeviceGetHandleByIndex raises for a sick GPU on real nodes.
HANDLE_ERRORS = ("gpu_is_lost", "no_permission", "unknown")


class FaultFileError(ValueError):
    """The fault file cannot be read or an entry is invalid; the message says which and why."""


@dataclass(frozen=True)
class Fault:
    gpu: int
    kind: str
    value: Any = None
    id: str = ""
    injected_at: float | None = None
    job_id: str | None = None  # `process` only

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "gpu": self.gpu, "kind": self.kind}
        if self.value is not None:
            out["value"] = self.value
        if self.job_id is not None:
            out["job_id"] = self.job_id
        if self.injected_at is not None:
            out["injected_at"] = self.injected_at
        return out


def new_id() -> str:
    return uuid.uuid4().hex[:12]


def make_fault(gpu: int, kind: str, values: Sequence[str] = ()) -> Fault:
    """A validated fault from CLI-style arguments: `xid 79`, `process 4242 123`, `lost`."""
    if kind not in KINDS:
        raise FaultFileError(f"unknown fault kind {kind!r}; one of {', '.join(KINDS)}")
    value_type, _required = KINDS[kind]
    job_id = None
    max_values = 2 if kind == "process" else (1 if value_type else 0)
    if len(values) > max_values:
        raise FaultFileError(f"fault {kind} takes at most {max_values} value(s), got {len(values)}")
    raw: Any = values[0] if values else None
    if kind == "process" and len(values) == 2:
        job_id = values[1]
    return parse_entry(
        {"gpu": gpu, "kind": kind, "value": raw, "job_id": job_id, "id": new_id(), "injected_at": time.time()},
        "fault",
    )


def _coerce(kind: str, value: Any, where: str) -> Any:
    value_type, required = KINDS[kind]
    if value is None:
        if required:
            raise FaultFileError(f"{where}: fault {kind} needs a value")
        return None
    if value_type is None:
        raise FaultFileError(f"{where}: fault {kind} takes no value")
    try:
        if value_type is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            coerced: Any = int(value)
        elif value_type is float:
            coerced = float(value)
        else:
            coerced = str(value)
    except (TypeError, ValueError):
        raise FaultFileError(f"{where}: fault {kind} value {value!r} is not a {value_type.__name__}") from None
    if kind == "throttle" and coerced not in THROTTLE_REASONS:
        raise FaultFileError(f"{where}: throttle reason {coerced!r} is not one of {', '.join(THROTTLE_REASONS)}")
    if kind == "utilization" and not 0 <= coerced <= 100:
        raise FaultFileError(f"{where}: utilization must be 0-100, got {coerced}")
    if kind in ("xid", "process", "ecc_dbe") and coerced < 0:
        raise FaultFileError(f"{where}: {kind} value must not be negative")
    if kind in ("hang", "stall") and not 0 < coerced <= 3600:
        raise FaultFileError(f"{where}: {kind} seconds must be in (0, 3600]")
    if kind == "pcie_link" and not re.fullmatch(r"[1-6][xX](1|2|4|8|16)", coerced):
        raise FaultFileError(f"{where}: pcie_link must be GENxWIDTH (gen 1-6, width 1/2/4/8/16), got {coerced!r}")
    if kind == "mig" and not 1 <= coerced <= 7:
        raise FaultFileError(f"{where}: mig takes the number of 1g.10gb instances, 1-7")
    if kind == "recovery_action" and not 0 <= coerced <= 7:
        raise FaultFileError(f"{where}: recovery_action must be an NVML_GPU_RECOVERY_ACTION value 0-7")
    if kind == "handle_error" and coerced not in HANDLE_ERRORS:
        raise FaultFileError(f"{where}: handle_error {coerced!r} is not one of {', '.join(HANDLE_ERRORS)}")
    # A versioned C entry point (`nvmlDeviceGetMemoryInfo_v2`) counts by its pynvml function.
    if kind == "unsupported" and not (
        (coerced.startswith("nvml") or coerced.startswith("NVML_FI_"))
        and hasattr(pynvml, re.sub(r"_v\d+$", "", coerced))
    ):
        raise FaultFileError(
            f"{where}: unsupported {coerced!r} is neither a pynvml function (nvmlDevice...) nor a field id "
            "name (NVML_FI_...) of the installed pynvml"
        )
    return coerced


def parse_entry(entry: Any, where: str) -> Fault:
    if not isinstance(entry, dict):
        raise FaultFileError(f"{where}: expected a mapping, got {type(entry).__name__}")
    reject_unknown(entry, {"id", "gpu", "kind", "value", "injected_at", "job_id"}, where, FaultFileError)
    gpu = entry.get("gpu")
    if not isinstance(gpu, int) or isinstance(gpu, bool) or gpu < 0:
        raise FaultFileError(f"{where}: gpu must be a GPU index (integer >= 0), got {gpu!r}")
    kind = entry.get("kind")
    if kind not in KINDS:
        raise FaultFileError(f"{where}: unknown fault kind {kind!r}; one of {', '.join(KINDS)}")
    value = _coerce(kind, entry.get("value"), where)
    injected_at = entry.get("injected_at")
    if injected_at is not None and not isinstance(injected_at, (int, float)):
        raise FaultFileError(f"{where}: injected_at must be a unix time")
    job_id = entry.get("job_id")
    if job_id is not None:
        if kind != "process":
            raise FaultFileError(f"{where}: job_id only applies to process faults")
        job_id = str(job_id)
        if not job_id.isdigit():
            raise FaultFileError(f"{where}: job_id must be a Slurm job number, got {job_id!r}")
    fid = entry.get("id")
    return Fault(
        gpu=gpu,
        kind=kind,
        value=value,
        # Without an id an entry is keyed by its content, so re-reading does not re-deliver it.
        id=str(fid) if fid else f"{gpu}:{kind}:{value}",
        injected_at=None if injected_at is None else float(injected_at),
        job_id=job_id,
    )


def parse_faults(text: str, where: str) -> list[Fault]:
    try:
        data = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError) as exc:
        raise FaultFileError(f"{where}: not valid YAML/JSON: {exc}") from None
    if data is None:
        return []
    if not isinstance(data, dict) or set(data) - {"faults"}:
        raise FaultFileError(f"{where}: expected a mapping with one key, faults")
    entries = data.get("faults") or []
    if not isinstance(entries, list):
        raise FaultFileError(f"{where}: faults must be a list")
    return [parse_entry(e, f"{where}: faults[{i}]") for i, e in enumerate(entries)]


def load_faults(path: str | Path) -> list[Fault]:
    """Faults in the file; [] when it does not exist; FaultFileError when it is malformed."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise FaultFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_faults(text, str(path))


def save_faults(path: str | Path, faults: Sequence[Fault]) -> None:
    """Replace the file atomically: write a temp file in the same directory, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "# gpu-watchdog simulated GPU faults; edit with `gpu-watchdog sim inject|clear`\n"
    body += yaml.safe_dump({"faults": [f.to_dict() for f in faults]}, sort_keys=False)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
