"""`agent-webhook`: the Alertmanager receiver that investigates alerts (issue #6 builds it)."""

from __future__ import annotations

import click

from exporters.common.cli import fail


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="agent.yml")
@click.option("--listen", default="0.0.0.0:9095")
@click.option("--db", type=click.Path(dir_okay=False), default=None, help="SQLite database (WAL mode).")
@click.option("--token-file", type=click.Path(dir_okay=False), default=None, help="Bearer token Alertmanager sends.")
@click.option("--prometheus-url", default=None)
@click.option("--alertmanager-url", default=None)
@click.option("--llm-base-url", default=None, help="OpenAI-compatible (vLLM) base URL; none means runbook triage only.")
@click.option("--llm-model", default=None)
def main(**options: object) -> None:
    """Receive Alertmanager webhooks, investigate each alert once, and post findings."""
    fail("agent-webhook is not built yet (issue #6)", code=1)
