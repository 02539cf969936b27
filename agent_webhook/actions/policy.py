"""The scale policy: what an alert may lead to, as a pure function of the alert, the pods and the config.

No I/O here (the engine reads RunPod and runs the playbook), so every bound is unit-tested
directly. A :class:`Plan` is an action within bounds and the spend cap; a :class:`Refusal` says
which guard stopped it and why.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from agent_webhook.config import ActionsConfig
from agent_webhook.model import Alert
from exporters.runpod.source import Pod

ActionKind = Literal["scale_up", "scale_down"]
# Which alert may lead to which action (alert_rules/slurm.rules.yml, alert_rules/cost.rules.yml).
ALERT_ACTIONS: dict[str, ActionKind] = {"SlurmGPUQueueBacklog": "scale_up", "RunPodPodIdle": "scale_down"}
# Why a decision was refused or failed (the `reason` of a decision and a metric label).
REASONS = (
    "disabled",
    "duplicate",
    "other_partition",
    "cooldown",
    "bounds",
    "spend_cap",
    "bad_alert",
    "not_found",
    "runpod_api",
    "busy_node",
    "playbook_failed",
    "internal_error",
)


@dataclass(frozen=True)
class Quote:
    """RunPod's price for one new worker: the configured GPU type (and fallbacks) x GPU count."""

    dollars_per_hour: float
    basis: str  # what was priced, e.g. "RunPod price of 1 x NVIDIA GeForce RTX 4090 (SECURE)"


@dataclass
class Plan:
    action: ActionKind
    workers_before: int
    workers_after: int
    add: list[str] = field(default_factory=list)  # worker pod names to create
    remove: list[str] = field(default_factory=list)  # worker pod names to drain and terminate
    spend_dollars_per_hour: float = 0.0  # current burn of the account's running pods
    added_dollars_per_hour: float = 0.0  # what the new pods are expected to cost
    worker_cost_dollars_per_hour: float | None = None  # one new worker's estimated cost (scale-up)
    worker_cost_basis: str = ""  # where that estimate came from
    note: str = ""

    def detail(self) -> str:
        if self.action == "scale_up":
            text = f"scale up {self.workers_before} -> {self.workers_after} workers (add {', '.join(self.add)})"
        else:
            names = ", ".join(self.remove)
            text = f"scale down {self.workers_before} -> {self.workers_after} workers (drain, then terminate {names})"
        return f"{text}; {self.note}" if self.note else text


@dataclass
class Refusal:
    action: ActionKind
    reason: str  # one of REASONS
    detail: str
    workers_before: int | None = None
    spend_dollars_per_hour: float | None = None


def worker_pattern(prefix: str) -> re.Pattern[str]:
    """Worker pods are "<prefix>-worker-<n>", as ansible/scale-pods.yml names them."""
    return re.compile(rf"^{re.escape(prefix)}-worker-([0-9]+)$")


def _cost(pod: Pod) -> float:
    return max(pod.cost_per_hr, 0.0)


def spend_per_hour(pods: Sequence[Pod]) -> float:
    """The account's current burn: costPerHr summed over its running pods (any name)."""
    return round(sum(_cost(p) for p in pods if p.status == "RUNNING"), 6)


def workers(pods: Sequence[Pod], prefix: str) -> dict[str, Pod]:
    """This cluster's worker pods by name (any status: a stopped pod still counts toward the bounds)."""
    pattern = worker_pattern(prefix)
    return {p.name: p for p in pods if pattern.match(p.name)}


def _worker_cost(config: ActionsConfig, current: Mapping[str, Pod], quote: Quote | None) -> tuple[float, str] | None:
    """A new worker's hourly cost and where it comes from; None when nothing says.

    The configured cost first (the operator knows best); then RunPod's price for what
    scale-pods.yml will ask for (right even with no worker running: scaling up from zero);
    then the dearest running worker's costPerHr (when the API could not quote).
    """
    if config.worker_cost_dollars_per_hour is not None:
        return config.worker_cost_dollars_per_hour, "actions.worker_cost_dollars_per_hour"
    if quote is not None:
        return quote.dollars_per_hour, quote.basis
    costs = [_cost(p) for p in current.values() if _cost(p) > 0]
    return (max(costs), "the dearest running worker's costPerHr") if costs else None


def partition_refusal(alert: Alert, config: ActionsConfig) -> Refusal | None:
    """Why a backlog alert may not scale up, as far as its partition goes; None when it may.

    RunPod workers only serve the partition(s) they join, so a backlog elsewhere (a CPU or an
    on-prem partition) must not buy pods. An empty `actions.partitions` means any partition.
    Needs no pods, so the engine asks it before the cooldown and the RunPod API.
    """
    if ALERT_ACTIONS[alert.alertname] != "scale_up" or not config.partitions:
        return None
    allowed = ", ".join(config.partitions)
    partition = alert.labels.get("partition") or ""
    if not partition:
        return Refusal(
            "scale_up", "bad_alert", f"the alert has no `partition` label; actions.partitions allows only {allowed}"
        )
    if partition not in config.partitions:
        return Refusal(
            "scale_up",
            "other_partition",
            f"partition {partition!r} is not served by the RunPod workers (actions.partitions: {allowed})",
        )
    return None


def plan(
    alert: Alert, pods: Sequence[Pod], config: ActionsConfig, quote: Quote | None = None, quote_error: str = ""
) -> Plan | Refusal:
    """The action this firing alert leads to under `config`, given the account's pods now.

    `quote`: RunPod's price for a new worker (scale-up); `quote_error`: why there is none.
    """
    action = ALERT_ACTIONS[alert.alertname]
    refused = partition_refusal(alert, config)
    if refused is not None:
        return refused
    current = workers(pods, config.name_prefix)
    spend = spend_per_hour(pods)
    if action == "scale_up":
        return _scale_up(current, spend, config, quote, quote_error)
    return _scale_down(alert, pods, current, spend=spend, config=config)


def _scale_up(
    current: Mapping[str, Pod], spend: float, config: ActionsConfig, quote: Quote | None, quote_error: str
) -> Plan | Refusal:
    have = len(current)
    if have >= config.max_workers:
        return Refusal("scale_up", "bounds", f"{have} workers, max_workers is {config.max_workers}", have, spend)
    wanted = min(config.max_workers, max(config.min_workers, have + config.scale_up_step))
    priced = _worker_cost(config, current, quote)
    if priced is None:
        why = f" ({quote_error})" if quote_error else ""
        return Refusal(
            "scale_up",
            "spend_cap",
            f"cannot estimate a new worker's cost: no RunPod price for the worker GPU type{why}, no running"
            " worker to measure and no actions.worker_cost_dollars_per_hour",
            have,
            spend,
        )
    cost, basis = priced
    cap = float(config.spend_cap_dollars_per_hour or 0.0)
    # The largest step that keeps the burn within the cap (a smaller step beats none).
    fits = int(max(0.0, cap - spend) // cost) if cost > 0 else wanted - have
    target = min(wanted, have + fits)
    if target <= have:
        return Refusal(
            "scale_up",
            "spend_cap",
            f"spend ${spend:.2f}/h + ${cost:.2f}/h for one more worker ({basis}) exceeds the cap ${cap:.2f}/h",
            have,
            spend,
        )
    pattern = worker_pattern(config.name_prefix)
    numbers = {int(m.group(1)) for name in current if (m := pattern.match(name))}
    # scale-pods.yml fills worker-1..worker-N: the names it will create.
    add = [f"{config.name_prefix}-worker-{n}" for n in range(1, target + 1) if n not in numbers][: target - have]
    note = f"step reduced from {wanted - have} to {target - have} by the spend cap" if target < wanted else ""
    return Plan(
        "scale_up",
        have,
        target,
        add=add,
        spend_dollars_per_hour=spend,
        added_dollars_per_hour=round(cost * (target - have), 6),
        worker_cost_dollars_per_hour=cost,
        worker_cost_basis=basis,
        note=note,
    )


def _scale_down(
    alert: Alert,
    pods: Sequence[Pod],
    current: Mapping[str, Pod],
    *,
    spend: float,
    config: ActionsConfig,
) -> Plan | Refusal:
    have = len(current)
    name = alert.labels.get("name") or ""
    pod_id = alert.labels.get("pod_id") or ""
    if not name and not pod_id:
        return Refusal("scale_down", "bad_alert", "the alert has neither a `name` nor a `pod_id` label", have, spend)
    pod = next((p for p in pods if pod_id and p.id == pod_id), None)
    if pod is None and name:
        pod = next((p for p in pods if p.name == name), None)
    if pod is None:
        return Refusal("scale_down", "not_found", f"no pod {name or pod_id} (already gone?)", have, spend)
    pod_name = pod.name
    if name and pod_name != name:
        return Refusal(
            "scale_down", "bad_alert", f"pod {pod_id} is named {pod_name!r}, the alert says {name!r}", have, spend
        )
    if pod_name not in current:
        # Never the head, never a pod of another cluster: only "<prefix>-worker-<n>".
        return Refusal(
            "scale_down",
            "bad_alert",
            f"{pod_name!r} is not a worker of this cluster ({config.name_prefix}-worker-<n>)",
            have,
            spend,
        )
    if have - 1 < config.min_workers:
        return Refusal("scale_down", "bounds", f"{have} workers, min_workers is {config.min_workers}", have, spend)
    return Plan(
        "scale_down",
        have,
        have - 1,
        remove=[pod_name],
        spend_dollars_per_hour=spend,
        added_dollars_per_hour=-_cost(pod),
    )
