"""`slurm-exporter`: Slurm cluster, queue and GPU allocation metrics (issue #4 builds it)."""

from __future__ import annotations

import click

from exporters.common.cli import common_options, fail


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@common_options(default_listen="0.0.0.0:9341", envvar_prefix="SLURM_EXPORTER")
@click.option("--interval", type=click.FloatRange(min=1), default=15.0, help="Seconds between polls of slurmctld.")
@click.option("--backend", type=click.Choice(["auto", "pyslurm", "cli"]), default="auto")
@click.option(
    "--slurm-bin-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Where squeue/sinfo/sdiag live (default: PATH).",
)
@click.option(
    "--command-timeout",
    type=click.FloatRange(min=0.1),
    default=10.0,
    help="Seconds before a Slurm command is abandoned.",
)
@click.option("--cluster", default=None, help="Cluster name label (default: from Slurm).")
def main(**options: object) -> None:
    """Export Slurm metrics for Prometheus from one background poll per interval."""
    fail("slurm-exporter is not built yet (issue #4)", code=1)
