"""Every console script answers --help (from the installed entry point, in a subprocess)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPTS = ["gpu-exporter", "slurm-exporter", "runpod-exporter", "agent-webhook", "gpu-watchdog"]


def _script(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    assert found, f"{name} is not installed (pip install -e .)"
    return found


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(script: str) -> None:
    result = subprocess.run([_script(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    assert result.stderr == ""


def test_gpu_watchdog_version() -> None:
    result = subprocess.run([_script("gpu-watchdog"), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "gpu-watchdog" in result.stdout
