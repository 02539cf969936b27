"""Start the real `runpod-exporter` against a (fake) RunPod API: shared by the exporter, rules and
dashboard tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tests.fakes.runpod_api import DEFAULT_API_KEY
from tests.harness.processes import LOOPBACK, ManagedProcess, ProcessManager, free_port

EXPORTER = str(Path(sys.executable).parent / "runpod-exporter")


def start_runpod_exporter(
    procs: ProcessManager, api_url: str, *args: str, key: str = DEFAULT_API_KEY, ready: str = "/metrics"
) -> tuple[ManagedProcess, str]:
    """(process, base URL) once `ready` answers 200; the key and API URL go in by environment only."""
    port = free_port()
    env = {**os.environ, "RUNPOD_API_KEY": key, "RUNPOD_API_BASE_URL": api_url}
    proc = procs.start(f"runpod-exporter-{port}", [EXPORTER, "--listen", f"{LOOPBACK}:{port}", *args], env=env)
    base = f"http://{LOOPBACK}:{port}"
    proc.wait_http(f"{base}{ready}", timeout=60)
    return proc, base
