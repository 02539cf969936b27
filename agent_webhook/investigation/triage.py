"""Deterministic triage: the alert plus the gathered facts, matched against the knowledge base.

Always runs; its Diagnosis is the finding when no LLM is configured or reachable, and the
starting point handed to the LLM when one is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from agent_webhook.investigation.facts import HW_SLOWDOWN_REASONS, THERMAL_REASONS, Facts
from agent_webhook.investigation.history import SAME_EVENT_SECONDS, finding_xid, started, timestamp
from agent_webhook.knowledge import AlertEntry, Entry, KnowledgeBase, load_knowledge
from agent_webhook.model import Alert, Diagnosis, Severity

SEVERITY_ORDER = {"info": 0, "warning": 1, "critical": 2}
POWER_CAP_REASONS = {"sw_power_cap", "power_cap"}


@dataclass
class Verdict:
    entry: Entry
    rule: str
    cause: str
    notes: list[str]


def triage(alert: Alert, facts: Facts, kb: KnowledgeBase | None = None) -> Diagnosis:
    kb = kb or load_knowledge()
    verdict = decide(alert, facts, kb)
    return render(alert, facts, verdict)


def decide(alert: Alert, facts: Facts, kb: KnowledgeBase) -> Verdict:
    verdict = _decide(alert, facts, kb)
    return _recurrence(alert, facts, kb, verdict) or verdict


def _recurrence(alert: Alert, facts: Facts, kb: KnowledgeBase, verdict: Verdict) -> Verdict | None:
    """The recurrence policy of the verdict's XID when this GPU had that XID before (policies.yml
    `recurs`): an earlier finding of the same GPU, at least SAME_EVENT_SECONDS and at most
    `within_days` before this alert started."""
    code = finding_xid({"triage_rule": verdict.rule})
    if code is None or not facts.gpu_history:
        return None
    now = timestamp(alert.starts_at) or time.time()
    for rule in kb.recurrences:
        if rule.xid != code or rule.policy not in kb.policies:
            continue
        earlier = []
        for finding in facts.gpu_history:
            when = started(finding)
            if when is None or finding_xid(finding) != code:
                continue
            if now - rule.within_days * 86400 <= when <= now - SAME_EVENT_SECONDS:
                earlier.append(finding)
        if not earlier:
            continue
        policy = kb.policies[rule.policy]
        which = ", ".join(f"{f.get('id', '?')} ({str(f.get('starts_at') or '')[:10]})" for f in earlier[:3])
        ident = (facts.gpu_serial and f" serial {facts.gpu_serial}") or (facts.gpu_uuid and f" {facts.gpu_uuid}") or ""
        notes = [f"XID {code} on this GPU{ident} before: {which}", *verdict.notes]
        cause = f"XID {code} again within {rule.within_days:g} days ({which}): {policy.cause}"
        return Verdict(policy, f"recurrence:xid:{code}", cause, notes)
    return None


def _decide(alert: Alert, facts: Facts, kb: KnowledgeBase) -> Verdict:
    entry = kb.alerts.get(alert.alertname)
    if entry is None:
        return _unknown_alert(alert, facts, kb)
    refine = {
        "xid": _by_xid,
        "ecc": _by_ecc,
        "thermal": _by_thermal,
        "drain_reason": _by_drain_reason,
    }.get(entry.refine)
    verdict = refine(alert, facts, kb, entry) if refine else None
    if verdict is None:
        verdict = _special(alert, facts, kb, entry) or Verdict(entry, entry.id, entry.cause, [])
    return verdict


def _label_xid(alert: Alert) -> int | None:
    try:
        return int(alert.labels.get("xid", ""))
    except ValueError:
        return None


def _primary_xid(alert: Alert, facts: Facts, kb: KnowledgeBase, default: int | None) -> int | None:
    """The XID to act on: the alert's, else the most severe recent one; a follower (45) defers."""
    code = _label_xid(alert)
    recent = facts.recent_xids
    if code is None and recent:
        code = max(recent, key=lambda c: SEVERITY_ORDER.get(kb.xids[c].severity, 0) if c in kb.xids else -1)
    if code is None:
        code = facts.last_xid or default
    if code is not None and code in kb.xids and kb.xids[code].category == "follower":
        primaries = [c for c in recent if c != code and c in kb.xids and kb.xids[c].category != "follower"]
        if primaries:
            code = max(primaries, key=lambda c: SEVERITY_ORDER.get(kb.xids[c].severity, 0))
    return code


def _by_xid(alert: Alert, facts: Facts, kb: KnowledgeBase, entry: AlertEntry) -> Verdict | None:
    code = _primary_xid(alert, facts, kb, entry.default_xid)
    if alert.alertname == "GPUFellOffBus" and code not in (None, 79) and facts.gpu_up == 0:
        code = 79
    if code is None:
        return None
    notes = []
    label_code = _label_xid(alert)
    if label_code is not None and label_code != code:
        notes.append(f"XID {label_code} follows XID {code}: acting on the primary error")
    if code == 48 and facts.dbe_increase > 0:
        policy = kb.policies["dbe_with_xid48"]
        return Verdict(policy, "xid:48+dbe", f"XID 48: {policy.cause}", notes)
    xid = kb.xids.get(code)
    if xid is None:
        return Verdict(entry, entry.id, f"XID {code} (not in the catalog): {entry.cause}", notes)
    if code == 79 and facts.gpu_up == 0:
        notes.append("the GPU is unreadable now (nvidia_gpu_up 0)")
    return Verdict(xid, xid.id, f"XID {code} ({xid.meaning}): {xid.cause}", notes)


def _by_ecc(alert: Alert, facts: Facts, kb: KnowledgeBase, entry: AlertEntry) -> Verdict | None:
    failure = facts.remapped_rows.get("failure", 0.0) > 0
    pending = facts.remapped_rows.get("pending", 0.0) > 0
    dbe = facts.dbe_increase > 0 or 48 in facts.recent_xids
    if alert.alertname == "GPURowRemapFailure" or failure:
        policy, rule = kb.policies["row_remap_failure"], "policy:row_remap_failure"
    elif alert.alertname == "GPUDoubleBitECC" or dbe:
        key = "dbe_with_xid48" if 48 in facts.recent_xids or facts.last_xid == 48 else "dbe"
        policy, rule = kb.policies[key], f"policy:{key}"
    elif alert.alertname == "GPURowRemapPending" or pending:
        policy, rule = kb.policies["row_remap_pending"], "policy:row_remap_pending"
    else:
        return None
    notes = []
    if rule == "policy:row_remap_pending" and dbe:
        notes.append("double-bit ECC errors seen as well")
    return Verdict(policy, rule, policy.cause, notes)


def _by_thermal(alert: Alert, facts: Facts, kb: KnowledgeBase, entry: AlertEntry) -> Verdict | None:
    reasons = facts.throttle_reasons
    temp = f" (GPU at {facts.temperature:g} C)" if facts.temperature is not None else ""
    if reasons & HW_SLOWDOWN_REASONS:
        key = "thermal_hw_slowdown"
    elif alert.alertname == "GPUTemperatureHigh":
        key = "temperature_high"
    elif reasons and reasons <= POWER_CAP_REASONS:
        # A throttling alert whose only reasons now are the power cap: expected under full
        # load, not a cooling problem (the evidence overrules the alert's name).
        key = "power_cap"
    elif reasons & THERMAL_REASONS or alert.alertname == "GPUThermalThrottling":
        key = "thermal_throttle"
    else:
        return None
    policy = kb.policies[key]
    notes = [f"clocks event reasons: {', '.join(sorted(reasons))}"] if reasons else []
    return Verdict(policy, f"policy:{key}", policy.cause + temp, notes)


def _by_drain_reason(alert: Alert, facts: Facts, kb: KnowledgeBase, entry: AlertEntry) -> Verdict | None:
    # Evidence first (what Slurm says now), then what the alert carried.
    reason = facts.node_reason or alert.labels.get("reason") or alert.annotations.get("reason") or None
    if not reason and "not_responding" in facts.node_states:
        reason = "Not responding"
    if not reason:
        reason = entry.default_reason
    if not reason:
        return None
    found = kb.match_drain_reason(reason)
    if found is None:
        return Verdict(entry, entry.id, f"{entry.cause} (reason {reason!r})", [])
    matched, match = found
    if matched.xid_group is not None:
        try:
            code = int(match.group(matched.xid_group))
        except (IndexError, ValueError):
            code = -1
        xid = kb.xids.get(code)
        if xid is not None:
            cause = f"drained for XID {code} ({xid.meaning}): {xid.cause}"
            return Verdict(xid, f"{matched.id}/{xid.id}", cause, [f"Slurm reason: {reason!r}"])
    return Verdict(matched, matched.id, f"{matched.cause} (reason {reason!r})", [])


def _special(alert: Alert, facts: Facts, kb: KnowledgeBase, entry: AlertEntry) -> Verdict | None:
    name = alert.alertname
    if name == "GPUExporterDown" and set(facts.node_states) & {"down", "not_responding"}:
        not_responding = kb.match_drain_reason("Not responding")
        if not_responding:
            matched = not_responding[0]
            return Verdict(matched, f"{entry.id}/{matched.id}", "the node is down in Slurm: " + matched.cause, [])
    if name == "GPUIdleWhileAllocated" and facts.jobs:
        jobs = ", ".join(sorted({j.get("job_id", "?") for j in facts.jobs}))
        return Verdict(entry, entry.id, f"{entry.cause}; job(s) {jobs}", [])
    if name == "SlurmGPUQueueBacklog" and facts.pending_jobs:
        waiting = sum(v for r, v in facts.pending_jobs.items() if "resource" in r.lower())
        return Verdict(entry, entry.id, f"{entry.cause} ({waiting:g} jobs pending on Resources)", [])
    if name == "SlurmSchedulerSlow" and facts.scheduler_cycle:
        worst = max(facts.scheduler_cycle.items(), key=lambda kv: kv[1])
        return Verdict(entry, entry.id, f"{entry.cause} ({worst[0]} cycle {worst[1]:g}s)", [])
    return None


def _unknown_alert(alert: Alert, facts: Facts, kb: KnowledgeBase) -> Verdict:
    label = alert.labels.get("severity", "")
    severity = label if label in SEVERITY_ORDER else "warning"
    entry = Entry(
        id="alert:unknown",
        cause=f"no knowledge-base entry for alert {alert.alertname[:80]!r}",
        severity=severity,
        actions=("Read the alert's runbook (runbook_url annotation) and the evidence below",),
    )
    return Verdict(entry, "alert:unknown", entry.cause, [])


def render(alert: Alert, facts: Facts, verdict: Verdict) -> Diagnosis:
    where = " ".join(p for p in (facts.node and f"node {facts.node}", facts.gpu and f"gpu {facts.gpu}") if p)
    subject = alert.alertname or "question"
    summary = f"{subject}{' on ' + where if where else ''}: {verdict.cause}"
    if len(summary) > 240:
        summary = summary[:237] + "..."
    severity: Severity = verdict.entry.severity  # type: ignore[assignment]
    lines = [
        f"**Severity:** {severity}",
        f"**Likely cause:** {verdict.cause}",
        f"**Matched rule:** `{verdict.rule}`",
    ]
    if verdict.notes:
        lines += ["", *[f"- {n}" for n in verdict.notes]]
    evidence = facts.lines()
    if evidence:
        lines += ["", "**Evidence:**", *[f"- {line}" for line in evidence]]
    lines += ["", "**Recommended actions** (suggestions; nothing is executed):"]
    lines += [f"{i}. {a}" for i, a in enumerate(verdict.entry.actions, 1)]
    lines += ["", "_Deterministic triage from the knowledge base (no LLM)._"]
    return Diagnosis(
        severity=severity,
        summary=summary,
        likely_cause=verdict.cause,
        diagnosis_markdown="\n".join(lines),
        recommended_actions=list(verdict.entry.actions),
        llm_used=False,
        triage_rule=verdict.rule,
        gpu_uuid=facts.gpu_uuid,
        gpu_serial=facts.gpu_serial,
    )
