"""RunPodSource's logic with a scripted API answer and a controlled clock: spend, backoff, errors.

The process tests (test_exporter.py) show the same behaviour end to end; here the time steps
are exact (hours, not seconds), so the spend arithmetic can be checked to the cent.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
from runpod import error as runpod_error

from exporters.runpod.source import RunPodSource, classify, parse_pods, role_of


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Script:
    """fetch(): the next scripted answer (a pod list, or an exception to raise)."""

    def __init__(self) -> None:
        self.answers: list[Any] = []
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer


def pod(pod_id: str, status: str = "RUNNING", cost: float = 1.0, uptime: float = 0.0, **extra: Any) -> dict[str, Any]:
    return {
        "id": pod_id,
        "name": f"gw-{pod_id}",
        "desiredStatus": status,
        "costPerHr": cost,
        "gpuCount": 1,
        "uptimeSeconds": uptime,
        **extra,
    }


def poll(source: RunPodSource) -> None:
    source.get()
    source.end_cycle()


def test_spend_counts_observed_running_time_only() -> None:
    clock, script = Clock(), Script()
    source = RunPodSource(script, interval=60, clock=clock)
    script.answers = [
        [pod("a", cost=2.0, uptime=50_000)],  # baseline: time before the exporter is not counted
        [pod("a", cost=2.0), pod("b", cost=1.0, uptime=1800)],  # b started 30 min ago
        [pod("a", status="EXITED", cost=2.0), pod("b", cost=1.0)],  # a stopped: its last hour is dropped
        [pod("b", status="EXITED", cost=1.0), pod("c", cost=0.0)],  # free pods add nothing
    ]
    poll(source)
    assert source.state.spend_dollars == 0
    clock.now += 3600
    poll(source)
    assert source.state.spend_dollars == pytest.approx(2.0 + 0.5)
    clock.now += 3600
    poll(source)
    assert source.state.spend_dollars == pytest.approx(2.5 + 1.0)
    clock.now += 3600
    poll(source)
    assert source.state.spend_dollars == pytest.approx(3.5)


def test_failures_keep_data_back_off_and_recover() -> None:
    clock, script = Clock(), Script()
    source = RunPodSource(script, interval=60, max_backoff=300, clock=clock)
    script.answers = [[pod("a")], runpod_error.QueryError("Internal error")]
    poll(source)
    assert source.state.fresh and [p.id for p in source.state.pods] == ["a"]
    clock.now += 60
    poll(source)
    state = source.state
    assert not state.fresh and state.polled and [p.id for p in state.pods] == ["a"]
    assert state.errors["api_error"] == 1 and source.backoff_remaining() == 60

    # Backing off: no call at all, data still served, not counted as another error.
    clock.now += 30
    poll(source)
    assert script.calls == 2 and not source.state.polled and source.state.errors["api_error"] == 1

    # Rate limits start at two intervals and double up to the cap.
    delays = []
    for _ in range(4):
        clock.now = source.state.next_attempt
        script.answers.append(runpod_error.QueryError("Too many requests, rate limited"))
        poll(source)
        delays.append(source.backoff_remaining())
    assert delays == [240, 300, 300, 300]  # 2nd..5th consecutive failure: 60*2^2, capped
    assert source.state.errors["rate_limited"] == 4

    clock.now = source.state.next_attempt
    script.answers.append([pod("a"), pod("b")])
    poll(source)
    assert source.state.fresh and source.state.consecutive_failures == 0 and source.backoff_remaining() == 0
    # The spend over the outage: both ends RUNNING for a, so the whole gap counts.
    assert source.state.spend_dollars == pytest.approx((source.clock() - 1000.0) / 3600)


def test_malformed_answers_are_errors_not_crashes() -> None:
    clock, script = Clock(), Script()
    source = RunPodSource(script, interval=60, clock=clock)
    for answer in ({"pods": []}, [{"name": "no id"}], ["text"]):
        clock.now = source.state.next_attempt
        script.answers.append(answer)
        poll(source)
    assert source.state.errors["malformed"] == 3
    # Odd field values are tolerated: missing cost is 0, the status is upper-cased.
    pods = parse_pods([pod("x", status="running", cost=None, gpuCount="2", machine=None)], "")
    assert (pods[0].status, pods[0].cost_per_hr, pods[0].gpus, pods[0].gpu_type) == ("RUNNING", 0.0, 2, "")
    # A pod listed twice is served once; --name-prefix filters.
    assert [p.id for p in parse_pods([pod("a"), pod("a"), pod("b")], "")] == ["a", "b"]
    assert parse_pods([pod("a", name="other")], "gw-") == []


def _json_error(body: str) -> requests.exceptions.JSONDecodeError:
    try:
        json.loads(body)
    except json.JSONDecodeError as exc:
        return requests.exceptions.JSONDecodeError(exc.msg, exc.doc, exc.pos)
    raise AssertionError("valid JSON")


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (runpod_error.AuthenticationError("Unauthorized request"), "auth"),
        (runpod_error.QueryError("rate limit exceeded"), "rate_limited"),
        (runpod_error.QueryError("Something went wrong"), "api_error"),
        (_json_error("429 Too Many Requests"), "rate_limited"),
        (_json_error("<html>503 Service Unavailable</html>"), "api_error"),
        (_json_error("{garbage"), "malformed"),
        (requests.exceptions.ReadTimeout("read timed out"), "timeout"),
        (requests.exceptions.ConnectionError("refused"), "connection"),
        (RuntimeError("?"), "other"),
    ],
)
def test_classify(exc: BaseException, reason: str) -> None:
    assert classify(exc) == reason


def test_role_from_env_then_name() -> None:
    assert role_of("gw-worker-3", {"WATCHDOG_ROLE": "head"}) == "head"
    assert role_of("gw-head", {}) == "head"
    assert role_of("prod-gw-worker-12", {}) == "worker"
    assert role_of("gw-worker-x", {}) == ""
