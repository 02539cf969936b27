"""The eval set: deterministic triage must get every incident right; the LLM path is scored
when GPU_WATCHDOG_EVAL_LLM_URL points at a reachable model.

Here the evidence is replayed from the incident files (RecordedPrometheus answers the same
selector queries a real Prometheus would); tests/agent_investigation/test_evals_live.py runs
the incidents that can share a server through a real Prometheus scraping the same series.
"""

from __future__ import annotations

import os

import pytest

from agent_webhook.investigation import Investigation, InvestigationConfig
from tests.evals.evalset import Incident, check, load_incidents
from tests.evals.score import llm_reachable, score_llm

INCIDENTS = load_incidents()


def test_the_set_covers_the_issue() -> None:
    assert len(INCIDENTS) >= 12
    names = {i.alert.alertname for i in INCIDENTS}
    assert {
        "GPUFellOffBus",
        "GPUXidError",
        "GPURowRemapFailure",
        "GPUThermalThrottling",
        "SlurmNodeDrained",
        "SlurmControllerDown",
        "GPUIdleWhileAllocated",
        "SlurmGPUQueueBacklog",
    } <= names
    nodes = [i.alert.node for i in INCIDENTS if i.alert.node]
    assert len(nodes) == len(set(nodes)), "each incident needs its own node (they share one Prometheus)"


@pytest.mark.parametrize("incident", INCIDENTS, ids=[i.id for i in INCIDENTS])
async def test_deterministic_triage(incident: Incident) -> None:
    investigation = Investigation(InvestigationConfig.from_mapping({}), source=incident.recorded_source())
    dx = await investigation.investigate(incident.alert)
    assert check(incident, dx) == [], dx.diagnosis_markdown
    assert not dx.llm_used and dx.degraded == []
    assert dx.evidence and all(e.ok for e in dx.evidence if e.tool != "alert_expression")


@pytest.mark.slow
async def test_llm_path_score() -> None:
    url = os.environ.get("GPU_WATCHDOG_EVAL_LLM_URL")
    if not url:
        pytest.skip("GPU_WATCHDOG_EVAL_LLM_URL is not set: no model to score (see docs/agent-investigation.md)")
    model = await llm_reachable(url, os.environ.get("GPU_WATCHDOG_EVAL_LLM_MODEL"))
    if model is None:
        pytest.skip(f"no OpenAI-compatible model answers at {url}")
    report = await score_llm(url, model, INCIDENTS)
    print(report.table())
    # Scored, not gated: a model's quality is reported, the triage above is the floor.
    assert report.total == len(INCIDENTS)
