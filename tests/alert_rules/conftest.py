"""Fixtures for the alert rule tests: promtool and amtool from Debian's packages."""

from __future__ import annotations

import pytest

from tests.harness.promstack import MissingBinary, find_binary


def _binary(name: str, package: str) -> str:
    try:
        return find_binary((name,), package)
    except MissingBinary as exc:
        # CI must not go green by skipping: `make test` installs both packages.
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def promtool() -> str:
    return _binary("promtool", "prometheus")


@pytest.fixture(scope="session")
def amtool() -> str:
    return _binary("amtool", "prometheus-alertmanager")
