"""Deterministic evidence gathering: which tools to run for an alert, and the facts they yield.

The same tools the LLM gets run here first, always, so every finding has evidence and the
triage works from what Prometheus/Slurm say now, not only from the alert's labels.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from agent_webhook.investigation.history import known_identity
from agent_webhook.investigation.prometheus import PromResult
from agent_webhook.investigation.safety import GPU_RE, NODE_RE
from agent_webhook.investigation.tools import CounterIncrease, ToolBox
from agent_webhook.model import Alert

HW_SLOWDOWN_REASONS = {"hw_slowdown", "hw_thermal", "hw_power_brake"}
THERMAL_REASONS = {"thermal", "sw_thermal"}
UNCORRECTED_TYPES = {"uncorrected", "double_bit", "dbe", "uncorrectable"}
CORRECTED_TYPES = {"corrected", "single_bit", "sbe", "correctable"}
# How far back the deterministic gathering reads the agent's findings (the recurrence policies
# look at their own `within_days` of it).
HISTORY_DAYS = 90
CLUSTER_ALERTS = {
    "SlurmControllerDown",
    "SlurmGPUQueueBacklog",
    "SlurmSchedulerSlow",
    "SlurmExporterDown",
}


@dataclass
class Facts:
    node: str | None = None
    gpu: str | None = None
    gpu_up: float | None = None
    last_xid: int | None = None
    xid_increase: dict[int, float] = field(default_factory=dict)
    dbe_increase: float = 0.0
    sbe_increase: float = 0.0
    remapped_rows: dict[str, float] = field(default_factory=dict)
    temperature: float | None = None
    throttle_reasons: set[str] = field(default_factory=set)
    utilization: float | None = None
    node_states: list[str] = field(default_factory=list)
    node_reason: str | None = None
    jobs: list[dict[str, str]] = field(default_factory=list)
    targets_up: dict[str, float] = field(default_factory=dict)
    slurm_up: float | None = None
    scheduler_cycle: dict[str, float] = field(default_factory=dict)
    pending_jobs: dict[str, float] = field(default_factory=dict)
    down_targets: list[dict[str, str]] = field(default_factory=list)
    alert_value: float | None = None
    gpu_uuid: str | None = None
    gpu_serial: str | None = None
    # The agent's earlier findings (gpu_history): of this GPU, and of the node's other GPUs.
    gpu_history: list[dict[str, Any]] = field(default_factory=list)
    node_history: list[dict[str, Any]] = field(default_factory=list)
    node_seen: bool = False  # any series (GPU or Slurm) carried the node's name

    @property
    def recent_xids(self) -> list[int]:
        return sorted(code for code, inc in self.xid_increase.items() if inc > 0)

    def lines(self) -> list[str]:
        """Human-readable facts for the finding (and the prompt's triage block)."""
        out: list[str] = []
        if self.gpu_up is not None:
            out.append(f"nvidia_gpu_up = {self.gpu_up:g}")
        if self.recent_xids:
            out.append(
                "XID counters increased: " + ", ".join(f"{c} (+{self.xid_increase[c]:g})" for c in self.recent_xids)
            )
        if self.last_xid:
            out.append(f"last XID = {self.last_xid}")
        if self.dbe_increase:
            out.append(f"uncorrected (double-bit) ECC errors increased by {self.dbe_increase:g}")
        if self.sbe_increase:
            out.append(f"corrected (single-bit) ECC errors increased by {self.sbe_increase:g}")
        for state, value in sorted(self.remapped_rows.items()):
            if value:
                out.append(f"remapped rows {state} = {value:g}")
        if self.temperature is not None:
            out.append(f"temperature = {self.temperature:g} C")
        if self.throttle_reasons:
            out.append("clocks event reasons active: " + ", ".join(sorted(self.throttle_reasons)))
        if self.utilization is not None:
            out.append(f"utilization = {self.utilization * 100:.0f}%")
        if self.node_states:
            out.append("Slurm node state: " + "+".join(self.node_states))
        if self.node_reason:
            out.append(f"Slurm reason: {self.node_reason!r}")
        if self.jobs:
            held = (f"{j.get('job_id')} (gpu {j.get('gpu_index', '?')})" for j in self.jobs)
            out.append("jobs on GPUs: " + ", ".join(held))
        for job, value in sorted(self.targets_up.items()):
            out.append(f"scrape target {job} of the node up = {value:g}")
        if self.slurm_up is not None:
            out.append(f"slurm_up = {self.slurm_up:g}")
        for kind, value in sorted(self.scheduler_cycle.items()):
            out.append(f"scheduler cycle {kind} = {value:g}s")
        for reason, value in sorted(self.pending_jobs.items()):
            if value:
                out.append(f"pending jobs ({reason}) = {value:g}")
        if self.gpu_history:
            out.append(
                f"earlier findings of this GPU: {len(self.gpu_history)} (latest "
                + ", ".join(
                    f"{f.get('id', '?')} {f.get('triage_rule') or f.get('alertname', '?')}"
                    for f in self.gpu_history[:3]
                )
                + ")"
            )
        if self.node_history:
            out.append(f"earlier findings of the node's other GPUs or the node: {len(self.node_history)}")
        if self.down_targets:
            out.append("scrape targets down: " + ", ".join(t.get("job", "?") for t in self.down_targets[:10]))
        return out


def _valid(value: str | None, pattern: re.Pattern[str]) -> str | None:
    return value if value and pattern.match(value) else None


async def gather(toolbox: ToolBox, alert: Alert) -> Facts:
    """Run the tools an alert calls for and distil their outputs into facts."""
    facts = Facts(node=_valid(alert.node, NODE_RE), gpu=_valid(alert.gpu, GPU_RE))
    if facts.gpu is not None:
        facts.gpu_uuid = known_identity(alert.labels.get("uuid"))
        facts.gpu_serial = known_identity(alert.labels.get("serial"))
    if "alert_expression" in toolbox.names:
        out = await toolbox.call("alert_expression", {})
        if out.ok and isinstance(out.data, PromResult) and out.data.series:
            facts.alert_value = out.data.series[0].last
    if facts.node:
        await gather_node(toolbox, facts, facts.node, facts.gpu)
        if "gpu_history" in toolbox.names:
            await gather_history(toolbox, facts, facts.node, facts.gpu)
    if alert.alertname in CLUSTER_ALERTS or (alert.alertname.startswith("Slurm") and not facts.node):
        await gather_cluster(toolbox, facts)
    return facts


async def gather_node(toolbox: ToolBox, facts: Facts, node: str, gpu: str | None) -> None:
    args: dict[str, Any] = {"node": node}
    if gpu is not None:
        args["gpu"] = gpu
    detail = await toolbox.call("gpu_detail", args)
    if detail.ok and isinstance(detail.data, PromResult):
        _gpu_facts(facts, detail.data)
        facts.node_seen = facts.node_seen or bool(detail.data.series)
    counters = await toolbox.call("gpu_error_counters", {**args, "window_minutes": 60})
    if counters.ok and isinstance(counters.data, list):
        _counter_facts(facts, counters.data)
    slurm = await toolbox.call("slurm_node", {"node": node})
    if slurm.ok and isinstance(slurm.data, dict):
        facts.node_states = list(slurm.data.get("states") or [])
        facts.node_reason = slurm.data.get("reason") or None
        # An alert's `gpu` is the GPU exporter's (NVML index); a job's own `gpu` is Slurm's IDX
        # (the minor number): compare with `gpu_index`, the job's GPU matched by minor number.
        facts.jobs = [j for j in slurm.data.get("jobs") or [] if gpu is None or j.get("gpu_index") == gpu]
        facts.targets_up = dict(slurm.data.get("targets_up") or {})
        facts.node_seen = facts.node_seen or bool(facts.node_states or slurm.data.get("jobs") or facts.targets_up)


async def gather_history(toolbox: ToolBox, facts: Facts, node: str, gpu: str | None) -> None:
    args: dict[str, Any] = {"node": node, "days": HISTORY_DAYS}
    if gpu is not None:
        args["gpu"] = gpu
    out = await toolbox.call("gpu_history", args)
    if out.ok and isinstance(out.data, dict):
        facts.gpu_uuid = facts.gpu_uuid or out.data.get("uuid")
        facts.gpu_serial = facts.gpu_serial or out.data.get("serial")
        facts.gpu_history = list(out.data.get("gpu") or [])
        facts.node_history = list(out.data.get("node") or [])


async def gather_cluster(toolbox: ToolBox, facts: Facts) -> None:
    out = await toolbox.call("slurm_cluster", {})
    if not out.ok or not isinstance(out.data, dict):
        return
    for s in out.data.get("series", []):
        if math.isnan(s.last):
            continue
        if s.name == "slurm_up":
            facts.slurm_up = s.last
        elif s.name == "slurm_scheduler_cycle_seconds":
            kind = s.labels.get("kind", "main")  # last and mean (`stat`): the worse one counts
            facts.scheduler_cycle[kind] = max(facts.scheduler_cycle.get(kind, 0.0), s.last)
        elif s.name == "slurm_jobs_pending":
            reason = s.labels.get("reason", "")
            facts.pending_jobs[reason] = facts.pending_jobs.get(reason, 0.0) + s.last
    facts.down_targets = list(out.data.get("down_targets") or [])


def _gpu_facts(facts: Facts, result: PromResult) -> None:
    for s in result.series:
        if facts.gpu is not None and s.labels.get("gpu") == facts.gpu:
            facts.gpu_uuid = facts.gpu_uuid or known_identity(s.labels.get("uuid"))
            facts.gpu_serial = facts.gpu_serial or known_identity(s.labels.get("serial"))
        value = s.last
        if math.isnan(value):
            continue
        name = s.name
        if name == "nvidia_gpu_up":
            facts.gpu_up = value if facts.gpu_up is None else min(facts.gpu_up, value)
        elif name == "nvidia_gpu_last_xid" and value > 0:
            facts.last_xid = int(value)
        elif name == "nvidia_gpu_remapped_rows":
            state = s.labels.get("state", "")
            facts.remapped_rows[state] = max(facts.remapped_rows.get(state, 0.0), value)
        elif name == "nvidia_gpu_temperature_celsius":
            facts.temperature = value if facts.temperature is None else max(facts.temperature, value)
        elif name == "nvidia_gpu_clocks_event_reasons" and value > 0:
            facts.throttle_reasons.add(s.labels.get("reason", "unknown"))
        elif name == "nvidia_gpu_utilization_ratio":
            facts.utilization = value if facts.utilization is None else max(facts.utilization, value)


def _counter_facts(facts: Facts, increases: list[CounterIncrease]) -> None:
    # Volatile and aggregate counters count the same errors: take the larger, never the sum.
    ecc: dict[tuple[str, str], float] = {}
    for inc in increases:
        name = inc.labels.get("__name__", "")
        if name == "nvidia_gpu_xid_errors_total":
            try:
                code = int(inc.labels.get("xid", ""))
            except ValueError:
                continue
            facts.xid_increase[code] = facts.xid_increase.get(code, 0.0) + inc.increase
        elif name == "nvidia_gpu_ecc_errors_total":
            key = (inc.labels.get("gpu", ""), inc.labels.get("type", "").lower())
            ecc[key] = max(ecc.get(key, 0.0), inc.increase)
    for (_, kind), value in ecc.items():
        if kind in UNCORRECTED_TYPES:
            facts.dbe_increase += value
        elif kind in CORRECTED_TYPES:
            facts.sbe_increase += value
