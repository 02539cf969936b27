"""End to end (issue 10's walkthrough): XID 79 on a GPU, then `gpu-watchdog ask "what is wrong with gpu N?"`.

The real pipeline of tests/harness/stack.py (this module's own stack, tests/e2e/conftest.py)
and the real CLI in a subprocess, configured as on a deployed host: only through agent.yml
(here GPU_WATCHDOG_CONFIG names the stack agent's own agent.yml, as the deployed one is found
by default): no flags. The question names no node; the stack has one.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from agent_webhook.config import PREFIX_ENV
from tests.harness.processes import wait_until
from tests.harness.stack import BIN, Stack

pytestmark = pytest.mark.slow
GPU = 3


def _ask(stack: Stack, question: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_WATCHDOG_") or k == PREFIX_ENV}
    env["GPU_WATCHDOG_CONFIG"] = str(stack.workdir / "agent.yml")
    return subprocess.run(
        [str(BIN / "gpu-watchdog"), "ask", question], capture_output=True, text=True, timeout=120, env=env, check=False
    )


def test_ask_after_xid79_names_it_without_flags(stack: Stack) -> None:
    def xid_finding() -> list[dict[str, object]]:
        found = stack.findings(alertname="GPUXidError", node=stack.node)
        return [f for f in found if f["gpu"] == str(GPU) and f["status"] == "firing"]

    try:
        stack.inject(GPU, "xid", "79")
        finding = wait_until(xid_finding, 120, interval=0.5, what="the GPUXidError finding")
        # An XID is an event: its alert resolves one (compressed) window after the last one. A
        # second XID keeps it firing while the CLI runs, as a GPU that keeps failing would.
        stack.inject(GPU, "xid", "79")
        started = time.monotonic()
        result = _ask(stack, f"what is wrong with gpu {GPU}?")
        seconds = time.monotonic() - started
    finally:
        stack.clear(GPU)
    print(f"gpu-watchdog ask answered in {seconds:.1f} s:\n{result.stdout}")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "XID 79 (GPU has fallen off the bus)" in out, out
    assert f"node {stack.node}: the only node with GPU {GPU}" in out, out
    assert "Drain the node in Slurm" in out, out
    # The firing alert (GPUFellOffBus inhibits GPUXidError once it fires) and the agent's finding.
    assert "firing now: GPUXidError" in out or "firing now: GPUFellOffBus" in out, out
    assert f"the agent's finding {finding[0]['id']} (GPUXidError, critical)" in out, out  # type: ignore[index]
    assert "corrected (single-bit) ECC errors increased" not in out, out
    assert "Degraded" not in out, out
