"""Where Slurm data comes from: the Slurm client commands (squeue/sinfo/sdiag/sshare/scontrol).

There was a pyslurm backend; it guessed pyslurm's attribute names and never ran (pyslurm builds
only against the Slurm release it targets, 25.11, and not against Debian 12's 22.05), so it was
removed rather than shipped untested. The CLI works with every Slurm from 22.05 on.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from exporters.slurm.commands import CommandError, CommandRunner
from exporters.slurm.parsers import licenses, reservations, scontrol_jobs, sdiag, sinfo, squeue, sshare
from exporters.slurm.parsers.common import Parsed, ParseTimeout

log = logging.getLogger(__name__)

# command name -> (binary, arguments, parser)
CLI_COMMANDS: dict[str, tuple[str, list[str], Callable[[str, float | None], Parsed[Any]]]] = {
    "sinfo": ("sinfo", sinfo.ARGS, sinfo.parse),
    "squeue": ("squeue", squeue.ARGS, squeue.parse),
    "scontrol": ("scontrol", scontrol_jobs.ARGS, scontrol_jobs.parse),
    "sdiag": ("sdiag", sdiag.ARGS, sdiag.parse),
    "sshare": ("sshare", sshare.ARGS, sshare.parse),
    "reservations": ("scontrol", reservations.ARGS, reservations.parse),
    "licenses": ("scontrol", licenses.ARGS, licenses.parse),
}


# Commands whose output is never empty on a working cluster (sdiag always prints its
# statistics): nothing read from them means the output was not theirs. sinfo prints nothing
# for a cluster with no node (an autoscaled cluster at zero workers): only lines of which none
# is readable are not sinfo's.
EXPECT_ITEMS = frozenset({"sdiag"})
EXPECT_ITEMS_IN_LINES = frozenset({"sinfo"})


class UnreadableOutput(CommandError):
    """The command exited 0 but its output could not be read: a failed poll, not an empty cluster."""

    def __init__(self, message: str, parse_errors: int) -> None:
        super().__init__(message)
        self.parse_errors = parse_errors


# scontrol's job records carry text users write, and the parser refuses records that text made
# malformed. Users must not be able to fail the whole poll (and so turn slurm_up to 0 and the
# job-map alerts off) by submitting many such jobs: for scontrol only output with no job record
# at all, when it is not empty, is unreadable.
USER_TEXT = frozenset({"scontrol"})


def check_readable(command: str, parsed: Parsed[Any]) -> None:
    """UnreadableOutput when nothing was read where something was expected, or most lines failed."""
    bad = min(parsed.errors, parsed.lines)
    why = ""
    if not parsed.items and (command in EXPECT_ITEMS or (command in EXPECT_ITEMS_IN_LINES and parsed.lines)):
        why = f"nothing readable in {parsed.lines} lines"
    elif command in USER_TEXT:
        if parsed.records == 0 and parsed.errors:
            why = f"no job record in {parsed.lines} lines"
    elif parsed.lines and bad * 2 > parsed.lines:
        why = f"{bad} of {parsed.lines} lines unreadable"
    if why:
        sample = f" (first: {parsed.samples[0]})" if parsed.samples else ""
        raise UnreadableOutput(f"{command} output unreadable: {why}{sample}", parsed.errors)


class BackendError(RuntimeError):
    """The chosen backend cannot be used (start-up error, exit code 2)."""


class Backend(Protocol):
    name: str

    def fetch(self, command: str, job_ids: Sequence[str] | None = None) -> Parsed[Any]:
        """Fresh data for one command; raises CommandError when the source fails."""
        ...


# Up to this many running GPU jobs get their GRES detail one `scontrol -d show job <id>` each;
# past it one full `scontrol -d show job` dump. Each single-job scontrol costs slurmctld about
# 2.5 read RPCs (bench: 4 jobs added 10 RPCs per poll), so a low limit keeps the poll's RPC count
# well under a per-scrape exporter's (20 per poll at 8 jobs vs vpenso's 27 per scrape).
DETAIL_LIMIT = 8


@dataclass
class CliBackend:
    runner: CommandRunner
    name: str = "cli"
    detail_limit: int = DETAIL_LIMIT

    def fetch(self, command: str, job_ids: Sequence[str] | None = None) -> Parsed[Any]:
        """Run and parse one command; the command timeout covers both, the output cap the first.

        For `scontrol` with `job_ids`, only those jobs' records are read (see job_detail).
        """
        if command == "scontrol" and job_ids is not None and len(job_ids) <= self.detail_limit:
            return self.job_detail(job_ids)
        return self._fetch(command, CLI_COMMANDS[command][1])

    def job_detail(self, job_ids: Sequence[str]) -> Parsed[Any]:
        """GRES detail of these jobs only, one `scontrol -d show job <id>` each, in one timeout.

        Only the record of the job asked for counts: a record a user's text injected under
        another id is not read at all.
        """
        merged: Parsed[scontrol_jobs.JobGpu] = Parsed()
        deadline = time.monotonic() + self.runner.limit()
        for job_id in job_ids:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise CommandError(f"scontrol timed out after {self.runner.timeout:g}s (job detail)")
            try:
                parsed = self._fetch("scontrol", [*scontrol_jobs.ARGS, job_id], timeout=remaining, only=job_id)
            except CommandError as exc:
                if "invalid job id" in str(exc).lower():
                    continue  # it ended since squeue listed it: nothing to map
                raise
            merged.items.extend(parsed.items)
            merged.errors += parsed.errors
            merged.samples.extend(parsed.samples[: 3 - len(merged.samples)])
            merged.lines += parsed.lines
            merged.records += parsed.records
        return merged

    def _fetch(
        self, command: str, args: Sequence[str], timeout: float | None = None, only: str | None = None
    ) -> Parsed[Any]:
        binary, _args, parser = CLI_COMMANDS[command]
        limit = self.runner.limit(timeout)
        deadline = time.monotonic() + limit
        text = self.runner.run(binary, args, timeout=limit)
        try:
            parsed = scontrol_jobs.parse(text, deadline, only=only) if only is not None else parser(text, deadline)
        except ParseTimeout as exc:
            raise CommandError(f"{command} timed out after {limit:g}s (reading and parsing): {exc}") from None
        except Exception as exc:  # parsers never raise by design; if one does, this poll failed, not the process
            log.exception("slurm output parser failed", extra={"command": command})
            raise UnreadableOutput(f"{command} output unreadable: parser failed: {type(exc).__name__}", 1) from None
        finally:
            del text  # the raw output can be large: free it before the next command runs
        check_readable(command, parsed)
        return parsed


def slurm_version(runner: CommandRunner) -> str | None:
    """`22.05.8` from `sinfo --version` (`slurm-wlm 22.05.8` / `slurm 24.11.1`); None if unknown."""
    try:
        out = runner.run("sinfo", ["--version"], timeout=min(runner.timeout, 10.0))
    except CommandError:
        return None
    match = re.search(r"(\d+\.\d+(?:\.\d+)?)", out)
    return match.group(1) if match else None


def select_backend(choice: str, runner: CommandRunner) -> tuple[Backend, str | None]:
    """The backend and the Slurm version. Only the CLI exists: `auto` is its alias for old configs."""
    if choice not in ("auto", "cli"):
        raise BackendError(f"--backend {choice}: unknown backend (only cli)")
    return CliBackend(runner), slurm_version(runner)


__all__ = ["Backend", "BackendError", "CliBackend", "select_backend"]
