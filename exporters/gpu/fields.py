"""NVML field ids resolved by name from the installed pynvml, and checked against the driver.

Field ids are not stable across pynvml releases: the clock-event (throttle) durations are
251-253 in nvidia-ml-py 12.575 and 269-271 in 13.x, where 251-253 became power-smoothing
fields. Asking a 580 driver for 251 with 12.575's numbering silently reads power smoothing as
throttle time; asking a 575 driver for 269 reads nothing. So collectors name fields
(`NVML_FI_DEV_...`) rather than carry ids, the id comes from the installed module, and for the
fields known to have moved, from the table below by the driver's branch.
A name the installed pynvml lacks, or a field the driver's branch does not have, is not asked
for and is counted in `gpu_exporter_field_errors_total{field,error}` (NotInPynvml, NotInDriver).
"""

from __future__ import annotations

import logging

import pynvml

log = logging.getLogger(__name__)

# Fields NVIDIA renumbered between driver branches: name -> ((first driver branch, id), ...).
# Branch 575 introduced them at 251-253; 580 moved them to 269-271 (R580 headers, pynvml 13.580).
RENUMBERED: dict[str, tuple[tuple[int, int], ...]] = {
    "NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_THERM_SLOWDOWN": ((575, 251), (580, 269)),
    "NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN": ((575, 252), (580, 270)),
    "NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_POWER_BRAKE_SLOWDOWN": ((575, 253), (580, 271)),
}

# Newer names for fields older pynvml releases know under another name (same id).
ALIASES: dict[str, str] = {
    "NVML_FI_DEV_CLOCKS_EVENT_REASON_SW_POWER_CAP": "NVML_FI_DEV_PERF_POLICY_POWER",
    "NVML_FI_DEV_CLOCKS_EVENT_REASON_SYNC_BOOST": "NVML_FI_DEV_PERF_POLICY_SYNC_BOOST",
}

NOT_IN_PYNVML = "NotInPynvml"
NOT_IN_DRIVER = "NotInDriver"


def driver_branch(driver_version: str) -> int | None:
    """`580.82.07` -> 580; None when the version cannot be read."""
    head = driver_version.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def short_name(name: str) -> str:
    """The `field` label value: `NVML_FI_DEV_MEMORY_TEMP` -> `MEMORY_TEMP`."""
    return name.removeprefix("NVML_FI_DEV_").removeprefix("NVML_FI_")


class FieldIds:
    """Field name -> id for one driver, resolved once (at start-up, after nvmlInit)."""

    def __init__(self, driver_version: str = "", module: object = pynvml) -> None:
        self.branch = driver_branch(driver_version)
        self.module = module
        self._ids: dict[str, int | None] = {}
        self.unresolved: dict[str, str] = {}  # name -> NotInPynvml | NotInDriver

    def id(self, name: str) -> int | None:
        if name not in self._ids:
            self._ids[name] = self._resolve(name)
        return self._ids[name]

    def _resolve(self, name: str) -> int | None:
        from_module = getattr(self.module, name, None)
        if from_module is None and name in ALIASES:
            from_module = getattr(self.module, ALIASES[name], None)
        table = RENUMBERED.get(name)
        if table is not None and self.branch is not None:
            ids = [fid for first, fid in table if self.branch >= first]
            if not ids:
                self.unresolved[name] = NOT_IN_DRIVER
                log.info("field not in this driver branch; not asked for", extra={"field": name, "branch": self.branch})
                return None
            if from_module is not None and from_module != ids[-1]:
                log.warning(
                    "pynvml's id for this field is another driver branch's; using the driver's",
                    extra={"field": name, "pynvml_id": from_module, "driver_id": ids[-1], "branch": self.branch},
                )
            return ids[-1]
        if from_module is None:
            self.unresolved[name] = NOT_IN_PYNVML
            log.warning("field not in the installed pynvml; not asked for", extra={"field": name})
            return None
        return int(from_module)
