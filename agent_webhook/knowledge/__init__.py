"""The triage knowledge base, shipped as YAML data: XID catalog, policies, drain reasons, alerts.

Add an entry by editing the YAML next to this file (docs/agent-investigation.md shows how);
`load_knowledge()` validates every entry so a typo fails at start-up, not mid-incident.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

SEVERITIES = ("critical", "warning", "info")
REFINEMENTS = ("xid", "ecc", "thermal", "drain_reason", "none")


class KnowledgeError(ValueError):
    """A knowledge-base file is malformed."""


@dataclass(frozen=True)
class Entry:
    """What the triage reports for a matched rule."""

    id: str
    cause: str
    severity: str
    actions: tuple[str, ...]
    meaning: str = ""
    category: str = ""


@dataclass(frozen=True)
class AlertEntry(Entry):
    refine: str = "none"
    default_xid: int | None = None
    default_reason: str | None = None


@dataclass(frozen=True)
class DrainReason(Entry):
    pattern: re.Pattern[str] = field(default=re.compile("$^"))
    xid_group: int | None = None


@dataclass(frozen=True)
class Recurrence:
    """A policy that replaces an XID's verdict when the same GPU had that XID before (`recurs`)."""

    policy: str
    xid: int
    within_days: float


@dataclass(frozen=True)
class KnowledgeBase:
    xids: dict[int, Entry]
    policies: dict[str, Entry]
    drain_reasons: tuple[DrainReason, ...]
    alerts: dict[str, AlertEntry]
    recurrences: tuple[Recurrence, ...] = ()

    def match_drain_reason(self, reason: str) -> tuple[DrainReason, re.Match[str]] | None:
        for entry in self.drain_reasons:
            match = entry.pattern.search(reason)
            if match:
                return entry, match
        return None


def _entry_fields(where: str, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise KnowledgeError(f"{where}: expected a mapping, got {type(raw).__name__}")
    cause = raw.get("cause")
    severity = raw.get("severity")
    actions = raw.get("actions")
    if not isinstance(cause, str) or not cause.strip():
        raise KnowledgeError(f"{where}: 'cause' must be a non-empty string")
    if severity not in SEVERITIES:
        raise KnowledgeError(f"{where}: 'severity' must be one of {', '.join(SEVERITIES)}, got {severity!r}")
    if not isinstance(actions, list) or not actions or not all(isinstance(a, str) and a for a in actions):
        raise KnowledgeError(f"{where}: 'actions' must be a non-empty list of strings")
    return {"cause": cause.strip(), "severity": severity, "actions": tuple(a.strip() for a in actions)}


def _load_yaml(name: str) -> dict[str, Any]:
    text = resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise KnowledgeError(f"{name}: expected a mapping at the top level")
    return data


def parse_knowledge(
    xid_doc: dict[str, Any], policy_doc: dict[str, Any], reason_doc: dict[str, Any], alert_doc: dict[str, Any]
) -> KnowledgeBase:
    xids: dict[int, Entry] = {}
    for code, raw in (xid_doc.get("xids") or {}).items():
        if not isinstance(code, int):
            raise KnowledgeError(f"xid.yml: XID code {code!r} is not an integer")
        fields = _entry_fields(f"xid.yml: XID {code}", raw)
        xids[code] = Entry(
            id=f"xid:{code}", meaning=str(raw.get("meaning", "")), category=str(raw.get("category", "")), **fields
        )
    policies = {
        str(key): Entry(id=f"policy:{key}", **_entry_fields(f"policies.yml: {key}", raw))
        for key, raw in (policy_doc.get("policies") or {}).items()
    }
    recurrences: list[Recurrence] = []
    for key, raw in (policy_doc.get("policies") or {}).items():
        recurs = raw.get("recurs")
        if recurs is None:
            continue
        where = f"policies.yml: {key}: recurs"
        if not isinstance(recurs, dict) or set(recurs) != {"xid", "within_days"}:
            raise KnowledgeError(f"{where}: expected a mapping with exactly 'xid' and 'within_days'")
        code, days = recurs["xid"], recurs["within_days"]
        if not isinstance(code, int) or code not in xids:
            raise KnowledgeError(f"{where}: 'xid' must be an XID code of xid.yml, got {code!r}")
        if isinstance(days, bool) or not isinstance(days, (int, float)) or not 0 < days <= 3650:
            raise KnowledgeError(f"{where}: 'within_days' must be a number of days (0 < days <= 3650)")
        recurrences.append(Recurrence(policy=str(key), xid=code, within_days=float(days)))
    reasons: list[DrainReason] = []
    for index, raw in enumerate(reason_doc.get("reasons") or []):
        where = f"drain_reasons.yml: entry {index}"
        fields = _entry_fields(where, raw)
        try:
            pattern = re.compile(str(raw["pattern"]), re.IGNORECASE)
        except (KeyError, re.error) as exc:
            raise KnowledgeError(f"{where}: bad or missing 'pattern': {exc}") from None
        reasons.append(
            DrainReason(
                id=f"drain-reason:{raw.get('id', index)}", pattern=pattern, xid_group=raw.get("xid_group"), **fields
            )
        )
    alerts: dict[str, AlertEntry] = {}
    for name, raw in (alert_doc.get("alerts") or {}).items():
        fields = _entry_fields(f"alerts.yml: {name}", raw)
        refine = raw.get("refine", "none")
        if refine not in REFINEMENTS:
            raise KnowledgeError(f"alerts.yml: {name}: 'refine' must be one of {', '.join(REFINEMENTS)}")
        alerts[str(name)] = AlertEntry(
            id=f"alert:{name}",
            refine=refine,
            default_xid=raw.get("default_xid"),
            default_reason=raw.get("default_reason"),
            **fields,
        )
    return KnowledgeBase(
        xids=xids, policies=policies, drain_reasons=tuple(reasons), alerts=alerts, recurrences=tuple(recurrences)
    )


@lru_cache(maxsize=1)
def load_knowledge() -> KnowledgeBase:
    """The knowledge base shipped with the package (parsed once per process)."""
    return parse_knowledge(
        _load_yaml("xid.yml"), _load_yaml("policies.yml"), _load_yaml("drain_reasons.yml"), _load_yaml("alerts.yml")
    )
