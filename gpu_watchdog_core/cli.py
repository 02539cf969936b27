"""Command-line pieces every exporter shares: flags, start-up errors, and the serve loop."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TypeVar

import click

from gpu_watchdog_core.logs import setup_logging
from gpu_watchdog_core.poller import Collector, CollectorSelectionError, SnapshotPoller, select_collectors
from gpu_watchdog_core.server import ListenAddressError, build_exporter_app, parse_listen, run_app
from gpu_watchdog_core.webconfig import WebConfig, WebConfigError, load_web_config

log = logging.getLogger(__name__)
F = TypeVar("F", bound=Callable[..., Any])

# Exit code 2 is what Prometheus exporters and click use for configuration/usage errors.
EXIT_CONFIG = 2


def fail(message: str, code: int = EXIT_CONFIG) -> NoReturn:
    """One clear line on stderr and a non-zero exit: for start-up errors, never a traceback."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def common_options(default_listen: str, envvar_prefix: str) -> Callable[[F], F]:
    """--listen, --web-config, --log-level, --log-format, each also settable from the environment."""

    def decorate(func: F) -> F:
        options = [
            click.option(
                "--listen",
                default=default_listen,
                show_default=True,
                envvar=f"{envvar_prefix}_LISTEN",
                help="Address to serve on: HOST:PORT, [IPV6]:PORT or :PORT.",
            ),
            click.option(
                "--web-config",
                "web_config_path",
                type=click.Path(dir_okay=False),
                default=None,
                envvar=f"{envvar_prefix}_WEB_CONFIG",
                help="exporter-toolkit web config file (TLS, basic auth, headers).",
            ),
            click.option(
                "--log-level",
                type=click.Choice(["debug", "info", "warning", "error"]),
                default="info",
                show_default=True,
                envvar=f"{envvar_prefix}_LOG_LEVEL",
            ),
            click.option(
                "--log-format",
                type=click.Choice(["logfmt", "json"]),
                default="logfmt",
                show_default=True,
                envvar=f"{envvar_prefix}_LOG_FORMAT",
            ),
        ]
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def interval_option(envvar_prefix: str, default: float, help_text: str, minimum: float = 1) -> Callable[[F], F]:
    """--interval: seconds between collection cycles ($<PREFIX>_INTERVAL)."""
    return click.option(
        "--interval",
        type=click.FloatRange(min=minimum),
        default=default,
        envvar=f"{envvar_prefix}_INTERVAL",
        help=help_text,
    )


def collectors_option(envvar_prefix: str, names: Sequence[str], note: str = "") -> Callable[[F], F]:
    """--collectors: the switchable collectors to run ($<PREFIX>_COLLECTORS), as node_exporter's --collector.*."""
    return click.option(
        "--collectors",
        multiple=True,
        envvar=f"{envvar_prefix}_COLLECTORS",
        help=f"Collectors to run, comma-separated or repeated (default: all of {', '.join(names)}).{note}",
    )


def load_web_config_or_exit(path: str | None) -> WebConfig:
    try:
        return load_web_config(path)
    except WebConfigError as exc:
        fail(str(exc))


def check_listen_or_exit(listen: str) -> None:
    try:
        parse_listen(listen)
    except ListenAddressError as exc:
        fail(str(exc))


def select_or_exit(available: Sequence[Collector], wanted: Sequence[str] | None) -> list[Collector]:
    try:
        return select_collectors(available, wanted)
    except CollectorSelectionError as exc:
        fail(str(exc))


def serve_exporter(
    *,
    prefix: str,
    title: str,
    collectors: Sequence[Collector],
    interval: float,
    listen: str,
    web_config_path: str | None,
    log_level: str,
    log_format: str,
    cycle_duration_name: str | None = None,
    extra_health: Callable[[], tuple[bool, str]] | None = None,
    on_shutdown: Callable[[], None] | None = None,
) -> None:
    """Validate flags, collect once, then serve snapshots while the poller runs in the background."""
    setup_logging(log_level, log_format)
    check_listen_or_exit(listen)
    web_config = load_web_config_or_exit(web_config_path)
    poller = SnapshotPoller(prefix, collectors, interval, cycle_duration_name=cycle_duration_name)
    # First cycle before listening: Prometheus never sees an empty exporter at start-up.
    poller.collect_once()
    app = build_exporter_app(poller, web_config, title, extra_health)

    def shutdown() -> None:
        poller.stop()
        if on_shutdown:
            on_shutdown()

    try:
        run_app(app, listen, web_config, on_started=poller.start, on_shutdown=shutdown)
    except OSError as exc:
        poller.stop()
        fail(f"cannot listen on {listen}: {exc.strerror or exc}", code=1)
