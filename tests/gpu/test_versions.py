"""Version robustness: field ids by name and by driver branch, per-field error counts, the v2
memory API, and the nvidia-ml-py floor in setup.cfg really importing and running."""

from __future__ import annotations

import configparser
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pynvml
import pytest

from exporters.gpu.backend import NvmlBackend
from exporters.gpu.cli import build, choose_collectors
from exporters.gpu.fields import FieldIds
from exporters.gpu.sim import SimNvml
from exporters.gpu.sim.faults import make_fault, save_faults
from exporters.gpu.sim.library import H100_RESERVED
from gpu_watchdog_core.poller import SnapshotPoller
from tests.gpu.conftest import value

REPO = Path(__file__).resolve().parents[2]


def _text(sim: SimNvml) -> str:
    be = NvmlBackend(sim)
    be.open()
    _ctx, collectors = build(be, choose_collectors(()), timeout=2.0, proc_roots=["/proc"])
    poller = SnapshotPoller("gpu_exporter", collectors, interval=60)
    poller.collect_once()
    return poller.collect_once().text().decode()


@pytest.mark.parametrize(("driver", "field_id"), [("575.51.03", 252), ("580.82.07", 270), ("570.172.08", None)])
def test_throttle_durations_use_the_driver_branch_numbering(
    faults_path: Path, driver: str, field_id: int | None
) -> None:
    name = "NVML_FI_DEV_CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN"
    assert FieldIds(driver).id(name) == field_id
    now = [1_000_000.0]
    save_faults(faults_path, [make_fault(0, "throttle", ["thermal"])])
    sim = SimNvml(gpus=1, faults_path=faults_path, driver_version=driver, clock=lambda: now[0])
    be = NvmlBackend(sim)
    be.open()
    _ctx, collectors = build(be, choose_collectors(("clocks",)), timeout=2.0, proc_roots=["/proc"])
    poller = SnapshotPoller("gpu_exporter", collectors, interval=60)
    poller.collect_once()
    now[0] += 30
    text = poller.collect_once().text().decode()
    thermal = value(text, "nvidia_gpu_clocks_event_duration_seconds_total", gpu="0", reason="thermal")
    errors = value(text, "gpu_exporter_field_errors_total", field="CLOCKS_EVENT_REASON_HW_THERM_SLOWDOWN")
    if field_id is None:  # before 575 the driver has no such field: not asked for, and counted
        assert thermal is None
        assert value(text, "gpu_exporter_field_errors_total", error="NotInDriver") is not None
    else:  # pynvml 13 says 270; a 575 driver numbers it 252, and that is what is asked
        assert thermal == pytest.approx(30.0)
        assert errors is None


def test_field_errors_counted_not_dropped_silently(sim: SimNvml) -> None:
    text = _text(sim)
    # H100 has no page retirement: NotSupported, counted per field over the 4 GPUs and 2 cycles.
    assert value(text, "gpu_exporter_field_errors_total", field="RETIRED_DBE", error="NotSupported") == 8
    assert value(text, "gpu_exporter_field_errors_total", field="ECC_DBE_VOL_TOTAL") is None


def test_memory_used_from_v2_api_excludes_reserved(sim: SimNvml, faults_path: Path) -> None:
    save_faults(
        faults_path,
        [
            make_fault(1, "utilization", ["0"]),
            make_fault(2, "utilization", ["0"]),
            make_fault(2, "unsupported", ["nvmlDeviceGetMemoryInfo_v2"]),
        ],
    )
    sim._reload_faults(force=True)
    be = NvmlBackend(sim)
    be.open()
    v2 = be.sample(1, frozenset({"memory"}), [])
    assert v2.memory_reserved_bytes == H100_RESERVED
    handle = be.handles[1]
    legacy = sim.nvmlDeviceGetMemoryInfo(handle)
    assert v2.memory_used_bytes == legacy.used - H100_RESERVED  # nvidia-smi's figure, not v1's
    # A driver without the v2 entry point: v1, reserved counted as used, no reserved series.
    old = be.sample(2, frozenset({"memory"}), [])
    assert old.memory_reserved_bytes is None
    assert old.memory_used_bytes == legacy.used
    be.close()


def _floor() -> str:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    match = re.search(r"nvidia-ml-py>=([\d.]+)", cfg["options"]["install_requires"])
    assert match, "setup.cfg must pin a floor for nvidia-ml-py"
    return match.group(1)


FLOOR_SCRIPT = """
import pynvml, sys
assert pynvml.__file__.startswith(sys.argv[1]), pynvml.__file__
from gpu_watchdog_core.poller import SnapshotPoller
from exporters.gpu.backend import NvmlBackend
from exporters.gpu.cli import build, choose_collectors
from exporters.gpu.sim import SimNvml
be = NvmlBackend(SimNvml(gpus=2, faults_path=sys.argv[2]))
be.open()
ctx, collectors = build(be, choose_collectors(()), timeout=2, proc_roots=["/proc"])
text = SnapshotPoller("gpu_exporter", collectors, 60).collect_once().text().decode()
ctx.xid.stop()
be.close()
assert text.count("nvidia_gpu_up{") == 2 and 'nvidia_gpu_up{gpu="1"' in text, text[:2000]
names = ("nvidia_gpu_power_watts", "nvidia_gpu_clocks_event_duration_seconds_total", "nvidia_gpu_memory_used_bytes")
for name in names:
    assert name + "{" in text, name
print("ok", pynvml.__file__)
"""


@pytest.mark.slow
def test_floor_release_imports_and_runs(tmp_path: Path) -> None:
    """The oldest nvidia-ml-py setup.cfg allows, installed apart (pynvml is one pure-Python file):
    the exporter imports against it and runs a cycle over the sim. The venv holds the newest."""
    floor = _floor()
    target = tmp_path / "floor"
    started = time.monotonic()
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), f"nvidia-ml-py=={floor}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if pip.returncode != 0:
        pytest.skip(f"cannot install nvidia-ml-py=={floor} here (no index?): {pip.stderr.strip()[-300:]}")
    env = dict(os.environ, PYTHONPATH=f"{target}{os.pathsep}{REPO}")
    run = subprocess.run(
        [sys.executable, "-c", FLOOR_SCRIPT, str(target), str(tmp_path / "faults.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert time.monotonic() - started < 60
    assert str(target) in run.stdout
    assert pynvml.__file__ and str(target) not in pynvml.__file__
