"""The scorer can fail: scripted OpenAI-compatible models that know nothing, or are confidently
wrong, must score at most 10%; one that answers each incident's expected diagnosis scores all.

The models are tests/fakes/openai_server.py over HTTP, through the real `openai` client and
the real investigation: the score comes from the same path as a vLLM's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.evals.evalset import Incident, load_incidents
from tests.evals.score import Report, score_llm
from tests.fakes.openai_server import FakeOpenAIServer, Turn, text

INCIDENTS = load_incidents()

CONFIDENTLY_WRONG = {
    "severity": "critical",
    "summary": "The GPU's memory is failing",
    "likely_cause": "failing HBM stack on the GPU board",
    "recommended_actions": ["Open a vendor ticket", "Replace the node's GPU board"],
    "diagnosis_markdown": "The evidence clearly shows a failing memory stack; nothing else explains it.",
}


def _incident_of(body: dict[str, Any]) -> Incident:
    """The incident a request is about: the one whose labels all appear in the alert prompt."""
    prompt = str(body["messages"][1]["content"])
    matches = [
        i for i in INCIDENTS if all(f"{json.dumps(k)}: {json.dumps(v)}" in prompt for k, v in i.alert.labels.items())
    ]
    return max(matches, key=lambda i: len(i.alert.labels))


def _knowing(body: dict[str, Any], index: int) -> Turn:
    exp = _incident_of(body).expected
    answer = {
        "severity": exp["severity"],
        "summary": " ".join(exp["cause"]),
        "likely_cause": " ".join(exp["cause"]),
        "recommended_actions": [f"{word} (see the evidence)" for word in exp["actions"]],
        "diagnosis_markdown": "From the evidence.",
    }
    return text(json.dumps(answer))


@pytest.fixture
def model(request: pytest.FixtureRequest) -> Iterator[FakeOpenAIServer]:
    server = FakeOpenAIServer(request.param, model="scripted")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def _score(server: FakeOpenAIServer) -> Report:
    report = await score_llm(server.url, "scripted", INCIDENTS)
    print(report.table())
    assert report.total == len(INCIDENTS) >= 40
    assert server.requests, "the model was never asked"
    return report


@pytest.mark.parametrize("model", [[text("I don't know.")]], indirect=True, ids=["null"])
async def test_a_null_model_scores_nothing(model: FakeOpenAIServer) -> None:
    report = await _score(model)
    # The triage beside it is still right: its text is not the model's to claim.
    assert report.triage_score == report.total
    assert report.llm_score <= report.total // 10


@pytest.mark.parametrize("model", [[text(json.dumps(CONFIDENTLY_WRONG))]], indirect=True, ids=["wrong"])
async def test_a_confidently_wrong_model_scores_at_most_10_percent(model: FakeOpenAIServer) -> None:
    report = await _score(model)
    assert report.llm_score <= report.total // 10


@pytest.mark.parametrize("model", [_knowing], indirect=True, ids=["knowing"])
async def test_a_model_that_knows_scores_everything(model: FakeOpenAIServer) -> None:
    report = await _score(model)
    assert report.llm_score == report.total, report.table()
