"""The agent's earlier findings as evidence: what this GPU (by UUID and serial) and node had before.

The service hands the investigation a `HistoryLookup` over its store; the `gpu_history` tool
and the deterministic gathering read it, and the triage turns a recurrence into its policy
(a second XID 79 on one GPU within 30 days says RMA: `policies.yml`, `recurs`).

A GPU is the same GPU by its UUID, else its serial: after an RMA the node's GPU 3 is another
GPU, and a GPU moved to another node keeps its history. Only when neither is known on both
sides do node and index stand in.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

# Alerts of one event (GPUXidError, then GPUFellOffBus a minute later) are one occurrence: an
# earlier finding counts as an earlier occurrence only when it started this much before.
SAME_EVENT_SECONDS = 3600.0
# The fields of a finding the history keeps (the evidence and markdown stay in the store).
HISTORY_FIELDS = (
    "id",
    "alertname",
    "node",
    "gpu",
    "gpu_uuid",
    "gpu_serial",
    "status",
    "severity",
    "summary",
    "triage_rule",
    "starts_at",
    "created_at",
)
_RULE_XID = re.compile(r"(?:^|[/:])xid:(\d+)(?!\d)")


@dataclass(frozen=True)
class HistoryQuery:
    node: str | None
    gpu: str | None  # the index on the node: matched only when no UUID or serial is known
    uuid: str | None
    serial: str | None
    since: float  # unix seconds: findings created since then
    limit: int = 50


# Earlier findings (the API's finding objects, any subset of HISTORY_FIELDS plus `labels`),
# newest first: of the node, and of the GPU wherever it was. Raises when they cannot be read.
HistoryLookup = Callable[[HistoryQuery], Awaitable[list[dict[str, Any]]]]


def known_identity(value: Any) -> str | None:
    """A UUID or serial worth matching on: not empty, not the exporter's `unknown-N` stand-in."""
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not value or value.lower().startswith("unknown") or value in {"N/A", "[N/A]", "0"}:
        return None
    return value


def same_gpu(finding: dict[str, Any], node: str | None, gpu: str | None, uuid: str | None, serial: str | None) -> bool:
    their_uuid, their_serial = known_identity(finding.get("gpu_uuid")), known_identity(finding.get("gpu_serial"))
    if uuid and their_uuid:
        return uuid == their_uuid
    if serial and their_serial:
        return serial == their_serial
    return gpu is not None and finding.get("node") == node and str(finding.get("gpu")) == gpu


def finding_xid(finding: dict[str, Any]) -> int | None:
    """The XID a finding was about: from its triage rule (`xid:79`, `.../xid:79`, `xid:48+dbe`,
    `recurrence:xid:79`), else its alert's `xid` label."""
    match = _RULE_XID.search(str(finding.get("triage_rule") or ""))
    if match:
        return int(match.group(1))
    labels = finding.get("labels")
    try:
        return int(labels.get("xid", "")) if isinstance(labels, dict) else None
    except ValueError:
        return None


def timestamp(value: Any) -> float | None:
    """Unix seconds of an RFC 3339 time (or of a number), None when unreadable."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def started(finding: dict[str, Any]) -> float | None:
    return timestamp(finding.get("starts_at")) or timestamp(finding.get("created_at"))


def slim(finding: dict[str, Any]) -> dict[str, Any]:
    out = {k: finding.get(k) for k in HISTORY_FIELDS if k in finding}
    labels = finding.get("labels")
    if isinstance(labels, dict) and "xid" in labels:
        out["labels"] = {"xid": labels["xid"]}
    return out


def history_line(finding: dict[str, Any]) -> str:
    ident = finding.get("gpu_uuid") or finding.get("gpu_serial") or "identity unknown"
    where = f"node {finding.get('node') or '?'}" + (f" gpu {finding['gpu']}" if finding.get("gpu") else "")
    return (
        f"{str(finding.get('starts_at') or finding.get('created_at') or '?')[:19]} {finding.get('id', '?')} "
        f"{finding.get('alertname', '?')} {where} ({ident}) rule={finding.get('triage_rule') or '-'} "
        f"{finding.get('severity', '?')} {finding.get('status', '?')}: {str(finding.get('summary') or '')[:160]}"
    )
