"""`gpu-watchdog`: the operator's CLI (ask, investigate, findings, sim, deploy)."""

from __future__ import annotations

import click

from agent_webhook import __version__
from agent_webhook.deploy_cli import deploy


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gpu-watchdog")
def main() -> None:
    """Ask questions about a GPU cluster, read findings, inject simulated faults, deploy."""


main.add_command(deploy)
