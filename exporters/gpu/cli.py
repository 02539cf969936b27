"""`gpu-exporter`: NVIDIA GPU health and attribution metrics (issue #3 builds the collectors)."""

from __future__ import annotations

import click

from exporters.common.cli import common_options, fail


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@common_options(default_listen="0.0.0.0:9400", envvar_prefix="GPU_EXPORTER")
@click.option("--interval", type=click.FloatRange(min=0.1), default=5.0, help="Seconds between collections.")
@click.option("--backend", type=click.Choice(["nvml", "sim"]), default="nvml", help="Where GPU data comes from.")
@click.option(
    "--sim-gpus", type=click.IntRange(min=1, max=1024), default=8, help="GPUs the sim backend pretends to have."
)
@click.option(
    "--sim-faults", type=click.Path(dir_okay=False), default=None, help="Fault file re-read every cycle (sim backend)."
)
@click.option("--collectors", multiple=True, help="Collectors to enable (comma-separated or repeated); default all.")
def main(**options: object) -> None:
    """Export NVIDIA GPU metrics for Prometheus from a background NVML poll."""
    fail("gpu-exporter collectors are not built yet (issue #3)", code=1)
