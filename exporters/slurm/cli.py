"""`slurm-exporter`: Slurm cluster, queue and GPU allocation metrics from one background poll."""

from __future__ import annotations

import logging
import os
import re
import signal
from pathlib import Path
from types import FrameType

import click

from exporters.slurm.backend import BackendError, select_backend
from exporters.slurm.collectors.exporter import ExporterCollector
from exporters.slurm.collectors.fairshare import FairshareCollector
from exporters.slurm.collectors.gpus import GpusCollector
from exporters.slurm.collectors.jobs import JobsCollector
from exporters.slurm.collectors.licenses import LicensesCollector
from exporters.slurm.collectors.nodes import NodesCollector
from exporters.slurm.collectors.partitions import PartitionsCollector
from exporters.slurm.collectors.reservations import ReservationsCollector
from exporters.slurm.collectors.scheduler import SchedulerCollector
from exporters.slurm.collectors.users import DEFAULT_LIMIT, UsersCollector
from exporters.slurm.commands import DEFAULT_MAX_OUTPUT, CommandError, CommandRunner
from exporters.slurm.source import SlurmSource
from gpu_watchdog_core.childproc import startup_deadline
from gpu_watchdog_core.cli import (
    ExporterParts,
    collection_process_option,
    collectors_option,
    common_options,
    fail,
    interval_option,
    select_or_exit,
    serve_exporter,
)
from gpu_watchdog_core.logs import setup_logging
from gpu_watchdog_core.poller import Collector

log = logging.getLogger(__name__)
COLLECTORS = (
    NodesCollector,
    PartitionsCollector,
    GpusCollector,
    JobsCollector,
    SchedulerCollector,
    FairshareCollector,
    ReservationsCollector,
    LicensesCollector,
)
COLLECTOR_NAMES = [*(c.name for c in COLLECTORS), UsersCollector.name]


def cluster_name(runner: CommandRunner) -> str:
    """ClusterName from slurm.conf when it is local, else `scontrol show config` ("" if neither works).

    The file comes first: it costs no RPC and no ~9 s wait when slurmctld is down at start-up.
    """
    conf = Path(os.environ.get("SLURM_CONF") or "/etc/slurm/slurm.conf")
    try:
        match = re.search(
            r"^\s*ClusterName\s*=\s*(\S+)", conf.read_text(errors="replace"), re.MULTILINE | re.IGNORECASE
        )
    except OSError:
        match = None
    if match:
        return match.group(1)
    try:
        out = runner.run("scontrol", ["show", "config"])
    except CommandError as exc:
        log.warning("cannot read ClusterName", extra={"error": str(exc)})
        return ""
    match = re.search(r"^ClusterName\s*=\s*(\S+)", out, re.MULTILINE)
    return match.group(1) if match else ""


def build_collectors(
    source: SlurmSource, wanted: list[str] | None, info: dict[str, str], user_limit: int | None = DEFAULT_LIMIT
) -> list[Collector]:
    """The selected collectors; per-user/account metrics unless `user_limit` is None (--no-user-metrics)."""
    available: list[Collector] = [cls(source) for cls in COLLECTORS]
    if user_limit is not None:
        available.append(UsersCollector(source, user_limit))
    selected = select_or_exit(available, wanted)
    return [*selected, ExporterCollector(source, info)]


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@common_options(default_listen="0.0.0.0:9341", envvar_prefix="SLURM_EXPORTER")
@interval_option("SLURM_EXPORTER", 15.0, "Seconds between polls of slurmctld.")
@click.option(
    "--backend",
    type=click.Choice(["auto", "cli"]),
    default="cli",
    envvar="SLURM_EXPORTER_BACKEND",
    help="Only the Slurm client commands (cli); auto is kept as its alias for existing configs.",
)
@click.option(
    "--slurm-bin-dir",
    type=click.Path(file_okay=False),
    default=None,
    envvar="SLURM_EXPORTER_SLURM_BIN_DIR",
    help="Where squeue/sinfo/sdiag/sshare/scontrol live (default: PATH).",
)
@click.option(
    "--command-timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    envvar="SLURM_EXPORTER_COMMAND_TIMEOUT",
    help="Seconds a Slurm command may take, reading and parsing its output included, before it is "
    "abandoned (its process group is killed). Also the start-up budget: the port opens within it.",
)
@click.option(
    "--command-max-output",
    type=click.IntRange(min=1024),
    default=DEFAULT_MAX_OUTPUT,
    envvar="SLURM_EXPORTER_COMMAND_MAX_OUTPUT",
    help="Bytes a Slurm command may print; past it the command is stopped and the poll fails.",
)
@click.option(
    "--cluster",
    default=None,
    envvar="SLURM_EXPORTER_CLUSTER",
    help="Cluster name for slurm_exporter_info (default: ClusterName from Slurm).",
)
@click.option(
    "--user-metrics/--no-user-metrics",
    default=True,
    envvar="SLURM_EXPORTER_USER_METRICS",
    help="Per-user and per-account jobs, CPUs, memory and GPUs (the users collector).",
)
@click.option(
    "--user-metrics-limit",
    type=click.IntRange(min=1),
    default=DEFAULT_LIMIT,
    envvar="SLURM_EXPORTER_USER_METRICS_LIMIT",
    help="Most (user, account) pairs and accounts exported by name; the rest are summed as (other).",
)
@click.option(
    "--read-ahead/--no-read-ahead",
    default=True,
    envvar="SLURM_EXPORTER_READ_AHEAD",
    help="When the last poll needed the full `scontrol -d show job` dump (many GPU jobs sharing "
    "nodes), start it beside squeue instead of after it (docs/slurm-exporter.md).",
)
@collectors_option("SLURM_EXPORTER", COLLECTOR_NAMES)
@collection_process_option("SLURM_EXPORTER")
def main(  # noqa: PLR0917 - click passes every option
    listen: str,
    web_config_path: str | None,
    log_level: str,
    log_format: str,
    interval: float,
    backend: str,
    slurm_bin_dir: str | None,
    command_timeout: float,
    command_max_output: int,
    cluster: str | None,
    user_metrics: bool,
    user_metrics_limit: int,
    read_ahead: bool,
    collectors: tuple[str, ...],
    collection_process: bool,
) -> None:
    """Export Slurm metrics for Prometheus from one background poll per interval."""
    setup_logging(log_level, log_format)

    def build_parts() -> ExporterParts:
        # Where collection runs: the collection process by default (gpu_watchdog_core/childproc.py).
        # Everything before the port opens (version, cluster name, first poll) shares one command
        # timeout, so a hung slurmctld delays the port by at most that. In the collection
        # process the deadline is the serving process's (startup_deadline).
        runner = CommandRunner(
            bin_dir=slurm_bin_dir,
            timeout=command_timeout,
            max_output=command_max_output,
            deadline=startup_deadline(command_timeout),
        )

        def terminate(signum: int, _frame: FrameType | None) -> None:
            # Before the server's own handlers are in place: a hung command must not outlive us.
            runner.kill_all()
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, terminate)
        try:
            chosen, version = select_backend(backend, runner)
        except BackendError as exc:
            fail(str(exc))
        source = SlurmSource(chosen, read_ahead=read_ahead)

        def end_startup_budget() -> None:
            runner.deadline = None

        source.after_cycle.append(end_startup_budget)
        info = {
            "backend": chosen.name,
            "slurm_version": version or "",
            "cluster": cluster if cluster is not None else cluster_name(runner),
        }
        log.info("slurm backend", extra=info)

        def slurm_health() -> tuple[bool, str]:
            failing = source.failing()
            if not failing:
                return True, "ok"
            # Still 200: Slurm being down is not the exporter being broken; the last good data is
            # served and slurm_up says 0. The text says which commands fail and why.
            return True, "degraded: " + "; ".join(f"{name}: {why}" for name, why in failing.items())

        chosen_collectors = build_collectors(
            source, list(collectors) or None, info, user_metrics_limit if user_metrics else None
        )
        return ExporterParts(chosen_collectors, slurm_health, runner.kill_all)

    serve_exporter(
        prefix="slurm_exporter",
        title="Slurm exporter",
        build=build_parts,
        interval=interval,
        listen=listen,
        web_config_path=web_config_path,
        log_level=log_level,
        log_format=log_format,
        cycle_duration_name="slurm_exporter_cycle_duration_seconds",
        collection_process=collection_process,
        startup_budget=command_timeout,
        # A poll may legitimately take a few command timeouts (a timeout skips the rest).
        hang_after=max(3 * interval, interval + 3 * command_timeout + 30),
    )
