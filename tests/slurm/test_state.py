"""Stateful metrics (GPU-seconds, wait histogram), one run per command per cycle, the backend."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from exporters.slurm.backend import BackendError, CliBackend, select_backend
from exporters.slurm.collectors.gpus import GpusCollector, GpuSeconds
from exporters.slurm.collectors.jobs import WaitTimes
from exporters.slurm.commands import CommandError, CommandRunner
from exporters.slurm.parsers.squeue import Job
from exporters.slurm.source import SlurmSource
from tests.slurm.standins import calls, make_standins


def job(jid: str, state: str, submit: float, start: float | None, end: float | None = None, gpus: int = 2) -> Job:
    return Job(
        job_id=jid,
        display_id=jid,
        partition="gpu",
        user="alice",
        account="ml",
        state=state,
        reason="",
        submit_time=submit,
        start_time=start,
        end_time=end,
        nodes="n1" if start is not None else "",
        num_nodes=1,
        gpus=gpus,
        gpu_type="h100",
    )


KEY = ("alice", "ml", "gpu")


def test_gpu_seconds_credit_only_time_between_polls() -> None:
    acc = GpuSeconds()
    acc.update([job("1", "running", 0, 50)], generation=1, now=100)
    assert acc.totals[KEY] == 0  # first poll: nothing observed yet
    acc.update([job("1", "running", 0, 50)], generation=2, now=115)
    assert acc.totals[KEY] == 2 * 15
    acc.update([job("1", "running", 0, 50)], generation=2, now=130)  # same result again: no credit
    assert acc.totals[KEY] == 30
    # Job 2 started and finished between polls; job 1 ended 5 s after the last poll.
    acc.update(
        [job("1", "completed", 0, 50, end=120), job("2", "completed", 100, 118, end=125, gpus=1)],
        generation=3,
        now=130,
    )
    assert acc.totals[KEY] == 30 + 2 * 5 + 1 * 7
    # A pending or suspended job holds nothing; a failed poll (same generation) credits nothing.
    acc.update([job("3", "pending", 120, None), job("4", "suspended", 0, 10)], generation=4, now=145)
    assert acc.totals[KEY] == 47


def test_wait_histogram_once_per_job_and_bounded_memory() -> None:
    waits = WaitTimes()
    waits.update([job("old", "running", 0, 100)], generation=1)
    assert waits.histograms == {}  # running before the exporter started: remembered, not observed
    waits.update([job("old", "running", 0, 100), job("new", "running", 200, 245)], generation=2)
    waits.update([job("old", "running", 0, 100), job("new", "running", 200, 245)], generation=3)
    hist = waits.histograms["gpu"]
    assert sum(hist.counts) == 1 and hist.total == 45
    assert dict(hist.buckets())["60.0"] == 1 and dict(hist.buckets())["30.0"] == 0
    waits.update([job("x", "pending", 300, None)], generation=4)
    assert waits.seen == set()  # jobs slurmctld no longer lists are forgotten


def test_each_command_runs_once_per_cycle(tmp_path: Path) -> None:
    bin_dir = make_standins(tmp_path / "bin", "23.11")
    source = SlurmSource(CliBackend(CommandRunner(bin_dir=str(bin_dir))))
    for consumer in ("nodes", "partitions", "gpus"):
        source.begin(consumer)
        source.get("sinfo")
    assert len(calls(bin_dir)) == 1
    source.begin("nodes")  # a collector seen again: the next cycle
    source.get("sinfo")
    assert len(calls(bin_dir)) == 2


def test_missing_binary_is_a_command_error(tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="squeue not found"):
        CommandRunner(bin_dir=str(tmp_path)).run("squeue", [])


def test_only_the_cli_backend_exists(tmp_path: Path) -> None:
    bin_dir = make_standins(tmp_path / "bin", "24.11")
    for choice in ("auto", "cli"):
        backend, version = select_backend(choice, CommandRunner(bin_dir=str(bin_dir)))
        assert backend.name == "cli" and version == "24.11.1"
    with pytest.raises(BackendError, match="only cli"):
        select_backend("pyslurm", CommandRunner(bin_dir=str(bin_dir)))


def _dumps(bin_dir: Path) -> list[str]:
    return [c for c in calls(bin_dir) if c.endswith("show job")]


def test_job_dump_is_read_ahead_only_while_needed(tmp_path: Path) -> None:
    bin_dir = make_standins(tmp_path / "bin", "23.11")
    backend = CliBackend(CommandRunner(bin_dir=str(bin_dir)), detail_limit=0)
    source = SlurmSource(backend)
    source.begin("gpus")
    source.get("squeue")
    first = source.get("scontrol", ["1", "2"])  # past the limit: the full dump, after squeue
    order = [c.split("/")[-1].split()[0] for c in calls(bin_dir)]
    assert first.fresh and order == ["squeue", "scontrol"]
    assert len(_dumps(bin_dir)) == 1
    source.end_cycle()

    begun = time.time()
    source.begin("gpus")  # the last poll needed the dump: it starts now, before squeue
    deadline = time.monotonic() + 10
    while len(_dumps(bin_dir)) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(_dumps(bin_dir)) == 2
    squeue_runs = sum("/squeue " in c for c in calls(bin_dir))
    assert squeue_runs == 1  # the dump did not wait for squeue
    time.sleep(1)  # the dump is done well before it is asked for
    source.get("squeue")
    second = source.get("scontrol", ["1", "2"])
    assert second.fresh and second.data is not None and second.data.items
    # When the read began is the dump's own start, not when it was taken (job detail memory relies on it).
    assert second.last_began is not None and second.last_success is not None
    assert begun <= second.last_began <= begun + 0.5 < second.last_success
    assert len(_dumps(bin_dir)) == 2  # the dump read ahead was used, not run again
    source.end_cycle()

    backend.detail_limit = 8  # few shared GPU jobs now: single-job reads, the dump read ahead is dropped
    source.begin("gpus")
    source.get("squeue")
    source.get("scontrol", ["1"])
    source.end_cycle()
    dumps = len(_dumps(bin_dir))
    source.begin("gpus")  # and no longer read ahead
    source.get("squeue")
    time.sleep(0.2)
    assert len(_dumps(bin_dir)) == dumps


def test_a_failed_dump_read_ahead_fails_the_command(tmp_path: Path) -> None:
    bin_dir = make_standins(tmp_path / "bin", "23.11")
    source = SlurmSource(CliBackend(CommandRunner(bin_dir=str(bin_dir)), detail_limit=0))
    source.begin("gpus")
    assert source.get("scontrol", ["1", "2"]).fresh
    source.end_cycle()
    (bin_dir / "scontrol.fail").touch()
    source.begin("gpus")
    state = source.get("scontrol", ["1", "2"])
    assert not state.fresh and "Unable to contact" in state.error and state.data is not None


def _without_job(squeue: Path, job_id: str) -> None:
    squeue.write_text(
        "".join(line for line in squeue.read_text().splitlines(True) if not line.startswith(f"{job_id}|"))
    )


def _poll_gpus(gpus: GpusCollector, source: SlurmSource, bin_dir: Path) -> tuple[set[tuple[str, str, str]], list[str]]:
    """One poll of the GPU collector: its job-to-GPU rows and the jobs scontrol was asked about."""
    before = len(calls(bin_dir))
    families = list(gpus.collect())
    source.end_cycle()
    asked = [c for c in calls(bin_dir)[before:] if " show job" in c]
    rows = {
        (s.labels["job_id"], s.labels["node"], s.labels["gpu"])
        for family in families
        if family.name == "slurm_job_gpu_info"
        for s in family.samples
    }
    return rows, sorted(c.split()[-1] for c in asked)


def test_gpu_indices_are_read_once_per_allocation(tmp_path: Path) -> None:
    bin_dir = make_standins(tmp_path / "bin", "23.11")
    source = SlurmSource(CliBackend(CommandRunner(bin_dir=str(bin_dir))))
    gpus = GpusCollector(source)
    first, asked = _poll_gpus(gpus, source, bin_dir)
    assert asked == ["4101", "4102", "4103", "4104"]  # the jobs sharing nodes, one read each
    assert {job for job, _, _ in first} == {"4101", "4102", "4103"} and len(first) == 15

    # Same allocations: nothing read again, except 4104, which scontrol's output lacks (the
    # fixture's squeue and scontrol were taken moments apart): a job without rows is not known.
    second, asked = _poll_gpus(gpus, source, bin_dir)
    assert asked == ["4104"] and second == first

    # 4101 was requeued and runs again (another start time): it is read again.
    squeue = bin_dir / "squeue.out"
    requeued = "|2024-05-01T10:45:00|2024-05-02T10:45:00|"
    squeue.write_text(squeue.read_text().replace("|2024-05-01T10:05:00|2024-05-02T10:05:00|", requeued))
    third, asked = _poll_gpus(gpus, source, bin_dir)
    assert asked == ["4101", "4104"] and third == first

    # 4102 ended: its GPUs leave the map at once, with no read.
    _without_job(squeue, "4102")
    fourth, asked = _poll_gpus(gpus, source, bin_dir)
    assert asked == ["4104"] and {job for job, _, _ in fourth} == {"4101", "4103"} and len(fourth) == 12


def test_a_job_whose_record_gave_no_gpus_is_read_again(tmp_path: Path) -> None:
    """Read just before it started (or refused as forged), a job is not remembered without GPUs."""
    bin_dir = make_standins(tmp_path / "bin", "23.11")
    dump = bin_dir / "scontrol.out"
    real = dump.read_text()
    dump.write_text(real.replace("JobState=RUNNING", "JobState=PENDING"))  # as scontrol saw them a moment earlier
    source = SlurmSource(CliBackend(CommandRunner(bin_dir=str(bin_dir))))
    gpus = GpusCollector(source)
    first, asked = _poll_gpus(gpus, source, bin_dir)
    assert len(asked) == 4 and first == set()
    dump.write_text(real)
    second, asked = _poll_gpus(gpus, source, bin_dir)
    assert asked == ["4101", "4102", "4103", "4104"] and len(second) == 15
    third, asked = _poll_gpus(gpus, source, bin_dir)
    assert asked == ["4104"] and third == second


def test_no_dump_is_read_ahead_once_every_job_is_known(tmp_path: Path) -> None:
    bin_dir = make_standins(tmp_path / "bin", "23.11")
    _without_job(bin_dir / "squeue.out", "4104")  # the dump lacks it: it would be read every poll
    source = SlurmSource(CliBackend(CommandRunner(bin_dir=str(bin_dir)), detail_limit=0))
    gpus = GpusCollector(source)
    first, _ = _poll_gpus(gpus, source, bin_dir)  # nothing known: the full dump
    assert len(_dumps(bin_dir)) == 1 and len(first) == 15
    second, _ = _poll_gpus(gpus, source, bin_dir)  # read ahead (the last poll needed it), not used
    assert second == first and "scontrol" not in source.ran_this_cycle()
    time.sleep(0.5)
    dumps = len(_dumps(bin_dir))
    third, _ = _poll_gpus(gpus, source, bin_dir)
    time.sleep(0.5)
    assert third == first and len(_dumps(bin_dir)) == dumps  # no longer read ahead


def test_a_job_that_started_after_the_read_began_is_read_again(tmp_path: Path) -> None:
    """The dump may show a requeued job's previous allocation: only what ran before it is kept."""
    bin_dir = make_standins(tmp_path / "bin", "23.11")
    squeue = bin_dir / "squeue.out"
    later = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() + 3600))  # after any read here
    squeue.write_text(squeue.read_text().replace("|2024-05-01T10:05:00|2024-05-02T10:05:00|", f"|{later}|N/A|"))
    source = SlurmSource(CliBackend(CommandRunner(bin_dir=str(bin_dir))))
    gpus = GpusCollector(source)
    first, asked = _poll_gpus(gpus, source, bin_dir)
    assert asked == ["4101", "4102", "4103", "4104"] and len(first) == 15  # this poll maps it all the same
    second, asked = _poll_gpus(gpus, source, bin_dir)
    assert asked == ["4101", "4104"] and second == first
