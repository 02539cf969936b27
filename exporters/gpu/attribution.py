"""Which Slurm job owns a GPU process: from its cgroup path, else its SLURM_JOB_ID.

slurmd puts every step in a cgroup whose path names the job, under cgroup v1
(`4:memory:/slurm/uid_1000/job_123/step_0/task_0`) and v2
(`0::/system.slice/slurmstepd.scope/job_123/step_batch/user/task_0`). The cgroup is set by
slurmd, so it cannot be spoofed by the job; the environment is the fallback for processes
outside a job cgroup (e.g. `srun --cgroup=no`, containers that hide cgroups).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

_CGROUP_JOB = re.compile(r"/job_(\d+)(?:/|$)")
_ENV_KEYS = (b"SLURM_JOB_ID=", b"SLURM_JOBID=")


def job_from_cgroup(text: str) -> str | None:
    for line in text.splitlines():
        # hierarchy-id:controllers:path; the path may itself contain ':'
        parts = line.split(":", 2)
        match = _CGROUP_JOB.search(parts[2] if len(parts) == 3 else line)
        if match:
            return match.group(1)
    return None


def job_from_environ(data: bytes) -> str | None:
    for entry in data.split(b"\0"):
        for key in _ENV_KEYS:
            if entry.startswith(key):
                value = entry[len(key) :].decode(errors="replace").strip()
                if value.isdigit():
                    return value
    return None


class JobResolver:
    """Looks a pid up under each proc root in turn (the first root that has the pid wins)."""

    def __init__(self, proc_roots: Sequence[str | Path] = ("/proc",)) -> None:
        self.proc_roots = [Path(p) for p in proc_roots]

    def job_id(self, pid: int) -> str:
        """The Slurm job id, or "" when the process is not in a job or is not visible here."""
        for root in self.proc_roots:
            base = root / str(pid)
            if not base.is_dir():
                continue
            try:
                job = job_from_cgroup((base / "cgroup").read_text(errors="replace"))
            except OSError:
                job = None
            if job is None:
                try:
                    job = job_from_environ((base / "environ").read_bytes())
                except OSError:  # another user's environ needs root; the cgroup usually suffices
                    job = None
            return job or ""
        return ""
