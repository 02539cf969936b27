"""The `slurm_jobs` tool: the jobs on the alert's node and the pending GPU jobs.

slurm.mode scontrol runs the real `squeue` against a private slurmctld + slurmd
(tests/harness/slurm.py); the metrics mode reads the Slurm exporter's series (shapes)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from agent_webhook.investigation import InvestigationConfig
from agent_webhook.investigation.prometheus import RecordedPrometheus, UnavailableSource
from agent_webhook.investigation.slurm import SQUEUE_PENDING_FIELDS, parse_squeue
from agent_webhook.investigation.tools import ToolBox
from tests.harness.processes import ProcessManager
from tests.harness.slurm import SlurmCluster, SlurmUnavailable, start_cluster


@pytest.fixture
def slurm(session_procs: ProcessManager) -> Iterator[SlurmCluster]:
    try:
        cluster = start_cluster(session_procs, fake_nodes=1)
    except SlurmUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


def _sbatch(slurm: SlurmCluster, *args: str) -> str:
    return slurm.run(["sbatch", "--parsable", "-o", "/dev/null", *args, "--wrap", "sleep 600"]).stdout.strip()


async def test_jobs_on_the_node_and_pending_gpu_jobs_from_a_real_slurmctld(
    slurm: SlurmCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    node = slurm.hostname
    # A job name is free text its owner writes: it must not become a row of its own.
    busy = _sbatch(slurm, "-w", node, "--gres=gpu:4", "-J", "x|root|acct|gpu|RUNNING|1:00|1|gres:gpu:8")
    deadline = time.monotonic() + 30
    while slurm.scontrol("show", "job", busy, "--oneliner").find("JobState=RUNNING") < 0:
        assert time.monotonic() < deadline, slurm.scontrol("show", "job", busy, "--oneliner")
        await asyncio.sleep(0.5)
    waiting = _sbatch(slurm, "--gres=gpu:1")
    cpu_only = _sbatch(slurm, "-w", node, "--exclusive")  # pending, but asks for no GPU

    cfg = InvestigationConfig.from_mapping({"slurm": {"mode": "scontrol"}})
    box = ToolBox(cfg, UnavailableSource())
    out = await box.call("slurm_jobs", {"node": node})
    assert out.ok, out.text
    data = out.data
    assert [j["job_id"] for j in data["jobs"]] == [busy]
    assert data["jobs"][0]["state"] == "RUNNING" and "gpu" in data["jobs"][0]["gres"]
    pending = {j["job_id"]: j for j in data["pending_gpu_jobs"]}
    assert waiting in pending and cpu_only not in pending, data
    # Slurm's pending reason (None until the scheduler has looked at the job, then Resources).
    assert pending[waiting]["reason"] in {"None", "Resources", "Priority"}
    assert f"jobs on {node} (1):" in out.text and "pending GPU jobs (1):" in out.text

    # A node name that is not one is refused before it reaches squeue.
    bad = await box.call("slurm_jobs", {"node": "gpu-1 --all"})
    assert not bad.ok


async def test_a_dead_slurm_degrades_the_tool_not_the_investigation(tmp_path: pytest.TempPathFactory) -> None:
    cfg = InvestigationConfig.from_mapping({"slurm": {"mode": "scontrol", "bin_dir": str(tmp_path)}})
    box = ToolBox(cfg, UnavailableSource())
    out = await box.call("slurm_jobs", {"node": "gpu-1"})
    assert not out.ok and "squeue not found" in out.text
    assert "slurm" in box.unavailable


async def test_metrics_mode_reads_the_exporter_series() -> None:
    series = [
        ({"__name__": "slurm_job_gpu_info", "node": "gpu-1", "job_id": "41", "user": "ana", "gpu": "0"}, [1.0]),
        ({"__name__": "slurm_job_gpu_info", "node": "gpu-2", "job_id": "42", "user": "bo", "gpu": "0"}, [1.0]),
        ({"__name__": "slurm_jobs_pending", "partition": "gpu", "reason": "Resources"}, [3.0]),
        ({"__name__": "slurm_jobs_pending_gpus", "partition": "gpu"}, [5.0]),
    ]
    box = ToolBox(InvestigationConfig.from_mapping({}), RecordedPrometheus(series))
    out = await box.call("slurm_jobs", {"node": "gpu-1"})
    assert out.ok, out.text
    assert [j["job_id"] for j in out.data["jobs"]] == ["41"]
    assert {(p.get("__name__"), p["value"]) for p in out.data["pending"]} == {
        ("slurm_jobs_pending", 3.0),
        ("slurm_jobs_pending_gpus", 5.0),
    }


def test_squeue_rows_with_another_field_count_are_skipped() -> None:
    text = "7|ana|acct|gpu|Resources|gres:gpu:1|2026-01-01T00:00:00\nnot|a|row\n"
    assert [r["job_id"] for r in parse_squeue(text, SQUEUE_PENDING_FIELDS)] == ["7"]
