from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent_webhook.knowledge import KnowledgeError, load_knowledge, parse_knowledge
from tests.alert_rules.ruleset import ISSUE_ALERTS

CATALOG = Path("/work/shared/reference/xid-catalog.md")


def test_every_alert_of_the_rules_has_an_entry() -> None:
    assert ISSUE_ALERTS <= set(load_knowledge().alerts)
    rules = Path(__file__).resolve().parents[2] / "alert_rules"
    for path in rules.glob("*.rules.yml"):  # once the rules are merged: every alert they define
        for name in re.findall(r"^\s*- alert: (\w+)", path.read_text(), re.M):
            assert name in load_knowledge().alerts, f"{name} ({path.name}) has no knowledge-base entry"


def test_xid_severities_follow_the_catalog() -> None:
    kb = load_knowledge()
    for code in (48, 62, 64, 74, 79, 95, 119, 120, 140):
        assert kb.xids[code].severity == "critical", code
    for code in (63, 92, 94):
        assert kb.xids[code].severity == "warning", code
    for code in (13, 31, 43, 68, 69):
        assert kb.xids[code].category == "application", code
    assert kb.xids[45].category == "follower"


@pytest.mark.skipif(not CATALOG.exists(), reason="reference catalog not on this machine")
def test_every_catalog_code_is_in_the_knowledge_base() -> None:
    codes = {int(m) for m in re.findall(r"^\| (\d+) \|", CATALOG.read_text(), re.M)}
    assert codes and codes <= set(load_knowledge().xids)


@pytest.mark.parametrize(
    ("reason", "entry"),
    [
        ("XID 79", "drain-reason:xid-in-reason"),
        ("xid=48 gpu1", "drain-reason:xid-in-reason"),
        ("Kill task failed", "drain-reason:kill-task-failed"),
        ("Not responding", "drain-reason:not-responding"),
        ("NHC: check_hw_eth failed", "drain-reason:nhc"),
        ("maint: kernel upgrade", "drain-reason:maintenance"),
        ("Low RealMemory", "drain-reason:low-memory"),
        ("gres/gpu count reported lower than configured (3 < 4)", "drain-reason:gres-mismatch"),
    ],
)
def test_drain_reasons(reason: str, entry: str) -> None:
    found = load_knowledge().match_drain_reason(reason)
    assert found is not None and found[0].id == entry


def test_malformed_entries_are_rejected_with_the_place() -> None:
    good = {"cause": "c", "severity": "warning", "actions": ["a"]}
    with pytest.raises(KnowledgeError, match="XID 13: 'severity' must be one of"):
        parse_knowledge({"xids": {13: {**good, "severity": "urgent"}}}, {}, {}, {})
    with pytest.raises(KnowledgeError, match="'actions' must be a non-empty list"):
        parse_knowledge({}, {"policies": {"p": {**good, "actions": []}}}, {}, {})
    with pytest.raises(KnowledgeError, match="bad or missing 'pattern'"):
        parse_knowledge({}, {}, {"reasons": [{**good, "pattern": "("}]}, {})
    with pytest.raises(KnowledgeError, match="'refine' must be one of"):
        parse_knowledge({}, {}, {}, {"alerts": {"A": {**good, "refine": "magic"}}})
