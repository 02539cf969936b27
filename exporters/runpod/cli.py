"""`runpod-exporter`: RunPod pod inventory and cost metrics (issue #11 builds it)."""

from __future__ import annotations

import click

from exporters.common.cli import common_options, fail


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@common_options(default_listen="0.0.0.0:9342", envvar_prefix="RUNPOD_EXPORTER")
@click.option("--interval", type=click.FloatRange(min=5), default=60.0, help="Seconds between RunPod API polls.")
@click.option("--name-prefix", default="", help="Only pods whose name starts with this prefix.")
def main(**options: object) -> None:
    """Export RunPod pod inventory and cost for Prometheus (API key from RUNPOD_API_KEY)."""
    fail("runpod-exporter is not built yet (issue #11)", code=1)
