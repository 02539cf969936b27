"""End to end (issue 10): real faults through the real pipeline to findings, on loopback.

gpu-exporter (sim) / Slurm -> slurm-exporter -> Prometheus (the rules, time-compressed) ->
Alertmanager (the real routes and inhibitions) -> agent-webhook -> a webhook sink. Each fault
must become: the alert firing in Prometheus, exactly one notification stored by the agent,
exactly one finding with the right cause and action, one post to the sink; then, once the fault
is cleared, the resolve on the finding and at the sink. The stack is shared by the module
(tests/e2e/conftest.py); every scenario uses its own GPU and cleans up after itself.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from typing import Any

import pytest

from tests.e2e.conftest import record
from tests.fakes.openai_server import FakeOpenAIServer, Turn, delay, text
from tests.harness.processes import wait_until
from tests.harness.slurm import wait_for_node_state
from tests.harness.stack import (
    DRAIN_REASON,
    FAULTS,
    Fault,
    Stack,
    clear_until_resolved,
    inject_until_finding,
    matching_findings,
)

pytestmark = pytest.mark.slow
FLOOR_SECONDS = 30.0

# XID 79 raises GPUXidError at once and, after its `for:`, GPUFellOffBus, which from then on
# inhibits the XID alert: both reach the agent (the XID one first), each exactly once.
FELL_OFF_BUS = Fault(
    "GPU 1 fell off the bus",
    "GPUFellOffBus",
    {"gpu": "1"},
    "xid:79",
    "XID 79 (GPU has fallen off the bus)",
    "Reboot the node",
    lambda s: None,
    lambda s: None,
)


def _selector(stack: Stack, fault: Fault) -> str:
    labels = {"alertname": fault.alertname, "alertstate": "firing", "node": stack.node, **fault.labels}
    return "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def _check_finding(stack: Stack, fault: Fault, finding: dict[str, Any]) -> None:
    # The alert fired in Prometheus (ALERTS keeps the history, whatever happened since).
    assert stack.prometheus.query(f"max_over_time(ALERTS{_selector(stack, fault)}[10m])"), fault.name
    assert finding["alertname"] == fault.alertname
    assert finding["node"] == stack.node
    assert finding["triage_rule"] == fault.triage_rule, finding
    assert fault.cause in finding["likely_cause"], finding["likely_cause"]
    assert any(fault.action in a for a in finding["recommended_actions"]), finding["recommended_actions"]
    assert finding["severity"] == finding["labels"]["severity"]
    assert finding["llm"]["used"] is False
    # Every evidence source (Prometheus, the Slurm view through it) answered.
    assert finding["degraded"] == [], finding["degraded"]
    assert finding["evidence"] and all(e["ok"] for e in finding["evidence"]), finding["evidence"]
    assert [f["id"] for f in matching_findings(stack, fault)] == [finding["id"]], "exactly one finding"
    # Exactly one notification (Alertmanager groups, waits and repeats; the agent counts).
    stored = stack.deliveries(fault.alertname, node=stack.node, **fault.labels)
    assert [(d["status"], d["times_seen"]) for d in stored] == [("firing", 1)], stored
    posts = wait_until(lambda: stack.sink.for_finding(finding["id"]), 30, what=f"the sink post of {fault.name}")
    assert [p.event for p in posts] == ["new"]  # type: ignore[attr-defined]


def _check_resolved(stack: Stack, fault: Fault, finding_id: str, resolved: dict[str, Any]) -> None:
    assert resolved["status"] == "resolved" and resolved["resolved_at"], resolved
    # Resolved by Alertmanager's notification, not by reconciliation (on here, 60 s / 600 s).
    assert resolved["resolved_reason"] is None, resolved
    assert [f["id"] for f in matching_findings(stack, fault)] == [finding_id]
    stored = stack.deliveries(fault.alertname, node=stack.node, **fault.labels)
    assert [(d["status"], d["times_seen"]) for d in stored] == [("resolved", 2)], stored
    assert [p.event for p in stack.sink.for_finding(finding_id)] == ["new", "resolved"]
    assert not stack.firing(fault.alertname, node=stack.node, **fault.labels)


@pytest.mark.parametrize("key", ["xid79", "dbe", "thermal", "drain"])
def test_fault_becomes_one_finding_then_resolves(stack: Stack, key: str) -> None:
    fault = FAULTS[key]
    if key == "drain":
        assert "drain" not in stack.slurm.node_state(stack.node)
    cleared = False
    try:
        finding, seconds = inject_until_finding(stack, fault)
        record(fault.name, seconds)
        _check_finding(stack, fault, finding)
        if key == "drain":
            assert DRAIN_REASON in finding["likely_cause"]
        assert seconds < FLOOR_SECONDS, f"{fault.name}: {seconds:.1f} s from injection to finding"
        if key == "xid79":
            bus = wait_until(lambda: matching_findings(stack, FELL_OFF_BUS), 60, what="the GPUFellOffBus finding")
            _check_finding(stack, FELL_OFF_BUS, bus[0])  # type: ignore[index]
        cleared = True  # (resuming a node that is not drained is an error in Slurm)
        resolved = clear_until_resolved(stack, fault, finding["id"])
        _check_resolved(stack, fault, finding["id"], resolved)
        if key == "xid79":
            bus_id = matching_findings(stack, FELL_OFF_BUS)[0]["id"]
            _check_resolved(stack, FELL_OFF_BUS, bus_id, clear_until_resolved(stack, FELL_OFF_BUS, bus_id))
    finally:
        if not cleared:
            fault.clear(stack)
    if key == "drain":
        wait_for_node_state(stack.slurm, stack.node, "idle", timeout=60)


# -- kill -9 mid-investigation -------------------------------------------------------------------

ANSWER = json.dumps(
    {
        "severity": "critical",
        "summary": "GPU errors confirmed by the evidence",
        "likely_cause": "XID errors on the GPU (see the deterministic triage)",
        "recommended_actions": ["Drain the node in Slurm", "Reset or replace the GPU"],
        "diagnosis_markdown": "The XID counters increased; see the evidence.",
    }
)


def _rows(stack: Stack, sql: str, *args: object) -> list[sqlite3.Row]:
    with sqlite3.connect(f"file:{stack.db}?mode=ro", uri=True, timeout=10) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(sql, args).fetchall()


def test_agent_killed_mid_investigation_loses_and_duplicates_nothing(stack: Stack) -> None:
    """Investigations made slow by a model server that answers late (the real LLM path);
    the agent is killed with SIGKILL while they run and restarted on the same database."""
    slow = {"on": True}

    def script(body: dict[str, Any], index: int) -> Turn:
        return delay(120, text(ANSWER)) if slow["on"] else text(ANSWER)

    llm = FakeOpenAIServer(script)
    llm.start()
    llm_config = {"base_url": llm.url, "model": "fake-model", "timeout_seconds": 150, "budget_seconds": 240}
    faults = {5: "79", 6: "48"}
    since = _rows(stack, "SELECT COALESCE(MAX(id), 0) AS id FROM alerts")[0]["id"]
    assert stack.agent is not None
    try:
        stack.agent.stop()
        stack.start_agent(llm=llm_config)
        for gpu, code in faults.items():
            stack.inject(gpu, "xid", code)
        # Both XID alerts stored, their investigations in flight (waiting on the model server).
        wait_until(lambda: len(llm.requests) >= 2, 60, what="two investigations waiting on the LLM")
        wait_until(
            lambda: len(_rows(stack, "SELECT id FROM alerts WHERE id > ? AND alertname='GPUXidError'", since)) == 2,
            30,
            what="both XID alerts stored",
        )
        stack.agent.kill()
        slow["on"] = False
        jobs = _rows(stack, "SELECT j.state FROM jobs j JOIN alerts a ON a.id = j.alert_id WHERE a.id > ?", since)
        assert "leased" in {j["state"] for j in jobs}, [dict(j) for j in jobs]
        assert not _rows(stack, "SELECT seq FROM findings WHERE alert_id > ?", since)

        restarted = stack.start_agent(llm=llm_config)
        wait_until(lambda: "re-queued investigations" in restarted.log_tail(), 30, what="the re-queue log line")
        # GPUFellOffBus fires later: delivered to the restarted agent (or retried by Alertmanager).
        expected = {("GPUXidError", "5"), ("GPUXidError", "6"), ("GPUFellOffBus", "5")}

        def all_found() -> bool:
            rows = _rows(
                stack,
                "SELECT a.alertname, a.gpu FROM alerts a JOIN findings f ON f.alert_id = a.id WHERE a.id > ?",
                since,
            )
            return expected <= {(r["alertname"], r["gpu"]) for r in rows}

        wait_until(all_found, 90, what=f"findings for {sorted(expected)}")
        alerts = _rows(stack, "SELECT id, alertname, gpu, status FROM alerts WHERE id > ?", since)
        counts = Counter(r["alert_id"] for r in _rows(stack, "SELECT alert_id FROM findings WHERE alert_id > ?", since))
        # Nothing lost: every firing alert stored has its finding; nothing duplicated: one each.
        assert {a["id"] for a in alerts} == set(counts), [dict(a) for a in alerts]
        assert set(counts.values()) == {1}
        findings = {
            f["id"]: f
            for f in stack.findings()
            if f["labels"].get("gpu") in {"5", "6"} and f["alertname"] in {"GPUXidError", "GPUFellOffBus"}
        }
        assert len(findings) == len([a for a in alerts if a["gpu"] in {"5", "6"}])
        for finding in findings.values():
            assert finding["triage_rule"] == f"xid:{faults[int(finding['gpu'])]}"
            assert finding["llm"]["used"] is True  # the restarted agent finished the LLM path
        # Sinks are at-least-once; the kill came before any finding existed, so: exactly once.
        wait_until(
            lambda: all(stack.sink.for_finding(fid) for fid in findings), 30, what="every finding posted to the sink"
        )
        for fid in findings:
            assert [p.event for p in stack.sink.for_finding(fid)] == ["new"], fid
    finally:
        for gpu in faults:
            stack.clear(gpu)
        if stack.agent is not None:
            stack.agent.stop()
        stack.start_agent()  # the deterministic agent again, same database
        llm.stop()
    # The XID windows pass and the resolves reach the findings the restarted agent made.
    wait_until(
        lambda: all(f["status"] == "resolved" for f in stack.findings() if f["id"] in findings),
        90,
        what="the XID findings resolved",
    )


# -- slurmctld stopped -----------------------------------------------------------------------


def test_slurmctld_stopped_is_diagnosed_as_controller_down(stack: Stack) -> None:
    fault = Fault(
        "slurmctld stopped",
        "SlurmControllerDown",
        {},
        "alert:SlurmControllerDown",
        "slurmctld (the Slurm controller) is down or unreachable",
        "Check slurmctld on the head node",
        lambda s: s.slurm.stop_controller(),
        lambda s: s.slurm.start_controller(),
    )
    started = time.time()
    try:
        fault.inject(stack)
        found = wait_until(
            lambda: [f for f in stack.findings(alertname="SlurmControllerDown")],
            120,
            what="a SlurmControllerDown finding",
        )
        finding = found[0]  # type: ignore[index]
        record(fault.name, time.time() - started)
        assert stack.prometheus.query('max_over_time(ALERTS{alertname="SlurmControllerDown",alertstate="firing"}[10m])')
        assert len(found) == 1  # type: ignore[arg-type]
        assert finding["triage_rule"] == fault.triage_rule
        assert fault.cause in finding["likely_cause"]
        assert any(fault.action in a for a in finding["recommended_actions"])
        assert "slurm_up = 0" in finding["diagnosis"]
        stored = stack.deliveries("SlurmControllerDown")
        assert [(d["status"], d["times_seen"]) for d in stored] == [("firing", 1)], stored
        fault.clear(stack)

        def resolved() -> bool:
            current = stack.findings(alertname="SlurmControllerDown")
            return bool(current) and current[0]["status"] == "resolved"

        wait_until(resolved, 90, what="SlurmControllerDown resolved")
        wait_until(
            lambda: [p.event for p in stack.sink.for_finding(finding["id"])] == ["new", "resolved"],
            30,
            what="the resolve at the sink",
        )
    finally:
        if stack.slurm.slurmctld is None:
            stack.slurm.start_controller()
