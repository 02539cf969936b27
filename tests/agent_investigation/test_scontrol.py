"""slurm.mode: scontrol, with a stand-in `scontrol` executable in slurm.bin_dir.

(The real slurmctld fixture belongs to the Slurm exporter's tests; here the boundary is the
process: argv in, `--oneliner` text out, exit codes and hangs.)
"""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agent_webhook.investigation import Investigation, InvestigationConfig
from agent_webhook.investigation.prometheus import UnavailableSource
from agent_webhook.investigation.slurm import parse_scontrol
from agent_webhook.model import Alert

NODE_LINE = (
    "NodeName=gpu-2 Arch=x86_64 CoresPerSocket=16 CPUAlloc=0 CPUTot=32 Gres=gpu:h100:4 "
    "NodeAddr=gpu-2 State=IDLE+DRAIN ThreadsPerCore=1 Partitions=gpu "
    "Reason=XID 79 on GPU 2 [root@2026-01-01T10:00:00]"
)


def _scontrol(tmp_path: Path, body: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "scontrol"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def _cfg(bin_dir: Path, timeout: float = 5.0) -> InvestigationConfig:
    return InvestigationConfig.from_mapping(
        {"slurm": {"mode": "scontrol", "bin_dir": str(bin_dir), "command_timeout_seconds": timeout}}
    )


def test_parse_oneliner() -> None:
    fields = parse_scontrol(NODE_LINE)
    assert fields["State"] == "IDLE+DRAIN" and fields["Reason"] == "XID 79 on GPU 2"


async def test_drained_node_from_scontrol(tmp_path: Path) -> None:
    log = tmp_path / "argv.log"
    bin_dir = _scontrol(tmp_path, f'echo "$@" >> {log}\necho "{NODE_LINE}"\n')
    investigation = Investigation(_cfg(bin_dir))
    dx = await investigation.investigate(
        Alert("f", "firing", {"alertname": "SlurmNodeDrained", "node": "gpu-2"}, {}, "", None)
    )
    assert dx.triage_rule == "drain-reason:xid-in-reason/xid:79"
    assert "show node gpu-2 --oneliner" in log.read_text()
    assert any(d.startswith("prometheus unavailable") for d in dx.degraded)  # none configured


async def test_ask_uses_scontrol(tmp_path: Path) -> None:
    bin_dir = _scontrol(tmp_path, f'echo "{NODE_LINE}"\n')
    dx = await Investigation(_cfg(bin_dir)).ask("why is node gpu-2 drained?")
    assert "XID 79" in dx.likely_cause and dx.severity == "critical"


async def test_invalid_node_never_reaches_argv(tmp_path: Path) -> None:
    log = tmp_path / "argv.log"
    bin_dir = _scontrol(tmp_path, f'echo "$@" >> {log}\n')
    investigation = Investigation(_cfg(bin_dir))
    alert = Alert("f", "firing", {"alertname": "SlurmNodeDrained", "node": "gpu-2;reboot"}, {}, "", None)
    await investigation.investigate(alert)
    assert not log.exists()
    from agent_webhook.investigation.tools import ToolBox

    box = ToolBox(_cfg(bin_dir), UnavailableSource())
    out = await box.call("slurm_job", {"job_id": "12 --all"})
    assert not out.ok and "does not match" in out.text and not log.exists()


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("sleep 10\n", "timed out after 0.5s"),
        ('echo "slurm_load_node error: Unable to contact slurm controller" >&2\nexit 1\n', "Unable to contact"),
    ],
)
async def test_failing_scontrol_degrades(tmp_path: Path, body: str, expected: str) -> None:
    bin_dir = _scontrol(tmp_path, body)
    alert = Alert(
        "f", "firing", {"alertname": "SlurmNodeDown", "node": "gpu-2", "reason": "Not responding"}, {}, "", None
    )
    dx = await Investigation(_cfg(bin_dir, timeout=0.5)).investigate(alert)
    assert dx.triage_rule == "drain-reason:not-responding"
    assert any(d.startswith("slurm unavailable") and expected in d for d in dx.degraded), dx.degraded
