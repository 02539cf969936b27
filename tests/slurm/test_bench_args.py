"""bench/slurm_scale.py is not run by `make test`; its arguments are checked here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench" / "slurm_scale.py"


def test_dry_run_accepts_short_mode() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--dry-run", "--duration", "30", "--nodes", "100", "--jobs", "500"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "100 nodes, 500 jobs, 30s phases" in result.stdout


def test_bad_arguments_are_rejected() -> None:
    result = subprocess.run(
        [sys.executable, str(BENCH), "--dry-run", "--duration", "0"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "--duration" in result.stderr


def test_shapes_churn_must_fit_the_running_jobs() -> None:
    argv = ["--dry-run", "--shapes", "--nodes", "2000", "--jobs", "100000", "--shared-gpu-jobs", "4000"]
    result = subprocess.run(
        [sys.executable, str(BENCH), *argv, "--started-per-poll", "4001"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "--started-per-poll" in result.stderr
    result = subprocess.run(
        [sys.executable, str(BENCH), *argv, "--started-per-poll", "20"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
