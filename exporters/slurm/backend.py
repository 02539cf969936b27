"""Where Slurm data comes from: the CLI (squeue/sinfo/sdiag/sshare/scontrol) or pyslurm.

`auto` takes pyslurm only when it imports *and* was built for the running Slurm's
major.minor (pyslurm's version is the Slurm version it targets: 25.11.x for Slurm 25.11);
anything else falls back to the CLI, which works with every Slurm from 22.05 on.
"""

from __future__ import annotations

import importlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

from exporters.slurm.commands import CommandError, CommandRunner
from exporters.slurm.parsers import scontrol_jobs, sdiag, sinfo, squeue, sshare
from exporters.slurm.parsers.common import Parsed, ParseTimeout, nullable
from exporters.slurm.parsers.gres import gpus_by_type

log = logging.getLogger(__name__)

# command name -> (binary, arguments, parser)
CLI_COMMANDS: dict[str, tuple[str, list[str], Callable[[str, float | None], Parsed[Any]]]] = {
    "sinfo": ("sinfo", sinfo.ARGS, sinfo.parse),
    "squeue": ("squeue", squeue.ARGS, squeue.parse),
    "scontrol": ("scontrol", scontrol_jobs.ARGS, scontrol_jobs.parse),
    "sdiag": ("sdiag", sdiag.ARGS, sdiag.parse),
    "sshare": ("sshare", sshare.ARGS, sshare.parse),
}


# Commands whose output can never be empty on a working cluster: every cluster has a node, and
# sdiag always prints its statistics. Nothing read from them means the output was not theirs.
EXPECT_ITEMS = frozenset({"sinfo", "sdiag"})


class UnreadableOutput(CommandError):
    """The command exited 0 but its output could not be read: a failed poll, not an empty cluster."""

    def __init__(self, message: str, parse_errors: int) -> None:
        super().__init__(message)
        self.parse_errors = parse_errors


def check_readable(command: str, parsed: Parsed[Any]) -> None:
    """UnreadableOutput when nothing was read where something was expected, or most lines failed."""
    bad = min(parsed.errors, parsed.lines)
    why = ""
    if command in EXPECT_ITEMS and not parsed.items:
        why = f"nothing readable in {parsed.lines} lines"
    elif parsed.lines and bad * 2 > parsed.lines:
        why = f"{bad} of {parsed.lines} lines unreadable"
    if why:
        sample = f" (first: {parsed.samples[0]})" if parsed.samples else ""
        raise UnreadableOutput(f"{command} output unreadable: {why}{sample}", parsed.errors)


class BackendError(RuntimeError):
    """The chosen backend cannot be used (start-up error, exit code 2)."""


class Backend(Protocol):
    name: str

    def fetch(self, command: str) -> Parsed[Any]:
        """Fresh data for one command; raises CommandError when the source fails."""
        ...


@dataclass
class CliBackend:
    runner: CommandRunner
    name: str = "cli"

    def fetch(self, command: str) -> Parsed[Any]:
        """Run and parse one command; the command timeout covers both, the output cap the first."""
        binary, args, parser = CLI_COMMANDS[command]
        limit = self.runner.limit()
        deadline = time.monotonic() + limit
        text = self.runner.run(binary, args, timeout=limit)
        try:
            parsed = parser(text, deadline)
        except ParseTimeout as exc:
            raise CommandError(f"{command} timed out after {limit:g}s (reading and parsing): {exc}") from None
        except Exception as exc:  # parsers never raise by design; if one does, this poll failed, not the process
            log.exception("slurm output parser failed", extra={"command": command})
            raise UnreadableOutput(f"{command} output unreadable: parser failed: {type(exc).__name__}", 1) from None
        finally:
            del text  # the raw output can be large: free it before the next command runs
        check_readable(command, parsed)
        return parsed


class PyslurmBackend:
    """Nodes and jobs through pyslurm's API (no process per poll); the rest through the CLI.

    sdiag, sshare and the per-job GRES index detail have no stable pyslurm equivalent across
    releases, so those stay on the CLI backend.
    """

    name = "pyslurm"

    def __init__(self, module: ModuleType, cli: CliBackend) -> None:
        self.pyslurm = module
        self.cli = cli

    def fetch(self, command: str) -> Parsed[Any]:
        try:
            if command == "sinfo":
                return self._nodes()
            if command == "squeue":
                return self._jobs()
        except CommandError:
            raise
        except Exception as exc:  # pyslurm raises its own RPCError and friends
            raise CommandError(f"pyslurm {command}: {type(exc).__name__}: {exc}") from None
        return self.cli.fetch(command)

    def _nodes(self) -> Parsed[sinfo.Node]:
        result: Parsed[sinfo.Node] = Parsed()
        for name, node in self.pyslurm.Nodes.load().items():
            state, flags = sinfo.split_state(
                str(_attr(node, "state")).lower(), "+".join(_attr(node, "state_flags") or ())
            )
            result.items.append(
                sinfo.Node(
                    name=str(name),
                    state=state,
                    flags=flags | frozenset(f.lower() for f in (_attr(node, "state_flags") or ())),
                    cpus_total=int(_attr(node, "total_cpus") or 0),
                    cpus_allocated=int(_attr(node, "allocated_cpus") or 0),
                    memory_mb=float(_attr(node, "real_memory") or 0),
                    memory_allocated_mb=float(_attr(node, "allocated_memory") or 0),
                    gpus_total=gpus_by_type(_gres_text(_attr(node, "configured_gres"))) or {},
                    gpus_allocated=gpus_by_type(_gres_text(_attr(node, "allocated_gres"))) or {},
                    reason=nullable(str(_attr(node, "reason") or "")),
                    partitions=list(_attr(node, "partitions") or []),
                )
            )
        return result

    def _jobs(self) -> Parsed[squeue.Job]:
        result: Parsed[squeue.Job] = Parsed()
        for job in self.pyslurm.Jobs.load().values():
            gpus, gtype = squeue.job_gpus(
                _tres_text(_attr(job, "allocated_tres") or ""),
                _tres_text(_attr(job, "gres_per_node") or ""),
                _tres_text(_attr(job, "gpus") or ""),
                _tres_text(_attr(job, "gpus_per_task") or ""),
                nodes=int(_attr(job, "num_nodes") or 0),
                tasks=int(_attr(job, "num_tasks") or 1),
            )
            array_task = _attr(job, "array_task_id")
            result.items.append(
                squeue.Job(
                    job_id=str(_attr(job, "id")),
                    display_id=f"{_attr(job, 'array_id')}_{array_task}"
                    if array_task is not None
                    else str(_attr(job, "id")),
                    partition=nullable(str(_attr(job, "partition") or "")).split(",")[0],
                    user=str(_attr(job, "user_name") or ""),
                    account=str(_attr(job, "account") or ""),
                    state=str(_attr(job, "state")).lower(),
                    reason=nullable(str(_attr(job, "state_reason") or "")),
                    submit_time=_attr(job, "submit_time") or None,
                    start_time=_attr(job, "start_time") or None,
                    end_time=_attr(job, "end_time") or None,
                    nodes=str(_attr(job, "nodes") or ""),
                    num_nodes=int(_attr(job, "num_nodes") or 0),
                    gpus=gpus,
                    gpu_type=gtype,
                )
            )
        return result


def _attr(obj: Any, name: str) -> Any:
    """pyslurm's attribute names move between releases: a missing one reads as unset."""
    return getattr(obj, name, None)


def _gres_text(value: Any) -> str:
    """pyslurm gives GRES as {"gpu:h100": 4}; turn it into the CLI's `gpu:h100:4` form."""
    if isinstance(value, dict):
        return ",".join(f"{k}:{v}" for k, v in value.items())
    return str(value or "")


def _tres_text(value: Any) -> str:
    if isinstance(value, dict):
        return ",".join(f"gres/{k}:{v}" if "=" not in str(k) else str(k) for k, v in value.items())
    if isinstance(value, int):
        return f"gres/gpu:{value}" if value else ""
    return str(value or "")


_VERSION = re.compile(r"(\d+)\.(\d+)")


def major_minor(text: str) -> str | None:
    match = _VERSION.search(text or "")
    return f"{match.group(1)}.{match.group(2)}" if match else None


def slurm_version(runner: CommandRunner) -> str | None:
    """`22.05.8` from `sinfo --version` (`slurm-wlm 22.05.8` / `slurm 24.11.1`); None if unknown."""
    try:
        out = runner.run("sinfo", ["--version"], timeout=min(runner.timeout, 10.0))
    except CommandError:
        return None
    match = re.search(r"(\d+\.\d+(?:\.\d+)?)", out)
    return match.group(1) if match else None


def pyslurm_candidate(version: str | None) -> tuple[ModuleType | None, str]:
    """(pyslurm module, "") when it can serve this Slurm; (None, why not) otherwise."""
    try:
        module = importlib.import_module("pyslurm")
    except Exception as exc:  # ImportError, or a linker error loading libslurm
        return None, f"pyslurm cannot be imported ({type(exc).__name__}: {exc})"
    built_for = major_minor(str(getattr(module, "__version__", "")))
    running = major_minor(version or "")
    if running is None:
        return None, "the running Slurm version is unknown (sinfo --version failed)"
    if built_for != running:
        return None, f"pyslurm {getattr(module, '__version__', '?')} does not match Slurm {version}"
    return module, ""


def select_backend(choice: str, runner: CommandRunner) -> tuple[Backend, str | None]:
    """The backend for `--backend choice` and the Slurm version; BackendError if `pyslurm` can't load."""
    cli = CliBackend(runner)
    version = slurm_version(runner)
    if choice == "cli":
        return cli, version
    module, why_not = pyslurm_candidate(version)
    if module is not None:
        return PyslurmBackend(module, cli), version
    if choice == "pyslurm":
        raise BackendError(f"--backend pyslurm: {why_not}")
    log.info("using the CLI backend", extra={"reason": why_not})
    return cli, version


__all__ = ["Backend", "BackendError", "CliBackend", "PyslurmBackend", "select_backend"]
