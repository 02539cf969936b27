"""Shared fixtures: process management with logs in failure reports, Prometheus, Alertmanager."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_webhook.config import PREFIX_ENV
from tests.harness.postgres import PostgresServer, start_postgres
from tests.harness.postgres import remove as remove_postgres
from tests.harness.processes import ProcessManager
from tests.harness.promstack import (
    AlertmanagerServer,
    MissingBinary,
    PrometheusServer,
    start_alertmanager,
    start_prometheus,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
# The CLI's --config defaults to a deployment's agent.yml ($GPU_WATCHDOG_PREFIX/etc/agent.yml,
# /opt/gpu-watchdog by default): tests must not pick up one that `make up` left on this host.
os.environ[PREFIX_ENV] = str(REPO_ROOT / ".run" / "no-deployment-in-tests")
_PROCS_KEY = pytest.StashKey[list[ProcessManager]]()


@pytest.fixture
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture
def procs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ProcessManager]:
    """Start daemons for one test; all are stopped (by pid) afterwards, logs go to the report."""
    manager = ProcessManager(tmp_path / "logs")
    request.node.stash.setdefault(_PROCS_KEY, []).append(manager)
    try:
        yield manager
    finally:
        manager.stop_all()


@pytest.fixture(scope="session")
def session_procs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessManager]:
    """Like `procs`, for daemons shared by a whole test session (a Slurm cluster, say)."""
    manager = ProcessManager(tmp_path_factory.mktemp("session-logs"))
    _session_managers.append(manager)
    try:
        yield manager
    finally:
        manager.stop_all()


_session_managers: list[ProcessManager] = []


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    report: pytest.TestReport = yield
    if report.failed:
        for manager in item.stash.get(_PROCS_KEY, []) + _session_managers:
            for title, text in manager.log_sections():
                if text:
                    report.sections.append((title, text))
    return report  # type: ignore[return-value]


def _fail_if_missing(exc: MissingBinary) -> None:
    # CI must never skip these silently: `make test` installs the packages.
    pytest.fail(str(exc), pytrace=False)


@pytest.fixture
def prometheus_factory(procs: ProcessManager, tmp_path: Path) -> Callable[..., PrometheusServer]:
    """`prometheus_factory(scrape_targets={...}, rule_files=[...], alertmanager_urls=[...])`."""

    def make(**kwargs: Any) -> PrometheusServer:
        try:
            return start_prometheus(procs, tmp_path, **kwargs)
        except MissingBinary as exc:
            _fail_if_missing(exc)
            raise

    return make


@pytest.fixture
def alertmanager_factory(procs: ProcessManager, tmp_path: Path) -> Callable[..., AlertmanagerServer]:
    """`alertmanager_factory(config_dict_or_yaml, basic_auth_users={...})`."""

    def make(config: dict[str, Any] | str, **kwargs: Any) -> AlertmanagerServer:
        try:
            return start_alertmanager(procs, tmp_path, config, **kwargs)
        except MissingBinary as exc:
            _fail_if_missing(exc)
            raise

    return make


@pytest.fixture(scope="session")
def postgres_server(session_procs: ProcessManager) -> Iterator[PostgresServer]:
    """One real PostgreSQL 15 for the session (loopback port, private socket); stopped by pid."""
    try:
        server = start_postgres(session_procs)
    except MissingBinary as exc:
        _fail_if_missing(exc)
        raise
    try:
        yield server
    finally:
        server.process.stop()
        remove_postgres(server)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh database on the session's PostgreSQL: its postgresql:// URL (with a password)."""
    return postgres_server.create_database()
