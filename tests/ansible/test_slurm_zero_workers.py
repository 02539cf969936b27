"""The slurm_head role with zero workers, for real: slurmctld starts, a GPU job waits, a worker joins and runs it.

An autoscaled cluster starts (and may end up again) with no worker at all (the agent's
`min_workers: 0`). The role runs through ansible-playbook against this machine with a private
Slurm: its own munged (the harness's), config, state, ports and gw-supervise prefix, so nothing
touches /etc/slurm or the system munged. Then:

1. zero workers: slurmctld runs, `sbatch --gres=gpu:1` into the GPU partition is accepted and
   stays PENDING (reason PartitionConfig, what SlurmGPUQueueBacklog counts);
2. a worker joins as site.yml/scale.yml add one (its NodeName line written, slurmctld restarted
   by gw-supervise, `scontrol reconfigure`), its slurmd registers, and the waiting job runs;
3. the worker is removed again: slurmctld comes back with zero nodes (Slurm 22.05 crashes on
   the saved state of the vanished node unless the role clears it, and on a finished job that
   named it with -w unless the role waits until slurmctld has forgotten that job) and queues
   the next job; a re-run at zero changes nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness.processes import ManagedProcess, ProcessManager, free_port, wait_until
from tests.harness.slurm import SlurmUnavailable, private_munge

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
VENV_BIN = Path(sys.executable).parent
HOSTNAME = socket.gethostname()
PLAYBOOK = """\
- name: Slurm head
  hosts: localhost
  connection: local
  gather_facts: false  # what the role reads from facts is given (a lean test on 2 cores)
  roles:
    - slurm_head
"""


@dataclass
class Head:
    root: Path
    variables: dict[str, Any]
    env: dict[str, str]
    procs: ProcessManager
    slurmd: ManagedProcess | None = None

    @property
    def conf(self) -> Path:
        return self.root / "etc" / "slurm.conf"

    def deploy(self, workers: list[str]) -> subprocess.CompletedProcess[str]:
        vars_file = self.root / "vars.json"
        vars_file.write_text(json.dumps({**self.variables, "slurm_head_workers": workers}))
        playbook = self.root / "head.yml"
        playbook.write_text(PLAYBOOK)
        return subprocess.run(
            [str(VENV_BIN / "ansible-playbook"), "-i", "localhost,", str(playbook), "-e", f"@{vars_file}"],
            cwd=ANSIBLE_DIR,
            capture_output=True,
            text=True,
            timeout=240,
            env={**os.environ, "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"), "ANSIBLE_NOCOLOR": "1"},
        )

    def slurm(self, *argv: str, check: bool = True) -> str:
        result = subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=30)
        if check:
            assert result.returncode == 0, f"{' '.join(argv)}: {result.stderr}"
        return result.stdout.strip()

    def job(self, job_id: str) -> str:
        """`JobState=... Reason=...` from scontrol (squeue forgets finished jobs)."""
        out = self.slurm("scontrol", "show", "job", job_id)
        return " ".join(word for word in out.split() if word.startswith(("JobState=", "Reason=")))


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no MemTotal in /proc/meminfo")


def _passed(run: subprocess.CompletedProcess[str]) -> str:
    return f"rc {run.returncode}\n{run.stdout[-6000:]}\n{run.stderr[-2000:]}"


@pytest.fixture
def head(procs: ProcessManager) -> Iterator[Head]:
    try:
        munge_root, munge_socket, _munged = private_munge(procs)
    except SlurmUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)  # make test installs Slurm: never skip silently
    root = Path(tempfile.mkdtemp(prefix="gw-zero-"))
    for sub in ("run", "spool", "dev"):
        (root / sub).mkdir()
    # The worker's simulated GPUs: quiet character-device stand-ins, as the slurm_worker role makes.
    for i in range(4):
        os.mknod(root / "dev" / f"gpu{i}", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    ctld_port, slurmd_port = free_port(), free_port()
    variables: dict[str, Any] = {
        "ansible_python_interpreter": sys.executable,
        "gpu_watchdog_prefix": str(root / "prefix"),
        "gw_service_manager": "supervisor",
        "slurm_head_install_packages": False,
        "slurm_head_cluster_name": f"z{ctld_port}",
        "slurm_head_host": HOSTNAME,
        "slurm_head_address": "127.0.0.1",
        "slurm_head_ctld_port": ctld_port,
        "slurm_head_slurmd_port": slurmd_port,
        "slurm_head_conf_dir": str(root / "etc"),
        "slurm_head_state_dir": str(root / "state"),
        "slurm_head_log_dir": str(root / "log"),
        "slurm_head_slurmd_spool_dir": str(root / "spool"),
        "slurm_head_ctld_pid_file": str(root / "run" / "slurmctld.pid"),
        "slurm_head_slurmd_pid_file": str(root / "run" / "slurmd.pid"),
        "slurm_head_sim_gpu_device_prefix": str(root / "dev" / "gpu"),
        "slurm_head_slurmd_timeout": 10,
        # MinJobAge: finished jobs forgotten after 30 s, not 300 (the last worker's removal
        # waits for that when a job named a node).
        "slurm_head_extra_conf": f"AuthInfo=socket={munge_socket}\nMinJobAge=30",
        "slurm_head_named_jobs_timeout": 150,
        # The worker that joins later is this machine (the inventory's host variables of a pod).
        "slurm_node_name": HOSTNAME,
        "slurm_node_address": "127.0.0.1",
        "slurm_node_cpus": os.cpu_count(),
        "slurm_node_memory_mb": _memory_mb() * 95 // 100,
        "slurm_node_gpus": 4,
        "slurm_node_gpu_type": "h100",
        "slurm_node_gpu_sim": True,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SQUEUE_", "SBATCH_", "SINFO_"))}
    env |= {"SLURM_CONF": str(root / "etc" / "slurm.conf"), "PATH": f"{env.get('PATH', '')}:/usr/sbin"}
    made = Head(root=root, variables=variables, env=env, procs=procs)
    try:
        yield made
    finally:
        supervise = root / "prefix" / "bin" / "gw-supervise"
        if supervise.exists():
            subprocess.run(
                ["/usr/bin/python3", str(supervise), "--conf-dir", str(root / "prefix" / "services"),
                 "--run-dir", str(root / "prefix" / "run"), "stop", "--all"],
                capture_output=True,
                timeout=60,
            )  # fmt: skip
        if made.slurmd is not None:
            made.slurmd.stop()
        shutil.rmtree(root, ignore_errors=True)
        shutil.rmtree(munge_root, ignore_errors=True)


def test_head_with_zero_workers_queues_gpu_jobs_until_a_worker_joins(head: Head) -> None:
    started = time.monotonic()
    first = head.deploy(workers=[])
    assert first.returncode == 0, _passed(first)
    conf = head.conf.read_text()
    assert "NodeName=" not in conf and "MaxNodeCount=1" in conf, conf
    assert "UP" in head.slurm("scontrol", "ping")

    # Accepted, not rejected at submit, and left waiting: no node can run it yet.
    job = head.slurm("sbatch", "--parsable", "-p", "gpu", "-o", "/dev/null", "--gres=gpu:1", "--wrap", "hostname")
    time.sleep(2)
    assert head.job(job) == "JobState=PENDING Reason=PartitionConfig"
    squeue = head.slurm("squeue", "-h", "-o", "%i %P %T %r %b")
    assert squeue == f"{job} gpu PENDING PartitionConfig gres:gpu:1", squeue

    # A worker joins: its NodeName line, slurmctld restarted (jobs kept), then its slurmd.
    joined = head.deploy(workers=["localhost"])
    assert joined.returncode == 0, _passed(joined)
    conf = head.conf.read_text()
    assert f"NodeName={HOSTNAME} NodeAddr=127.0.0.1" in conf and "MaxNodeCount" not in conf, conf
    assert "Gres=gpu:h100:4" in conf
    head.slurmd = head.procs.start(
        "slurmd-zero", ["/usr/sbin/slurmd", "-D", "-f", str(head.conf), "-N", HOSTNAME], env=head.env
    )
    wait_until(
        lambda: head.job(job).startswith("JobState=COMPLETED"),
        90,
        interval=1,
        what=f"job {job} to run on the new worker",
    )

    # A job that named the worker (sbatch -w): once finished, its record still names it, and
    # 22.05's slurmctld crashes at start with no node while it exists: the role waits it out.
    named = head.slurm("sbatch", "--parsable", "-w", HOSTNAME, "-o", "/dev/null", "--wrap", "true")
    wait_until(lambda: head.job(named).startswith("JobState=COMPLETED"), 60, interval=1, what=f"job {named}")

    # The last worker goes: slurmctld must come back with no node and keep queueing.
    head.slurmd.stop()
    head.slurmd = None
    assert head.job(named).startswith("JobState=COMPLETED")  # still remembered
    emptied = head.deploy(workers=[])
    assert emptied.returncode == 0, _passed(emptied)
    assert "NodeName=" not in head.conf.read_text()
    assert head.slurm("sinfo", "-h", "-N") == ""
    again = head.slurm("sbatch", "--parsable", "-p", "gpu", "-o", "/dev/null", "--gres=gpu:1", "--wrap", "hostname")
    time.sleep(2)
    assert head.job(again) == "JobState=PENDING Reason=PartitionConfig"
    # Once at zero, a re-run changes nothing (no stop, no state removed, no restart).
    rerun = head.deploy(workers=[])
    assert rerun.returncode == 0 and re.search(r"localhost\s*: ok=\d+\s+changed=0 ", rerun.stdout), _passed(rerun)
    assert head.job(again) == "JobState=PENDING Reason=PartitionConfig"
    print(f"zero -> one -> zero workers: {time.monotonic() - started:.0f}s")
