"""`runpod-exporter`: RunPod pod inventory and cost metrics from one background API poll."""

from __future__ import annotations

import logging
import os

import click

from exporters.runpod.collectors.exporter import ExporterCollector
from exporters.runpod.collectors.pods import PodsCollector
from exporters.runpod.collectors.spend import SpendCollector
from exporters.runpod.source import RunPodSource, default_fetch
from gpu_watchdog_core.cli import (
    collectors_option,
    common_options,
    fail,
    interval_option,
    select_or_exit,
    serve_exporter,
)
from gpu_watchdog_core.logs import setup_logging, strip_userinfo
from gpu_watchdog_core.poller import Collector

log = logging.getLogger(__name__)
COLLECTORS = (PodsCollector, SpendCollector)
API_KEY_ENV = "RUNPOD_API_KEY"
DEFAULT_API_URL = "https://api.runpod.io"


def build_collectors(
    source: RunPodSource, wanted: list[str] | None, info: dict[str, str], budget: float | None
) -> list[Collector]:
    available: list[Collector] = [cls(source) for cls in COLLECTORS]
    return [*select_or_exit(available, wanted), ExporterCollector(source, info, budget)]


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@common_options(default_listen="0.0.0.0:9342", envvar_prefix="RUNPOD_EXPORTER")
@interval_option("RUNPOD_EXPORTER", 60.0, "Seconds between RunPod API polls.")
@click.option(
    "--name-prefix",
    default="",
    envvar="RUNPOD_EXPORTER_NAME_PREFIX",
    help="Only pods whose name starts with this prefix (default: every pod of the account).",
)
@click.option(
    "--max-backoff",
    type=click.FloatRange(min=1),
    default=900.0,
    envvar="RUNPOD_EXPORTER_MAX_BACKOFF",
    help="Longest wait between API calls while the API keeps failing (backoff doubles per failure).",
)
@click.option(
    "--budget-dollars-per-hour",
    type=click.FloatRange(min=0),
    default=None,
    envvar="RUNPOD_EXPORTER_BUDGET_DOLLARS_PER_HOUR",
    help="Hourly spend budget, exported as runpod_budget_dollars_per_hour for RunPodSpendHigh "
    "(unset: the rule's default, see docs/alert-rules.md).",
)
@collectors_option("RUNPOD_EXPORTER", [c.name for c in COLLECTORS])
def main(  # noqa: PLR0917 - click passes every option
    listen: str,
    web_config_path: str | None,
    log_level: str,
    log_format: str,
    interval: float,
    name_prefix: str,
    max_backoff: float,
    budget_dollars_per_hour: float | None,
    collectors: tuple[str, ...],
) -> None:
    """Export RunPod pod inventory and cost for Prometheus (API key from RUNPOD_API_KEY).

    The API URL is the SDK's default or RUNPOD_API_BASE_URL.
    """
    setup_logging(log_level, log_format)
    # Only from the environment (an env file in deployment): a flag would show in `ps`.
    api_key = os.environ.get(API_KEY_ENV, "").strip()
    if not api_key:
        fail(f"no RunPod API key: set {API_KEY_ENV} in the environment")
    source = RunPodSource(default_fetch(api_key), interval=interval, name_prefix=name_prefix, max_backoff=max_backoff)
    info = {
        # A label is public to everyone who can query Prometheus: never credentials in it.
        "api_url": strip_userinfo(os.environ.get("RUNPOD_API_BASE_URL", DEFAULT_API_URL)),
        "name_prefix": name_prefix,
    }
    log.info("runpod exporter", extra={**info, "interval": interval})
    serve_exporter(
        prefix="runpod_exporter",
        title="RunPod exporter",
        collectors=build_collectors(source, list(collectors) or None, info, budget_dollars_per_hour),
        interval=interval,
        listen=listen,
        web_config_path=web_config_path,
        log_level=log_level,
        log_format=log_format,
        cycle_duration_name="runpod_exporter_cycle_duration_seconds",
    )
