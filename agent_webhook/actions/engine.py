"""Turns a firing alert into at most one guarded scale action, and records the decision.

Order of the guards, each a recorded refusal when it stops the action:

1. ``actions.enabled`` (off by default): refused, reason ``disabled``.
2. One decision per alert (fingerprint + startsAt), reserved in SQLite before anything else
   happens: Alertmanager's repeats, HA copies and a re-run after a crash (kill -9 mid-action
   included) find the reservation and are refused as ``duplicate``; nothing runs twice.
3. ``actions.partitions``: a backlog in a partition the RunPod workers do not serve is refused
   (``other_partition``; no ``partition`` label: ``bad_alert``), needing neither cooldown nor API.
4. The cooldown since the last action taken, dry-run, failed or interrupted (from SQLite, so a
   restart does not reset it). A cooldown refusal did nothing, so it is deferred, not final:
   every few seconds :meth:`ActionEngine.retry_deferred` decides such alerts again, oldest
   first, once the cooldown has passed and while they still fire (two pods idle at once: the
   second is terminated one cooldown after the first). The new decision replaces the one in
   the finding and is posted to its thread (sink event ``acted``).
5. The RunPod API (the real ``runpod`` SDK): the worker count and the account's hourly burn; an
   API error refuses (``runpod_api``). For a scale-up without ``actions.worker_cost_dollars_per_hour``
   also RunPod's price of what scale-pods.yml will create (:func:`worker_spec`), so a cluster
   with no worker running can scale up from zero within the spend cap.
6. The policy (:mod:`agent_webhook.actions.policy`): min/max workers, the spend cap, which pod.
7. Dry-run stops here and records the plan. Otherwise the playbook runs (ansible-runner, same
   code as ``gpu-watchdog deploy``); scale-down drains the Slurm node first and never
   terminates a node with running jobs (``ansible/scale-pods.yml``): a busy node is refused
   (``busy_node``), any other failure is ``failed`` (``playbook_failed``).

Decisions run one at a time (a lock), so two alerts cannot both pass the cooldown. Nothing here
raises into the worker: an unexpected error is recorded as ``failed`` (``internal_error``).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from agent_webhook.actions.policy import ALERT_ACTIONS, ActionKind, Plan, Quote, Refusal, partition_refusal, plan
from agent_webhook.config import ActionsConfig, ConfigError
from agent_webhook.metrics import AgentMetrics
from agent_webhook.model import Alert
from agent_webhook.playbook_runner import Progress, default_ansible_dir, run_playbook
from agent_webhook.store import DEFERRED, Store, iso
from exporters.runpod.source import MalformedResponse, Pod, default_fetch, parse_pods
from gpu_watchdog_core.logs import redact

log = logging.getLogger(__name__)

# Decisions that start a cooldown: anything that acted, would have acted (dry-run: it mirrors a
# real run), tried to (failed: pods may exist half-made) or may have (pending: a process died).
COOLDOWN_OUTCOMES = ("taken", "dry_run", "failed", "pending")
BUSY_MARKER = "their Slurm nodes still run jobs"  # scale-pods.yml's failure for busy nodes
_MAX_ERROR = 1500


@dataclass
class Decision:
    action: ActionKind
    outcome: str  # taken, dry_run, refused, failed
    reason: str | None  # policy.REASONS; None when taken or dry-run
    detail: str
    dry_run: bool = False
    workers_before: int | None = None
    workers_after: int | None = None
    add: list[str] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    spend_dollars_per_hour: float | None = None
    added_dollars_per_hour: float | None = None
    worker_cost_dollars_per_hour: float | None = None
    worker_cost_basis: str | None = None
    spend_cap_dollars_per_hour: float | None = None
    playbook: dict[str, Any] | None = None
    decided_at: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def internal_error(cls, action: ActionKind, exc: BaseException) -> Decision:
        """A bug or a dead store, recorded as a failed decision rather than raised into the worker."""
        return cls(action, "failed", "internal_error", redact(f"{type(exc).__name__}: {exc}")[:_MAX_ERROR])


class ActionEngine:
    def __init__(self, config: ActionsConfig, store: Store, metrics: AgentMetrics) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self._lock = asyncio.Lock()
        self._retry_task: asyncio.Task[None] | None = None
        # Set when a deferred decision enqueued a sink post (the delivery loop's wake event).
        self.on_posted: asyncio.Event | None = None
        self.ansible_dir = (config.ansible_dir or default_ansible_dir() or Path("ansible")).resolve()
        self.inventory = config.inventory or self.ansible_dir / "inventory" / "cluster.runpod.yml"
        if config.enabled and not config.dry_run:
            # Fail at start-up, not at 3 a.m. when the first backlog fires.
            if not (self.ansible_dir / config.playbook).is_file():
                raise ConfigError(
                    f"actions.playbook: no {config.playbook} in {self.ansible_dir} (set actions.ansible_dir)"
                )
            if not Path(self.inventory).exists():
                raise ConfigError(f"actions.inventory: {self.inventory} does not exist")

    def start(self, on_posted: asyncio.Event | None = None) -> None:
        """Start deciding deferred alerts again (only when actions are enabled)."""
        self.on_posted = on_posted
        if self.config.enabled and self._retry_task is None:
            self._retry_task = asyncio.create_task(self._retry_loop(), name="deferred-actions")

    async def stop(self) -> None:
        if self._retry_task is not None:
            self._retry_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retry_task
            self._retry_task = None

    @property
    def retry_interval_seconds(self) -> float:
        """How often deferred alerts are looked at: a tenth of the cooldown, 1 to 30 s."""
        return min(30.0, max(1.0, self.config.cooldown_seconds / 10))

    async def _retry_loop(self) -> None:
        while True:
            await asyncio.sleep(self.retry_interval_seconds)
            try:
                await self.retry_deferred()
            except Exception:  # a dead store must not end the loop; the next round tries again
                log.exception("cannot decide deferred scale actions")

    async def retry_deferred(self) -> list[dict[str, Any]]:
        """Decide again, oldest first, the alerts a cooldown deferred, once it has passed.

        Stops at the first decision that starts a new cooldown (the rest would only be deferred
        again). Returns the new decisions.
        """
        if not self.config.enabled:
            return []
        last = await self.store.run(self.store.last_action_at, COOLDOWN_OUTCOMES)
        if last is not None and time.time() - last < self.config.cooldown_seconds:
            return []
        decided: list[dict[str, Any]] = []
        for alert in await self.store.run(self.store.deferred_actions):
            decision = await self.handle(alert)
            if decision is None or decision["reason"] == "duplicate":
                continue  # another replica took it again first: its decision goes in the finding
            finding = await self.store.run(self.store.record_deferred_action, alert, decision)
            log.info(
                "deferred scale decision made",
                extra={"finding": finding, "alertname": alert.alertname, "outcome": decision["outcome"]},
            )
            decided.append(decision)
            if self.on_posted is not None:
                self.on_posted.set()
            if decision["outcome"] in COOLDOWN_OUTCOMES or (decision["outcome"], decision["reason"]) == DEFERRED:
                break
        return decided

    async def handle(self, alert: Alert) -> dict[str, Any] | None:
        """The decision for a firing alert (as stored in its finding), or None if it never leads to one."""
        kind = ALERT_ACTIONS.get(alert.alertname)
        if kind is None or alert.status != "firing":
            return None
        started = time.time()
        try:
            decision = await self._decide(alert, kind, started)
        except Exception as exc:  # a bug or a dead store must not take the worker down
            log.exception("scale decision failed", extra={"alertname": alert.alertname, "action": kind})
            decision = Decision.internal_error(kind, exc)
        decision.decided_at = decision.decided_at or iso(started)
        self._observe(decision)
        log.info(
            "scale decision",
            extra={
                "alertname": alert.alertname,
                "fingerprint": alert.fingerprint,
                "action": decision.action,
                "outcome": decision.outcome,
                "reason": decision.reason,
                "detail": decision.detail,
            },
        )
        return decision.as_dict()

    def _observe(self, decision: Decision) -> None:
        self.metrics.actions.labels(decision.action, decision.outcome).inc()
        if decision.reason:
            self.metrics.actions_not_taken.labels(decision.action, decision.reason).inc()
        if decision.outcome == "taken":
            self.metrics.last_action.labels(decision.action).set(time.time())

    async def _decide(self, alert: Alert, kind: ActionKind, started: float) -> Decision:
        if not self.config.enabled:
            return Decision(kind, "refused", "disabled", "actions are disabled (actions.enabled: false)")
        async with self._lock:
            earlier = await self.store.run(
                self.store.action_claim, alert.fingerprint, alert.starts_at, alert.alertname, kind
            )
            if earlier is not None:
                what = earlier["outcome"] + (f" ({earlier['reason']})" if earlier.get("reason") else "")
                if earlier["outcome"] == "pending":
                    what = "pending: interrupted by a restart, not retried"
                return Decision(
                    kind, "refused", "duplicate", f"this alert (fingerprint + startsAt) was already decided: {what}"
                )
            try:
                decision = await self._decide_claimed(alert, kind)
            except Exception as exc:
                log.exception("scale decision failed", extra={"alertname": alert.alertname, "action": kind})
                decision = Decision.internal_error(kind, exc)
            decision.spend_cap_dollars_per_hour = self.config.spend_cap_dollars_per_hour
            decision.dry_run = self.config.dry_run
            decision.decided_at = iso(started)
            try:
                await self.store.run(
                    self.store.action_record,
                    alert.fingerprint,
                    alert.starts_at,
                    decision.outcome,
                    decision.reason or "",
                    decision.as_dict(),
                )
            except Exception as exc:
                # The reservation stays `pending` (still one decision, still a cooldown); what was
                # done is reported in the finding and the log rather than lost in an exception.
                log.error("cannot record the scale decision", extra={"error": f"{type(exc).__name__}: {exc}"})
            return decision

    async def _decide_claimed(self, alert: Alert, kind: ActionKind) -> Decision:
        # Before the cooldown and the RunPod API: another partition's backlog is never ours,
        # whatever the timing or the pods (plan() asks again, being complete on its own).
        refused = partition_refusal(alert, self.config)
        if refused is not None:
            return Decision(kind, "refused", refused.reason, refused.detail)
        last = await self.store.run(
            self.store.last_action_at, COOLDOWN_OUTCOMES, exclude=(alert.fingerprint, alert.starts_at)
        )
        now = time.time()
        if last is not None and now - last < self.config.cooldown_seconds:
            return Decision(
                kind,
                "refused",
                "cooldown",
                f"last action {now - last:.0f}s ago; cooldown is {self.config.cooldown_seconds:g}s:"
                " deferred, decided again when it ends if the alert still fires",
            )
        try:
            pods = await asyncio.to_thread(self._pods)
        except Exception as exc:  # the SDK raises its own errors, requests' and ValueError
            return Decision(
                kind, "refused", "runpod_api", redact(f"RunPod API: {type(exc).__name__}: {exc}")[:_MAX_ERROR]
            )
        quote, quote_error = None, ""
        if kind == "scale_up" and self.config.worker_cost_dollars_per_hour is None:
            try:
                quote = await asyncio.to_thread(self._quote)
            except Exception as exc:  # no price is a refusal later (with this reason), never a crash
                quote_error = redact(f"{type(exc).__name__}: {exc}")[:300]
        result = plan(alert, pods, self.config, quote, quote_error)
        if isinstance(result, Refusal):
            return Decision(
                kind,
                "refused",
                result.reason,
                result.detail,
                workers_before=result.workers_before,
                spend_dollars_per_hour=result.spend_dollars_per_hour,
            )
        decision = Decision(
            kind,
            "dry_run" if self.config.dry_run else "taken",
            None,
            ("dry run: would " if self.config.dry_run else "") + result.detail(),
            workers_before=result.workers_before,
            workers_after=result.workers_after,
            add=result.add,
            remove=result.remove,
            spend_dollars_per_hour=result.spend_dollars_per_hour,
            added_dollars_per_hour=result.added_dollars_per_hour,
            worker_cost_dollars_per_hour=result.worker_cost_dollars_per_hour,
            worker_cost_basis=result.worker_cost_basis or None,
        )
        if self.config.dry_run:
            return decision
        return await self._execute(decision, result)

    def _api_key(self) -> str:
        key = self.config.api_key or os.environ.get("RUNPOD_API_KEY", "")
        if not key:
            raise ValueError("no API key: set actions.api_key_file or RUNPOD_API_KEY")
        return key

    def _pods(self) -> list[Pod]:
        # The exporter's SDK call and parsing: MalformedResponse (a ValueError) on a bad answer.
        raw = default_fetch(self._api_key())()
        if raw is None:  # the exporter reads "no pods"; a scaler must not plan on a missing list
            raise MalformedResponse("unexpected answer to myself{pods}: NoneType")
        return parse_pods(raw, name_prefix="")

    def _quote(self) -> Quote:
        gpu_types, count, cloud = worker_spec(self.ansible_dir, self.config.extra_vars)
        return quote_worker(self._api_key(), gpu_types, count, cloud)

    def playbook_vars(self, planned: Plan) -> dict[str, Any]:
        extra: dict[str, Any] = {
            **self.config.extra_vars,
            "runpod_name_prefix": self.config.name_prefix,
            "scale_drain_timeout": int(self.config.drain_timeout_seconds),
        }
        if planned.action == "scale_up":
            extra["workers"] = planned.workers_after
        else:
            extra["remove"] = list(planned.remove)
        return extra

    async def _execute(self, decision: Decision, planned: Plan) -> Decision:
        output = io.StringIO()
        progress = Progress(stream=output, live=False)
        started = time.monotonic()
        env = {"RUNPOD_API_KEY": self.config.api_key} if self.config.api_key else None
        try:
            rc, _rows, status = await asyncio.to_thread(
                run_playbook,
                ansible_dir=self.ansible_dir,
                playbook=self.config.playbook,
                inventory=Path(self.inventory),
                limit=None,
                tags=None,
                skip_tags=None,
                check=False,
                diff=False,
                extra_vars=self.playbook_vars(planned),
                verbosity=0,
                event_handler=progress,
                timeout=self.config.playbook_timeout_seconds,
                envvars=env,
            )
        except Exception as exc:  # ansible-runner missing or broken: degrade, never crash
            rc, status = -1, f"error: {type(exc).__name__}: {exc}"
        seconds = round(time.monotonic() - started, 3)
        failures = [line for line in output.getvalue().splitlines() if line.startswith(("FAILED", "UNREACHABLE"))]
        error = redact("\n".join(failures))[-_MAX_ERROR:] or None
        decision.playbook = {
            "name": self.config.playbook,
            "rc": rc,
            "status": status,
            "seconds": seconds,
            "error": error,
        }
        if rc == 0 and status == "successful":
            return decision
        if BUSY_MARKER in (error or ""):
            decision.outcome, decision.reason = "refused", "busy_node"
            decision.detail = (
                f"not terminated: the Slurm node of {', '.join(planned.remove)} still runs jobs"
                f" after {self.config.drain_timeout_seconds:g}s (left drained; resume it with"
                " `scontrol update nodename=NODE state=resume` if it should stay)"
            )
            return decision
        decision.outcome, decision.reason = "failed", "playbook_failed"
        why = "timed out" if status == "timeout" else f"{status}, rc {rc}"
        decision.detail = f"{self.config.playbook} {why} after {seconds:.0f}s while trying to {planned.detail()}"
        return decision


CLOUD_TYPES = ("SECURE", "COMMUNITY", "ALL")


def worker_spec(ansible_dir: Path, extra_vars: Mapping[str, Any]) -> tuple[list[str], int, str]:
    """What scale-pods.yml asks RunPod for per worker: (GPU types, wanted first then the
    fallbacks; GPUs per pod; cloud type).

    Read from the playbook's own vars file (``vars/runpod.yml``) with ``actions.extra_vars``
    over it, as Ansible merges them (extra vars win; inventory variables cannot override a
    play's vars_files). ValueError says what is missing or not a plain value.
    """
    values: dict[str, Any] = {}
    path = ansible_dir / "vars" / "runpod.yml"
    if path.is_file():
        loaded = yaml.safe_load(path.read_text())
        if isinstance(loaded, dict):
            values.update(loaded)
    values.update(extra_vars)

    def plain(name: str) -> Any:
        value = values.get(name)
        if value is None or value == "":
            raise ValueError(f"{name} is not set (in {path} or actions.extra_vars)")
        if isinstance(value, str) and "{{" in value:
            raise ValueError(f"{name} is a template ({value!r}): set a plain value in actions.extra_vars")
        return value

    gpu_type = plain("runpod_worker_gpu_type")
    fallbacks = values.get("runpod_gpu_type_fallbacks") or []
    if not isinstance(gpu_type, str) or not isinstance(fallbacks, list | tuple):
        raise ValueError("runpod_worker_gpu_type must be a GPU type id, runpod_gpu_type_fallbacks a list of them")
    types = [gpu_type, *(str(t) for t in fallbacks if str(t) and str(t) != gpu_type)]
    try:
        count = int(plain("runpod_worker_gpu_count"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"runpod_worker_gpu_count: {exc}") from None
    if count < 1:
        raise ValueError(f"runpod_worker_gpu_count must be >= 1, got {count}")
    cloud = str(values.get("runpod_cloud_type") or "ALL").upper()
    if cloud not in CLOUD_TYPES:
        raise ValueError(f"runpod_cloud_type must be one of {', '.join(CLOUD_TYPES)}, got {cloud!r}")
    return types, count, cloud


def _per_gpu_price(gpu: Mapping[str, Any], cloud: str) -> float | None:
    """RunPod's on-demand price per GPU-hour in `cloud`; ALL may land in either: the dearer."""
    keys = {"SECURE": ["securePrice"], "COMMUNITY": ["communityPrice"], "ALL": ["securePrice", "communityPrice"]}
    prices = []
    for key in keys[cloud]:
        value = gpu.get(key)
        # A type not offered in a cloud is listed with a null or zero price there.
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            prices.append(float(value))
    return max(prices) if prices else None


def quote_worker(api_key: str, gpu_types: Sequence[str], count: int, cloud: str) -> Quote:
    """RunPod's price for one worker pod (the real SDK's ``get_gpu``, i.e. ``gpuTypes``).

    With fallback types the dearest counts: the spend cap must hold whichever type the
    playbook ends up with. Any type without a price raises (ValueError, or the SDK's error).
    """
    import runpod

    priced: list[tuple[float, str]] = []
    for gpu_id in gpu_types:
        gpu = runpod.get_gpu(gpu_id, count, api_key=api_key)
        per_gpu = _per_gpu_price(gpu if isinstance(gpu, Mapping) else {}, cloud)
        if per_gpu is None:
            raise ValueError(f"RunPod lists no {cloud} price for {gpu_id}")
        priced.append((per_gpu, gpu_id))
    per_gpu, gpu_id = max(priced)
    which = " (the dearest of the type and its fallbacks)" if len(priced) > 1 else ""
    return Quote(round(per_gpu * count, 6), f"RunPod {cloud} price of {count} x {gpu_id}{which}")
