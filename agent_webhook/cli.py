"""`agent-webhook`: the Alertmanager receiver that investigates alerts and posts findings."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from agent_webhook.config import DEFAULT_LISTEN, AgentConfig, ConfigError, load_config
from agent_webhook.service import build_app
from agent_webhook.store import StoreError
from agent_webhook.wiring import make_investigator, make_store
from gpu_watchdog_core.cli import fail
from gpu_watchdog_core.limits import LimitsError, limits_from_env
from gpu_watchdog_core.logs import setup_logging, strip_userinfo
from gpu_watchdog_core.server import run_app

log = logging.getLogger("agent_webhook")
ENV = "GPU_WATCHDOG"


def _option(*decls: str, **kwargs: Any) -> Any:
    name = kwargs.pop("env", None) or decls[0].lstrip("-").replace("-", "_").upper()
    return click.option(*decls, envvar=f"{ENV}_{name}", show_envvar=True, **kwargs)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@_option("--config", "config_path", type=click.Path(dir_okay=False), default=None, help="agent.yml")
@_option("--listen", default=None, help=f"HOST:PORT to serve on [default: {DEFAULT_LISTEN}]")
@_option(
    "--db",
    type=click.Path(dir_okay=False),
    default=None,
    help="SQLite database (WAL), or a postgresql:// URL replicas share [default: agent-webhook.db]",
)
@_option("--token-file", type=click.Path(dir_okay=False), default=None, help="Bearer token Alertmanager sends.")
@_option("--web-config", type=click.Path(dir_okay=False), default=None, help="exporter-toolkit web config (TLS).")
@_option("--prometheus-url", default=None)
@_option("--alertmanager-url", default=None)
@_option("--llm-base-url", default=None, help="OpenAI-compatible (vLLM) base URL; none means runbook triage only.")
@_option("--llm-model", default=None)
@_option("--workers", type=click.IntRange(min=1), default=None, help="Concurrent investigations [default: 4]")
@_option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
@_option("--log-format", type=click.Choice(["logfmt", "json"]), default="logfmt")
def main(config_path: str | None, log_level: str, log_format: str, **overrides: Any) -> None:
    """Receive Alertmanager webhooks, investigate each alert once, and post findings.

    Settings come from flags, then GPU_WATCHDOG_* variables, then agent.yml, then defaults
    (in that order of precedence). See docs/agent-webhook.md.
    """
    setup_logging(log_level, log_format)
    try:
        config = load_config(Path(config_path) if config_path else None, overrides)
        investigator = make_investigator(config)
    except ConfigError as exc:
        fail(str(exc))
    _preflight(config)
    if config.token is None and not config.web_config.auth_required:
        log.warning("no token_file and no basic auth: POST /alerts accepts unauthenticated requests")
    log.info(
        "starting agent-webhook",
        extra={
            "db": strip_userinfo(config.db_url) if config.db_url else str(config.db),
            "workers": config.workers,
            "sinks": [s.name for s in config.sinks],
            "prometheus_url": strip_userinfo(config.prometheus_url) if config.prometheus_url else None,
            "llm": bool((config.investigation.get("llm") or {}).get("base_url")),
            "investigator": type(investigator).__name__,
        },
    )
    try:
        limits = limits_from_env()
        app = build_app(config, investigator, limits=limits)
    except (ConfigError, LimitsError) as exc:
        fail(str(exc))
    try:
        run_app(app, config.listen, config.web_config, limits=limits)
    except OSError as exc:
        fail(f"cannot listen on {config.listen}: {exc.strerror or exc}", code=1)
    except StoreError as exc:
        fail(str(exc), code=1)


def _preflight(config: AgentConfig) -> None:
    """Open the database once before listening: a bad path or a second instance exits 2, not later."""
    store = make_store(config)
    try:
        store.open(recover=False)
    except StoreError as exc:
        fail(str(exc))
    finally:
        store.close()
