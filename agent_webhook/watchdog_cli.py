"""`gpu-watchdog`: the operator's CLI (ask, investigate, findings, incidents, ack, sim, deploy)."""

from __future__ import annotations

import click

from agent_webhook import __version__
from agent_webhook.cli_findings import findings_command, investigate_command
from agent_webhook.cli_incidents import ack_command, incidents_command, unack_command
from agent_webhook.deploy_cli import deploy
from agent_webhook.investigation.cli_ask import ask
from exporters.gpu.sim_cli import sim


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gpu-watchdog")
def main() -> None:
    """Ask questions about a GPU cluster, read findings, inject simulated faults, deploy."""


main.add_command(sim)
main.add_command(findings_command)
main.add_command(incidents_command)
main.add_command(ack_command)
main.add_command(unack_command)
main.add_command(investigate_command)
main.add_command(ask)
main.add_command(deploy)
