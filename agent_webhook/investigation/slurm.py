"""`scontrol show node/job` on the head node (slurm.mode: scontrol), bounded and validated.

Arguments are validated before they reach argv (no shell is involved either way), the binary
comes from slurm.bin_dir or PATH, and a command that hangs (a dead slurmctld makes clients
retry for ~9 s) is killed at the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
from dataclasses import dataclass

from agent_webhook.investigation.safety import check_job_id, check_node

MAX_OUTPUT_BYTES = 256 * 1024


class SlurmUnavailable(Exception):
    """scontrol missing, failing or timing out."""


@dataclass
class ScontrolResult:
    text: str
    fields: dict[str, str]


class Scontrol:
    def __init__(self, bin_dir: str | None, timeout_seconds: float = 10.0) -> None:
        self.bin_dir = bin_dir
        self.timeout_seconds = timeout_seconds

    def _binary(self, program: str = "scontrol") -> str:
        if self.bin_dir:
            path = os.path.join(self.bin_dir, program)
            if os.access(path, os.X_OK):
                return path
            raise SlurmUnavailable(f"{program} not found in slurm.bin_dir {self.bin_dir}")
        found = shutil.which(program)
        if not found:
            raise SlurmUnavailable(f"{program} not found on PATH")
        return found

    async def _run(self, *args: str, program: str = "scontrol") -> ScontrolResult:
        argv = [self._binary(program), *args]
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # its own process group: a timeout kills wrappers' children too
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), self.timeout_seconds)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 2)
            raise SlurmUnavailable(f"{program} {' '.join(args)} timed out after {self.timeout_seconds:g}s") from None
        if proc.returncode != 0:
            detail = err.decode(errors="replace").strip()[:300]
            raise SlurmUnavailable(f"{program} {' '.join(args)} failed (exit {proc.returncode}): {detail}")
        text = out[:MAX_OUTPUT_BYTES].decode(errors="replace").strip()
        return ScontrolResult(text=text, fields=parse_scontrol(text))

    async def show_node(self, node: str) -> ScontrolResult:
        return await self._run("show", "node", check_node(node), "--oneliner")

    async def show_job(self, job_id: str) -> ScontrolResult:
        return await self._run("show", "job", check_job_id(job_id), "--oneliner")

    async def jobs_on_node(self, node: str) -> list[dict[str, str]]:
        """The jobs running (or completing, suspended, configuring) on `node`, from squeue."""
        out = await self._run(
            "--noheader",
            "--nodelist",
            check_node(node),
            "--states",
            "RUNNING,COMPLETING,SUSPENDED,CONFIGURING",
            "--format",
            SQUEUE_RUNNING_FORMAT,
            program="squeue",
        )
        return parse_squeue(out.text, SQUEUE_RUNNING_FIELDS)

    async def pending_gpu_jobs(self) -> list[dict[str, str]]:
        """Pending jobs that ask for GPUs (a `gpu` GRES per node), from squeue."""
        out = await self._run("--noheader", "--states", "PENDING", "--format", SQUEUE_PENDING_FORMAT, program="squeue")
        return [j for j in parse_squeue(out.text, SQUEUE_PENDING_FIELDS) if "gpu" in j["gres"]]


# Fields a job's owner cannot fill with free text (no job name, comment or command): a row
# cannot be forged into another job's or node's, and no secret from a command line comes out.
SQUEUE_RUNNING_FIELDS = ("job_id", "user", "account", "partition", "state", "elapsed", "nodes", "gres")
SQUEUE_RUNNING_FORMAT = "%i|%u|%a|%P|%T|%M|%D|%b"
SQUEUE_PENDING_FIELDS = ("job_id", "user", "account", "partition", "reason", "gres", "submitted")
SQUEUE_PENDING_FORMAT = "%i|%u|%a|%P|%r|%b|%V"
MAX_JOB_ROWS = 50


def parse_squeue(text: str, fields: tuple[str, ...]) -> list[dict[str, str]]:
    """`a|b|c` rows in `fields` order; lines with another number of fields are skipped."""
    rows = []
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) == len(fields):
            rows.append(dict(zip(fields, (p.strip() for p in parts), strict=True)))
    return rows


_KEY = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_:/]*)=")


def parse_scontrol(text: str) -> dict[str, str]:
    """`Key=Value Key=Value ...` of the first record; values may contain spaces (Reason=...)."""
    first = text.splitlines()[0] if text else ""
    keys = list(_KEY.finditer(first))
    fields: dict[str, str] = {}
    for index, match in enumerate(keys):
        end = keys[index + 1].start() if index + 1 < len(keys) else len(first)
        fields.setdefault(match.group(1), first[match.end() : end].strip())
    reason = fields.get("Reason")
    if reason:
        # "Reason=XID 79 [root@2024-05-01T10:00:00]": the who/when suffix is not the reason.
        fields["Reason"] = re.sub(r"\s*\[[^\]]*\]\s*$", "", reason)
    return fields
