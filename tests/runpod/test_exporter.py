"""The real `runpod-exporter` process against the fake RunPod API, through the real `runpod` SDK.

Covers the metrics, the spend counter, and every way the API can fail (HTTP 500, 429 with a
GraphQL body or a gateway's text page, garbage, a wrong key, nothing listening): each one
degrades to `runpod_api_up 0` with the last good pods still served, and the key never shows.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import time
from collections.abc import Callable

import pytest
import runpod

from tests.fakes.runpod_api import DEFAULT_API_KEY, FakeRunPod
from tests.harness.processes import ManagedProcess, ProcessManager, free_port, http_get, wait_until
from tests.runpod.exporter import EXPORTER, start_runpod_exporter
from tests.slurm.metrics import scrape, series, value

L4 = "NVIDIA L4"
RTX4090 = "NVIDIA GeForce RTX 4090"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
Start = Callable[..., tuple[ManagedProcess, str]]


@pytest.fixture
def runpod_exporter(procs: ProcessManager, fake_runpod: FakeRunPod) -> Start:
    """`runpod_exporter(*args, key=..., url=...)` starts the real exporter; returns (process, base URL)."""

    def start(*args: str, key: str = DEFAULT_API_KEY, url: str | None = None) -> tuple[ManagedProcess, str]:
        return start_runpod_exporter(procs, url or fake_runpod.url, *args, key=key)

    return start


def wait_samples(url: str, predicate: Callable[[Samples], bool], what: str, timeout: float = 60) -> Samples:
    found: list[Samples] = []

    def probe() -> bool:
        samples, _ = scrape(url)
        if predicate(samples):
            found.append(samples)
            return True
        return False

    wait_until(probe, timeout, interval=0.2, what=what)
    return found[0]


def errors(samples: Samples, reason: str) -> float:
    return value(samples, "runpod_exporter_api_errors_total", reason=reason) or 0.0


def test_pod_metrics_roles_prefix_and_promtool(sdk: FakeRunPod, runpod_exporter: Start) -> None:
    sdk.control({"start_delay": 0})
    head_env = {"WATCHDOG_ROLE": "head", "WATCHDOG_NODE_NAME": "head-node"}
    head = runpod.create_pod("gw-head", "img:1", L4, env=head_env)["id"]
    worker = runpod.create_pod("gw-worker-1", "img:2", RTX4090, gpu_count=2)["id"]  # role from the name
    other = runpod.create_pod("other-box", "img:3", L4)["id"]
    sdk.control({"start_delay": 3600})
    starting = runpod.create_pod("gw-worker-2", "img:2", L4)["id"]  # CREATED for an hour
    runpod.stop_pod(other)

    _, url = runpod_exporter("--interval", "1")
    samples = wait_samples(url, lambda s: value(s, "runpod_api_up") == 1, "a successful poll")
    info = {s["pod_id"]: s for s in series(samples, "runpod_pod_info")}
    assert info[head] == {
        "pod_id": head,
        "name": "gw-head",
        "gpu_type": "L4",
        "image": "img:1",
        "role": "head",
        "node": "head-node",
    }
    assert info[worker]["role"] == "worker" and info[worker]["gpu_type"] == "RTX 4090"
    assert info[worker]["node"] == "gw-worker-1"  # no WATCHDOG_NODE_NAME: the pod name
    assert info[other]["role"] == ""
    assert value(samples, "runpod_pod_status", pod_id=head, status="RUNNING") == 1
    assert value(samples, "runpod_pod_status", pod_id=starting, status="CREATED") == 1
    assert value(samples, "runpod_pod_status", pod_id=other, status="EXITED") == 1
    # A state set: every known status present, exactly one at 1.
    head_states = {
        labels["status"]: value(samples, "runpod_pod_status", **labels)
        for labels in series(samples, "runpod_pod_status")
        if labels["pod_id"] == head
    }
    assert len(head_states) == 7 and sum(v or 0 for v in head_states.values()) == 1
    assert value(samples, "runpod_pod_cost_per_hour_dollars", pod_id=worker) == pytest.approx(0.68)
    assert value(samples, "runpod_pod_gpus", pod_id=worker) == 2
    assert value(samples, "runpod_pod_uptime_seconds", pod_id=starting) == 0
    assert value(samples, "runpod_exporter_pods") == 4
    assert value(samples, "runpod_exporter_api_last_success_timestamp_seconds") == pytest.approx(time.time(), abs=120)

    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: install the Debian package prometheus"
    _status, body = http_get(f"{url}/metrics")
    check = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()

    # --name-prefix keeps only matching pods.
    assert value(samples, "runpod_budget_dollars_per_hour") is None  # unset: the rules' default
    _, prefixed = runpod_exporter("--interval", "60", "--name-prefix", "gw-", "--budget-dollars-per-hour", "12.5")
    samples, _ = scrape(prefixed)
    assert value(samples, "runpod_budget_dollars_per_hour") == 12.5
    assert {s["name"] for s in series(samples, "runpod_pod_info")} == {"gw-head", "gw-worker-1", "gw-worker-2"}


@pytest.mark.slow
def test_spend_counter_integrates_running_pods(sdk: FakeRunPod, runpod_exporter: Start) -> None:
    sdk.control({"start_delay": 0})
    first = runpod.create_pod("gw-head", "img", L4)["id"]  # 0.28 $/h
    runpod.create_pod("gw-worker-1", "img", RTX4090, gpu_count=2)  # 0.68 $/h
    _, url = runpod_exporter("--interval", "1")
    wait_samples(url, lambda s: (value(s, "runpod_spend_dollars_total") or 0) > 0, "spend to start counting")
    s1, _ = scrape(url)
    t1 = time.monotonic()
    time.sleep(8)  # measuring a rate over a span of time, not waiting for a condition
    s2, _ = scrape(url)
    t2 = time.monotonic()
    delta = (value(s2, "runpod_spend_dollars_total") or 0) - (value(s1, "runpod_spend_dollars_total") or 0)
    per_second = (0.28 + 0.68) / 3600
    # The counter moves at polls (once a second): between two scrapes it grows by the time
    # between the polls before them, off by up to one interval each (4 s allows for load).
    assert per_second * (t2 - t1 - 4) <= delta <= per_second * (t2 - t1 + 4)

    # A stopped pod stops adding.
    runpod.stop_pod(first)
    wait_samples(url, lambda s: value(s, "runpod_pod_status", pod_id=first, status="EXITED") == 1, "the stop")
    s3, _ = scrape(url)
    t3 = time.monotonic()
    time.sleep(4)
    s4, _ = scrape(url)
    t4 = time.monotonic()
    delta = (value(s4, "runpod_spend_dollars_total") or 0) - (value(s3, "runpod_spend_dollars_total") or 0)
    assert delta <= 0.68 / 3600 * (t4 - t3 + 3)


def _fault(
    fake: FakeRunPod, url: str, inject: dict[str, object], reason: str, before: Samples, pods: set[str]
) -> Samples:
    """Inject a persistent failure, check the degraded scrape, clear it, wait for recovery."""
    fake.control({"inject": {"op": "myself", "count": 1000, **inject}})
    samples = wait_samples(url, lambda s: errors(s, reason) > errors(before, reason), f"a {reason} error")
    assert value(samples, "runpod_api_up") == 0
    assert {s["pod_id"] for s in series(samples, "runpod_pod_info")} == pods  # last good data kept
    fake.control({"clear_inject": True})
    return wait_samples(url, lambda s: value(s, "runpod_api_up") == 1, f"recovery after {reason}")


@pytest.mark.slow
def test_api_failures_degrade_and_recover_and_the_key_never_shows(sdk: FakeRunPod, runpod_exporter: Start) -> None:
    sdk.control({"start_delay": 0})
    pods = {runpod.create_pod("gw-head", "img", L4)["id"]}
    proc, url = runpod_exporter("--interval", "1", "--max-backoff", "2")
    samples = wait_samples(url, lambda s: value(s, "runpod_api_up") == 1, "a first good poll")
    for name in ("auth", "rate_limited", "timeout", "connection", "malformed", "api_error", "other"):
        assert errors(samples, name) == 0

    samples = _fault(sdk, url, {"status": 500, "message": "Internal server error"}, "api_error", samples, pods)
    samples = _fault(sdk, url, {"status": 502, "raw": "<html>502 Bad Gateway</html>"}, "api_error", samples, pods)
    samples = _fault(sdk, url, {"status": 200, "raw": "{not json"}, "malformed", samples, pods)
    samples = _fault(sdk, url, {"status": 429, "message": "rate limited"}, "rate_limited", samples, pods)
    samples = _fault(sdk, url, {"status": 429, "raw": "Too Many Requests"}, "rate_limited", samples, pods)

    # A revoked key: 401.
    sdk.control({"api_keys": ["rpa_SOMEOTHERKEY000000000000"]})
    samples = wait_samples(url, lambda s: errors(s, "auth") > 0, "an auth error")
    assert value(samples, "runpod_api_up") == 0
    sdk.control({"api_keys": [DEFAULT_API_KEY]})
    wait_samples(url, lambda s: value(s, "runpod_api_up") == 1, "recovery after auth")

    _status, body = http_get(f"{url}/metrics")
    assert proc.alive()
    assert DEFAULT_API_KEY not in proc.log_tail(1_000_000)
    assert DEFAULT_API_KEY not in body.decode()
    assert "runpod api poll failed" in proc.log_tail(1_000_000)


@pytest.mark.slow
def test_rate_limit_backs_off(sdk: FakeRunPod, runpod_exporter: Start) -> None:
    sdk.control({"start_delay": 0})
    _, url = runpod_exporter("--interval", "1", "--max-backoff", "3")
    wait_samples(url, lambda s: value(s, "runpod_api_up") == 1, "a first good poll")
    sdk.control({"inject": {"op": "myself", "status": 429, "message": "rate limited", "count": 3}})
    wait_samples(url, lambda s: errors(s, "rate_limited") >= 3, "three rate-limited polls")
    wait_samples(url, lambda s: value(s, "runpod_api_up") == 1, "recovery")
    calls = [r for r in sdk.state()["requests"] if r["op"] == "myself"]
    first = next(i for i, r in enumerate(calls) if r.get("injected"))
    times = [r["t"] for r in calls[first : first + 4]]  # three failures, then the recovery
    assert [bool(r.get("injected")) for r in calls[first : first + 4]] == [True, True, True, False]
    # Without backoff the calls would come once a second; with it: 2 s, then 3 s (the cap), twice.
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert len(gaps) == 3 and all(gap >= 1.8 for gap in gaps), gaps


def test_api_unreachable_at_start_and_missing_key(procs: ProcessManager, runpod_exporter: Start) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    proc, url = runpod_exporter("--interval", "1", url=dead)
    samples = wait_samples(url, lambda s: errors(s, "connection") > 0, "a connection error")
    assert value(samples, "runpod_api_up") == 0
    assert series(samples, "runpod_pod_info") == []
    assert value(samples, "runpod_exporter_api_last_success_timestamp_seconds") is None
    assert proc.alive()

    env = {k: v for k, v in os.environ.items() if k != "RUNPOD_API_KEY"}
    result = subprocess.run(
        [EXPORTER, "--listen", f"127.0.0.1:{free_port()}"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "RUNPOD_API_KEY" in result.stderr and "Traceback" not in result.stderr
