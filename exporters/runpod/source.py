"""One RunPod API poll per cycle, with error classification, backoff and the spend integral.

Every collector reads the same :class:`PollState`: the first one to ask in a cycle makes the
SDK call (`runpod.get_pods`), the rest get the same answer. A failed poll keeps the last good
pod list (served as before, with `runpod_api_up 0` and an aging last-success timestamp), and
schedules the next attempt further out (exponential backoff) so a rate-limited or broken API
is not hammered once per interval.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests
from runpod import error as runpod_error

log = logging.getLogger(__name__)

# RunPod's PodStatus enum (desiredStatus): runpod_pod_status has one series per value.
KNOWN_STATUSES = ("CREATED", "RUNNING", "RESTARTING", "EXITED", "PAUSED", "DEAD", "TERMINATED")
# Why a poll failed: runpod_exporter_api_errors_total{reason}, all pre-created at 0.
ERROR_REASONS = ("auth", "rate_limited", "timeout", "connection", "malformed", "api_error", "other")
# The SDK hides the HTTP status of a GraphQL error reply: a rate limit shows only in its text.
_RATE_LIMIT = re.compile(r"(?i)rate.?limit|too many requests|\b429\b|throttl")
_GATEWAY_ERROR = re.compile(r"(?i)\b5\d\d\b|bad gateway|service unavailable|internal server error|gateway time")
_HEAD = re.compile(r"-head$")
_WORKER = re.compile(r"-worker-\d+$")

Fetch = Callable[[], Any]


class MalformedResponse(ValueError):
    """The API answered, but not with a list of pods."""


@dataclass(frozen=True)
class Pod:
    id: str
    name: str
    status: str
    cost_per_hr: float
    gpus: int
    gpu_type: str
    image: str
    role: str
    node: str  # the pod's Slurm node name: the join key with GPU and Slurm series
    uptime_seconds: float


@dataclass
class PollState:
    pods: list[Pod] = field(default_factory=list)  # last good pod list
    fresh: bool = False  # pods came from this cycle's poll
    polled: bool = False  # this cycle made an API call (False while backing off)
    last_success: float | None = None  # unix time
    last_duration: float = 0.0
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(ERROR_REASONS, 0))
    error: str = ""
    consecutive_failures: int = 0
    next_attempt: float = 0.0  # monotonic time before which no call is made
    spend_dollars: float = 0.0


def classify(exc: BaseException) -> str:
    """The `reason` label of a failed poll."""
    if isinstance(exc, runpod_error.AuthenticationError):
        return "auth"
    if isinstance(exc, runpod_error.QueryError):
        return "rate_limited" if _RATE_LIMIT.search(str(exc)) else "api_error"
    # Before RequestException: requests' JSONDecodeError is both a RequestException and a ValueError.
    if isinstance(exc, json.JSONDecodeError):
        # A non-JSON body: a gateway's "429 Too Many Requests" / "502 Bad Gateway" page, or garbage.
        if _RATE_LIMIT.search(exc.doc[:500]):
            return "rate_limited"
        return "api_error" if _GATEWAY_ERROR.search(exc.doc[:500]) else "malformed"
    if isinstance(exc, (MalformedResponse, KeyError, TypeError)):
        return "malformed"
    if isinstance(exc, requests.Timeout):
        return "timeout"
    if isinstance(exc, requests.ConnectionError):
        return "connection"
    if isinstance(exc, ValueError):
        return "malformed"
    return "other"


def role_of(name: str, env: dict[str, str]) -> str:
    """head/worker from the pod's WATCHDOG_ROLE (set by the playbooks), else from its name."""
    role = env.get("WATCHDOG_ROLE", "")
    if role:
        return role
    if _HEAD.search(name):
        return "head"
    if _WORKER.search(name):
        return "worker"
    return ""


def _number(value: Any) -> float:
    try:
        return float(value) if value is not None else 0.0
    except (TypeError, ValueError):
        return 0.0


def parse_pods(raw: Any, name_prefix: str) -> list[Pod]:
    """The SDK's pod dicts -> :class:`Pod`; anything that is not a list of pods is malformed."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise MalformedResponse(f"expected a list of pods, got {type(raw).__name__}")
    pods = []
    seen: set[str] = set()
    for item in raw:
        if not isinstance(item, dict) or not item.get("id"):
            raise MalformedResponse(f"pod entry without an id: {str(item)[:80]!r}")
        name = str(item.get("name") or "")
        # A pod listed twice would give duplicate series, which Prometheus rejects whole.
        if not name.startswith(name_prefix) or str(item["id"]) in seen:
            continue
        seen.add(str(item["id"]))
        env: dict[str, str] = {}
        for entry in item.get("env") or []:
            key, sep, value = str(entry).partition("=")
            if sep:
                env[key] = value
        pods.append(
            Pod(
                id=str(item["id"]),
                name=name,
                status=str(item.get("desiredStatus") or "UNKNOWN").upper(),
                cost_per_hr=_number(item.get("costPerHr")),
                gpus=int(_number(item.get("gpuCount"))),
                gpu_type=str((item.get("machine") or {}).get("gpuDisplayName") or ""),
                image=str(item.get("imageName") or ""),
                role=role_of(name, env),
                # The playbooks set WATCHDOG_NODE_NAME (the pod image's Slurm NodeName) to the
                # pod name; a pod started by hand may name its node otherwise.
                node=env.get("WATCHDOG_NODE_NAME") or name,
                uptime_seconds=_number(item.get("uptimeSeconds")),
            )
        )
    return pods


def default_fetch(api_key: str) -> Fetch:
    """The real SDK call; the key is passed per call, so it is never the SDK's global."""
    import runpod

    def fetch() -> Any:
        return runpod.get_pods(api_key=api_key)

    return fetch


class RunPodSource:
    """Polls at most once per cycle; collectors call :meth:`get`, the exporter collector :meth:`end_cycle`."""

    def __init__(
        self,
        fetch: Fetch,
        *,
        interval: float,
        name_prefix: str = "",
        max_backoff: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.fetch = fetch
        self.interval = interval
        self.name_prefix = name_prefix
        self.max_backoff = max(max_backoff, interval)
        self.clock = clock
        self.state = PollState()
        self._lock = threading.Lock()
        self._ran = False
        # Spend integration: the last successful poll's time and the pods RUNNING then.
        self._last_poll_at: float | None = None
        self._running_before: set[str] = set()

    def end_cycle(self) -> None:
        with self._lock:
            self._ran = False

    def get(self) -> PollState:
        with self._lock:
            if not self._ran:
                self._ran = True
                self._poll()
            return self.state

    def backoff_remaining(self) -> float:
        return max(0.0, self.state.next_attempt - self.clock())

    def _poll(self) -> None:
        state = self.state
        now = self.clock()
        state.fresh = False
        state.polled = False
        if now < state.next_attempt:
            return  # backing off: keep the last good data and the failure state
        state.polled = True
        started = time.perf_counter()
        try:
            pods = parse_pods(self.fetch(), self.name_prefix)
        except Exception as exc:  # any failure degrades to runpod_api_up 0, never a crash
            self._failed(exc, now)
        else:
            if state.error:
                log.info("runpod api recovered", extra={"after_failures": state.consecutive_failures})
            self._integrate_spend(pods, now)
            state.pods, state.fresh, state.error = pods, True, ""
            state.consecutive_failures = 0
            state.next_attempt = 0.0
            state.last_success = time.time()
        finally:
            state.last_duration = time.perf_counter() - started

    def _failed(self, exc: BaseException, now: float) -> None:
        state = self.state
        reason = classify(exc)
        state.errors[reason] += 1
        state.consecutive_failures += 1
        # 1, 2, 4, ... intervals skipped; rate limits start at 2 (the API asked us to slow down).
        exponent = state.consecutive_failures - (0 if reason == "rate_limited" else 1)
        delay = min(self.max_backoff, self.interval * 2.0**exponent)
        state.next_attempt = now + delay
        # The SDK's messages name the URL and the GraphQL error, never the key; redact() in
        # the log formatter removes key-shaped strings anyway.
        message = f"{type(exc).__name__}: {exc}"[:300]
        if message != state.error:
            log.warning("runpod api poll failed", extra={"reason": reason, "error": message, "retry_in_s": delay})
        state.error = message

    def _integrate_spend(self, pods: list[Pod], now: float) -> None:
        """Add the cost of pod-time observed RUNNING since the previous successful poll.

        A pod RUNNING now and at the previous poll ran (and billed) all along: cost × elapsed.
        A pod RUNNING now but not before counts only the part of the interval it has been up
        (its uptime), so a pod created between polls is not billed for time before it existed.
        A pod that stopped or vanished between polls loses its last partial interval: the
        counter errs low, never high. The first poll after start-up only sets the baseline.
        """
        running = {p.id for p in pods if p.status == "RUNNING"}
        if self._last_poll_at is not None:
            elapsed = max(0.0, now - self._last_poll_at)
            for pod in pods:
                if pod.id not in running or pod.cost_per_hr <= 0:
                    continue
                seconds = elapsed if pod.id in self._running_before else min(elapsed, pod.uptime_seconds)
                self.state.spend_dollars += pod.cost_per_hr * seconds / 3600.0
        self._last_poll_at = now
        self._running_before = running
