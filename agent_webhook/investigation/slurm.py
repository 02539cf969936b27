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

    def _binary(self) -> str:
        if self.bin_dir:
            path = os.path.join(self.bin_dir, "scontrol")
            if os.access(path, os.X_OK):
                return path
            raise SlurmUnavailable(f"scontrol not found in slurm.bin_dir {self.bin_dir}")
        found = shutil.which("scontrol")
        if not found:
            raise SlurmUnavailable("scontrol not found on PATH")
        return found

    async def _run(self, *args: str) -> ScontrolResult:
        argv = [self._binary(), *args]
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
            raise SlurmUnavailable(f"scontrol {' '.join(args)} timed out after {self.timeout_seconds:g}s") from None
        if proc.returncode != 0:
            detail = err.decode(errors="replace").strip()[:300]
            raise SlurmUnavailable(f"scontrol {' '.join(args)} failed (exit {proc.returncode}): {detail}")
        text = out[:MAX_OUTPUT_BYTES].decode(errors="replace").strip()
        return ScontrolResult(text=text, fields=parse_scontrol(text))

    async def show_node(self, node: str) -> ScontrolResult:
        return await self._run("show", "node", check_node(node), "--oneliner")

    async def show_job(self, job_id: str) -> ScontrolResult:
        return await self._run("show", "job", check_job_id(job_id), "--oneliner")


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
