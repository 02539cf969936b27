"""Slurm job attribution from /proc: cgroup v1/v2 paths and SLURM_JOB_ID, on a real process."""

from __future__ import annotations

from pathlib import Path

from exporters.gpu.attribution import JobResolver, job_from_cgroup, job_from_environ
from tests.harness.processes import ManagedProcess


def test_cgroup_v2_and_v1_paths() -> None:
    assert job_from_cgroup("0::/system.slice/slurmstepd.scope/job_123/step_0/user/task_0\n") == "123"
    assert job_from_cgroup("12:memory:/slurm/uid_0/job_77/step_batch/task_0\n4:devices:/\n") == "77"
    assert job_from_cgroup("5:cpuset:/slurm_node1/uid_1000/job_9\n") == "9"
    assert job_from_cgroup("0::/user.slice/user-0.slice/session-3.scope\n") is None
    assert job_from_cgroup("0::/jobs/job_x/\n") is None


def test_environ_fallback() -> None:
    assert job_from_environ(b"PATH=/bin\0SLURM_JOB_ID=4242\0") == "4242"
    assert job_from_environ(b"SLURM_JOBID=17\0") == "17"
    assert job_from_environ(b"SLURM_JOB_ID=abc\0") is None


def test_real_process_resolves_by_environment(sleeper: ManagedProcess) -> None:
    # This machine has no Slurm cgroup for the sleeper: the environment decides.
    assert JobResolver(["/proc"]).job_id(sleeper.pid) == "4242"


def test_first_root_with_the_pid_wins(tmp_path: Path, sleeper: ManagedProcess) -> None:
    fake = tmp_path / "proc"
    (fake / str(sleeper.pid)).mkdir(parents=True)
    (fake / str(sleeper.pid) / "cgroup").write_text("0::/system.slice/slurmstepd.scope/job_555/step_0\n")
    assert JobResolver([fake, "/proc"]).job_id(sleeper.pid) == "555"
    assert JobResolver([tmp_path / "empty", "/proc"]).job_id(sleeper.pid) == "4242"
    assert JobResolver(["/proc"]).job_id(2**22 + 12345) == ""
