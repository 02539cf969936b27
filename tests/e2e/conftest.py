"""One real pipeline per test module (tests/harness/stack.py), and the time-to-finding summary."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.harness.processes import ProcessManager
from tests.harness.promstack import MissingBinary
from tests.harness.slurm import SlurmUnavailable
from tests.harness.stack import Stack, start_stack

# (scenario, seconds from injection to finding), in the order measured; printed at the end.
TIME_TO_FINDING: list[tuple[str, float]] = []


@pytest.fixture(scope="module")
def stack(session_procs: ProcessManager, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    try:
        running = start_stack(session_procs, tmp_path_factory.mktemp("e2e"))
    except (SlurmUnavailable, MissingBinary) as exc:
        # CI must never skip these silently: `make test` installs the packages.
        pytest.fail(str(exc), pytrace=False)
    try:
        yield running
    finally:
        running.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TIME_TO_FINDING:
        return
    terminalreporter.section("end-to-end: injection -> finding")
    for scenario, seconds in TIME_TO_FINDING:
        terminalreporter.write_line(f"  {scenario:32} {seconds:6.1f} s   (floor: < 30 s)")


def record(scenario: str, seconds: float) -> None:
    print(f"time to finding, {scenario}: {seconds:.1f} s")
    TIME_TO_FINDING.append((scenario, seconds))
