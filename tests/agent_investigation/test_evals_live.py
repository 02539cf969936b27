"""Eval incidents through a real Prometheus: the same triage from live evidence."""

from __future__ import annotations

import pytest

from agent_webhook.investigation import Investigation
from tests.agent_investigation.conftest import LiveCluster
from tests.evals.evalset import check

pytestmark = pytest.mark.slow


async def test_incidents_through_real_prometheus(live_cluster: LiveCluster) -> None:
    assert len(live_cluster.incidents) >= 12
    failures = {}
    for incident in live_cluster.incidents:
        investigation = Investigation(live_cluster.config(), history=incident.history_lookup())
        dx = await investigation.investigate(incident.alert)
        problems = check(incident, dx)
        if dx.degraded:
            problems.append(f"degraded: {dx.degraded}")
        if problems:
            failures[incident.id] = problems
    assert failures == {}
