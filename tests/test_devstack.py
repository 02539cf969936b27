"""`make up` machinery: starts what exists, is safe to run twice, and `down` stops it all."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _devstack(command: str, run_dir: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, DEVSTACK_RUN_DIR=str(run_dir), DEVSTACK_PORT_OFFSET="20000")
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "devstack.py"), command],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_up_twice_then_down(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    try:
        first = _devstack("up", run_dir)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "prometheus" in first.stdout and "started" in first.stdout
        second = _devstack("up", run_dir)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "started " not in second.stdout  # nothing new: everything was already running
        assert second.stdout.count("already running") == first.stdout.count("started ")
    finally:
        down = _devstack("down", run_dir)
    assert down.returncode == 0
    status = _devstack("status", run_dir)
    assert "running" not in status.stdout
    assert not list(run_dir.glob("*.pid"))
