"""Command-line pieces every exporter shares: flags, start-up errors, and the serve loop."""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from gpu_watchdog_core.childproc import ChildProcessPoller, ChildStartupFailed, is_child, run_child
from gpu_watchdog_core.logs import setup_logging
from gpu_watchdog_core.poller import Collector, CollectorSelectionError, SnapshotPoller, select_collectors

if TYPE_CHECKING:
    from gpu_watchdog_core.webconfig import WebConfig

# The server (aiohttp, ~25 MiB of a process's RSS) and the web config (ssl, bcrypt) are imported
# where they are used: the collection process (childproc.py) needs neither, and it is counted
# in the exporter's memory.

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
    from gpu_watchdog_core.webconfig import WebConfigError, load_web_config

    try:
        return load_web_config(path)
    except WebConfigError as exc:
        fail(str(exc))


def check_listen_or_exit(listen: str) -> None:
    if is_child():  # the serving process checked it
        return
    from gpu_watchdog_core.server import ListenAddressError, parse_listen

    try:
        parse_listen(listen)
    except ListenAddressError as exc:
        fail(str(exc))


def select_or_exit(available: Sequence[Collector], wanted: Sequence[str] | None) -> list[Collector]:
    try:
        return select_collectors(available, wanted)
    except CollectorSelectionError as exc:
        fail(str(exc))


@dataclass
class ExporterParts:
    """What an exporter builds where collection runs: the collectors and their hooks."""

    collectors: Sequence[Collector]
    extra_health: Callable[[], tuple[bool, str]] | None = None
    on_shutdown: Callable[[], None] | None = None


def collection_process_option(
    envvar_prefix: str, default: bool | None = True, default_text: str = ""
) -> Callable[[F], F]:
    """--collection-process/--no-collection-process ($<PREFIX>_COLLECTION_PROCESS).

    `default=None` leaves the choice to the exporter (None when neither flag is given);
    `default_text` then says what it picks."""
    return click.option(
        "--collection-process/--no-collection-process",
        default=default,
        envvar=f"{envvar_prefix}_COLLECTION_PROCESS",
        show_default=default_text or True,
        help="Collect, render and gzip in a separate process that hands the server finished bytes, "
        "so scrapes never wait for collection (restarted if it dies or hangs). Off: a thread.",
    )


def _raise_exit(signum: int, _frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def serve_exporter(
    *,
    prefix: str,
    title: str,
    collectors: Sequence[Collector] | None = None,
    build: Callable[[], ExporterParts] | None = None,
    interval: float,
    listen: str,
    web_config_path: str | None,
    log_level: str,
    log_format: str,
    cycle_duration_name: str | None = None,
    extra_health: Callable[[], tuple[bool, str]] | None = None,
    on_shutdown: Callable[[], None] | None = None,
    collection_process: bool = False,
    startup_budget: float | None = None,
    hang_after: float | None = None,
) -> None:
    """Validate flags, collect once, then serve snapshots while collection runs in the background.

    Give `build` (called only where collection runs) for `collection_process`: the serving
    process then never opens NVML or runs a Slurm command, it starts a collection process (the
    same command line, see childproc.py) and serves what that sends. Started as that collection
    process, this collects and sends instead of serving.
    """
    started = time.monotonic()  # the start-up budget counts from here, not from the child's start
    setup_logging(log_level, log_format)
    check_listen_or_exit(listen)
    if build is None:
        assert collectors is not None
        parts = ExporterParts(collectors, extra_health, on_shutdown)
        build = lambda: parts  # noqa: E731
    if is_child():
        built = build()
        run_child(
            SnapshotPoller(prefix, built.collectors, interval, cycle_duration_name=cycle_duration_name),
            built.extra_health,
            built.on_shutdown,
        )
        return
    web_config = load_web_config_or_exit(web_config_path)
    if collection_process:
        budget = (startup_budget, started + startup_budget) if startup_budget is not None else None
        _serve_from_child(prefix, title, interval, listen, web_config, budget, hang_after)
        return
    from gpu_watchdog_core.server import build_exporter_app, run_app

    built = build()
    poller = SnapshotPoller(prefix, built.collectors, interval, cycle_duration_name=cycle_duration_name)
    # First cycle before listening: Prometheus never sees an empty exporter at start-up.
    poller.collect_once()
    app = build_exporter_app(poller, web_config, title, built.extra_health)

    def shutdown() -> None:
        poller.stop()
        if built.on_shutdown:
            built.on_shutdown()

    try:
        run_app(app, listen, web_config, on_started=poller.start, on_shutdown=shutdown)
    except OSError as exc:
        poller.stop()
        fail(f"cannot listen on {listen}: {exc.strerror or exc}", code=1)


def _serve_from_child(  # noqa: PLR0917 - private helper of serve_exporter
    prefix: str,
    title: str,
    interval: float,
    listen: str,
    web_config: WebConfig,
    budget: tuple[float, float] | None,
    hang_after: float | None,
) -> None:
    """`budget`: the start-up budget and its deadline (from the exporter's start)."""
    poller = ChildProcessPoller(
        prefix,
        interval,
        startup_budget=budget[0] if budget else None,
        startup_deadline=budget[1] if budget else None,
        hang_after=hang_after,
    )
    # Until the server's own handlers are in place: SIGTERM stops the collection process too.
    signal.signal(signal.SIGTERM, _raise_exit)
    try:
        try:
            poller.collect_once()
        except ChildStartupFailed as exc:
            # It said why on the shared stderr (bad flags, no driver): exit as it did.
            sys.exit(exc.code if exc.code > 0 else 1)
        # Imported only now: aiohttp takes a while to import, and the collection process was
        # doing its first cycle meanwhile.
        from gpu_watchdog_core.server import build_exporter_app, run_app

        app = build_exporter_app(poller, web_config, title)
        try:
            run_app(app, listen, web_config, on_started=poller.start, on_shutdown=poller.stop)
        except OSError as exc:
            fail(f"cannot listen on {listen}: {exc.strerror or exc}", code=1)
    finally:
        poller.stop()
