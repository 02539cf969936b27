"""The CLI prints alert and model text without terminal control characters."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agent_webhook.config import PREFIX_ENV, AgentConfig
from agent_webhook.terminal import terminal_safe
from tests.agent.conftest import ServiceThread, make_alert, make_payload, post_alerts

CLI = str(Path(sys.executable).parent / "gpu-watchdog")
HOSTILE = "\x1b]0;pwned\x07\x1b[2J\x1b[1A\rfake line\x08\x9b31m\u202etxt.exe\x00"


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain\ttext\nsecond line", "plain\ttext\nsecond line"),
        ("red \x1b[31mXID\x1b[0m", "red XID"),
        ("title \x1b]0;pwned\x07 done", "title  done"),
        ("bell\x07 bs\x08 nul\x00 del\x7f c1\x85", "bell bs nul del c1"),
        ("bidi \u202egnp.exe", "bidi gnp.exe"),
    ],
)
def test_terminal_safe(text: str, shown: str) -> None:
    assert terminal_safe(text) == shown


def test_findings_output_has_no_control_characters(
    agent_config: Callable[..., AgentConfig], start_service: Callable[..., ServiceThread], token_file: Path
) -> None:
    svc = start_service(agent_config())
    # (The receiver refuses NUL and bidi controls in labels already; escape sequences it lets through.)
    alert = make_alert("ctl", node="gpu-worker-1" + HOSTILE.replace("\u202e", "").replace("\x00", ""))
    reply = post_alerts(svc.url, make_payload([alert]))
    assert reply.status == 202, reply
    svc.wait_idle()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_WATCHDOG_") or k == PREFIX_ENV}
    result = subprocess.run(
        [CLI, "findings", "--server", svc.url, "--token-file", str(token_file)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "GPUXidError" in result.stdout and "fake line" in result.stdout
    for char in ("\x1b", "\x07", "\x08", "\x00", "\r", "\x9b", "\u202e"):
        assert char not in result.stdout, repr(char)
