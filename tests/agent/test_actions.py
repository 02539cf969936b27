"""Scale actions without RunPod or Slurm: the policy, the `actions` config, the decision store, wiring.

The end-to-end runs (fake RunPod API, real slurmctld, the playbook) are in
tests/runpod/test_agent_actions.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_webhook.actions import Plan, Quote, Refusal, plan
from agent_webhook.actions.engine import quote_worker, worker_spec
from agent_webhook.actions.policy import spend_per_hour
from agent_webhook.config import ActionsConfig, AgentConfig, ConfigError, build_config
from agent_webhook.model import Alert
from agent_webhook.sinks.render import full_text
from agent_webhook.store import Store
from exporters.runpod.source import Pod, parse_pods
from tests.agent.conftest import ServiceThread, get_json, make_alert, make_payload, post_alerts
from tests.fakes.runpod_api import DEFAULT_API_KEY, FakeRunPod

ANSIBLE_DIR = Path(__file__).resolve().parents[2] / "ansible"


@pytest.fixture
def sdk_fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRunPod]:
    """The fake RunPod API, the real SDK pointed at it through its environment variable."""
    server = FakeRunPod(start_delay=0).start()
    monkeypatch.setenv("RUNPOD_API_BASE_URL", server.url)
    try:
        yield server
    finally:
        server.stop()


def pod(name: str, cost: float = 0.5, status: str = "RUNNING", pod_id: str | None = None) -> Pod:
    """A pod as the SDK lists it, parsed as the engine parses it."""
    raw = {"id": pod_id or f"id-{name}", "name": name, "costPerHr": cost, "desiredStatus": status}
    (parsed,) = parse_pods([raw], "")
    return parsed


def alert(alertname: str, **labels: str) -> Alert:
    return Alert(
        fingerprint="fp",
        status="firing",
        labels={"alertname": alertname, **labels},
        annotations={},
        starts_at="2026-11-23T10:00:00Z",
        ends_at=None,
    )


BACKLOG = alert("SlurmGPUQueueBacklog", partition="gpu")


def cfg(**keys: Any) -> ActionsConfig:
    base: dict[str, Any] = {"enabled": True, "spend_cap_dollars_per_hour": 10.0, "name_prefix": "t"}
    return build_config({"actions": base | keys}, Path.cwd()).actions


# -- policy: scale-up --------------------------------------------------------------------


def test_scale_up_adds_one_step_with_the_next_free_names() -> None:
    pods = [pod("t-head"), pod("t-worker-1"), pod("t-worker-3")]
    result = plan(BACKLOG, pods, cfg(scale_up_step=2, max_workers=6))
    assert isinstance(result, Plan)
    assert (result.workers_before, result.workers_after) == (2, 4)
    assert result.add == ["t-worker-2", "t-worker-4"]
    assert result.spend_dollars_per_hour == 1.5 and result.added_dollars_per_hour == 1.0


def test_scale_up_is_clamped_to_max_and_raised_to_min() -> None:
    result = plan(BACKLOG, [pod("t-worker-1")], cfg(scale_up_step=5, max_workers=3))
    assert isinstance(result, Plan) and result.workers_after == 3
    result = plan(BACKLOG, [pod("t-worker-1")], cfg(scale_up_step=1, min_workers=3, max_workers=4))
    assert isinstance(result, Plan) and result.workers_after == 3


def test_scale_up_refused_at_max_workers() -> None:
    result = plan(BACKLOG, [pod("t-worker-1"), pod("t-worker-2")], cfg(max_workers=2))
    assert isinstance(result, Refusal) and result.reason == "bounds"
    assert "max_workers is 2" in result.detail


def test_spend_cap_reduces_the_step_then_refuses() -> None:
    pods = [pod("t-head", 1.0), pod("t-worker-1", 1.0)]
    reduced = plan(BACKLOG, pods, cfg(scale_up_step=3, spend_cap_dollars_per_hour=4.5))
    assert isinstance(reduced, Plan) and reduced.workers_after == 3  # 2.0 + 2 x 1.0 <= 4.5 < 2.0 + 3 x 1.0
    assert "reduced from 3 to 2" in reduced.detail()
    refused = plan(BACKLOG, pods, cfg(spend_cap_dollars_per_hour=2.5))
    assert isinstance(refused, Refusal) and refused.reason == "spend_cap"
    assert "$2.00/h + $1.00/h" in refused.detail and "$2.50/h" in refused.detail


def test_spend_counts_only_running_pods_of_any_name() -> None:
    pods = [pod("t-worker-1", 1.0), pod("other", 2.0), pod("t-worker-2", 4.0, status="EXITED")]
    assert spend_per_hour(pods) == 3.0


def test_new_worker_cost_comes_from_config_or_existing_workers() -> None:
    no_worker = plan(BACKLOG, [pod("t-head", 1.0)], cfg())
    assert isinstance(no_worker, Refusal) and "cannot estimate" in no_worker.detail
    configured = plan(BACKLOG, [pod("t-head", 1.0)], cfg(worker_cost_dollars_per_hour=2.0))
    assert isinstance(configured, Plan) and configured.added_dollars_per_hour == 2.0
    assert configured.worker_cost_basis == "actions.worker_cost_dollars_per_hour"


def test_zero_workers_scale_up_on_the_runpod_quote_within_the_cap() -> None:
    quote = Quote(0.69, "RunPod SECURE price of 1 x NVIDIA GeForce RTX 4090")
    head_only = [pod("t-head", 0.28)]
    result = plan(BACKLOG, head_only, cfg(spend_cap_dollars_per_hour=1.0), quote)
    assert isinstance(result, Plan), result
    assert (result.workers_before, result.workers_after, result.add) == (0, 1, ["t-worker-1"])
    assert result.added_dollars_per_hour == 0.69 and result.worker_cost_basis == quote.basis
    over = plan(BACKLOG, head_only, cfg(spend_cap_dollars_per_hour=0.9), quote)
    assert isinstance(over, Refusal) and over.reason == "spend_cap", over
    assert "$0.28/h + $0.69/h" in over.detail and quote.basis in over.detail
    # The quote beats a running worker's price (the new pod is what the playbook asks for);
    # the configured cost beats both.
    with_worker = plan(BACKLOG, [*head_only, pod("t-worker-1", 0.34)], cfg(), quote)
    assert isinstance(with_worker, Plan) and with_worker.worker_cost_dollars_per_hour == 0.69
    configured = plan(BACKLOG, head_only, cfg(worker_cost_dollars_per_hour=0.5), quote)
    assert isinstance(configured, Plan) and configured.added_dollars_per_hour == 0.5


def test_zero_workers_without_any_price_is_refused_with_the_reason() -> None:
    result = plan(BACKLOG, [pod("t-head", 0.28)], cfg(), None, "ValueError: No GPU found with the specified ID")
    assert isinstance(result, Refusal) and result.reason == "spend_cap", result
    assert "cannot estimate a new worker's cost" in result.detail
    assert "(ValueError: No GPU found with the specified ID)" in result.detail
    assert "actions.worker_cost_dollars_per_hour" in result.detail


def test_worker_spec_reads_the_playbook_vars_with_extra_vars_over_them(tmp_path: Path) -> None:
    assert worker_spec(ANSIBLE_DIR, {}) == (["NVIDIA GeForce RTX 4090"], 1, "SECURE")  # vars/runpod.yml
    spec = worker_spec(
        ANSIBLE_DIR,
        {
            "runpod_worker_gpu_type": "NVIDIA H100 80GB HBM3",
            "runpod_worker_gpu_count": "2",
            "runpod_gpu_type_fallbacks": ["NVIDIA A100 80GB PCIe"],
            "runpod_cloud_type": "community",
        },
    )
    assert spec == (["NVIDIA H100 80GB HBM3", "NVIDIA A100 80GB PCIe"], 2, "COMMUNITY")
    for extra, words in [
        ({"runpod_worker_gpu_type": "{{ my_type }}"}, "is a template"),
        ({"runpod_worker_gpu_count": 0}, "must be >= 1"),
        ({"runpod_worker_gpu_count": "two"}, "runpod_worker_gpu_count"),
        ({"runpod_cloud_type": "MOON"}, "must be one of SECURE, COMMUNITY, ALL"),
    ]:
        with pytest.raises(ValueError, match=words):
            worker_spec(ANSIBLE_DIR, extra)
    with pytest.raises(ValueError, match="runpod_worker_gpu_type is not set"):
        worker_spec(tmp_path, {})  # no vars/runpod.yml there


def test_quote_is_the_cloud_price_times_gpus_and_the_dearest_fallback(sdk_fake: Any) -> None:
    key = DEFAULT_API_KEY
    secure = quote_worker(key, ["NVIDIA GeForce RTX 4090"], 2, "SECURE")
    assert (
        secure.dollars_per_hour == pytest.approx(1.38) and "SECURE price of 2 x NVIDIA GeForce RTX 4090" in secure.basis
    )
    assert quote_worker(key, ["NVIDIA GeForce RTX 4090"], 1, "COMMUNITY").dollars_per_hour == pytest.approx(0.34)
    assert quote_worker(key, ["NVIDIA GeForce RTX 4090"], 1, "ALL").dollars_per_hour == pytest.approx(0.69)
    fallback = quote_worker(key, ["NVIDIA L4", "NVIDIA A100 80GB PCIe"], 1, "SECURE")
    assert fallback.dollars_per_hour == pytest.approx(1.64) and "fallbacks" in fallback.basis
    with pytest.raises(ValueError, match="No GPU found"):
        quote_worker(key, ["NVIDIA B999"], 1, "SECURE")
    sdk_fake.gpu_types["NVIDIA L4"]["securePrice"] = None  # not offered in that cloud
    with pytest.raises(ValueError, match="no SECURE price for NVIDIA L4"):
        quote_worker(key, ["NVIDIA L4"], 1, "SECURE")


# -- policy: scale-down ------------------------------------------------------------------


def test_scale_down_removes_exactly_the_idle_pod() -> None:
    pods = [pod("t-head"), pod("t-worker-1"), pod("t-worker-2"), pod("t-worker-3")]
    result = plan(alert("RunPodPodIdle", pod_id="id-t-worker-1", name="t-worker-1"), pods, cfg(min_workers=1))
    assert isinstance(result, Plan) and result.remove == ["t-worker-1"] and result.workers_after == 2
    by_id = plan(alert("RunPodPodIdle", pod_id="id-t-worker-2"), pods, cfg())
    assert isinstance(by_id, Plan) and by_id.remove == ["t-worker-2"]


@pytest.mark.parametrize(
    ("labels", "reason", "words"),
    [
        ({}, "bad_alert", "neither"),
        ({"name": "t-head", "pod_id": "id-t-head"}, "bad_alert", "not a worker"),
        ({"name": "t-worker-9"}, "not_found", "already gone"),
        ({"name": "t-worker-2", "pod_id": "id-t-worker-1"}, "bad_alert", "the alert says"),
        ({"name": "t-worker-1"}, "bounds", "min_workers is 2"),
    ],
)
def test_scale_down_refusals(labels: dict[str, str], reason: str, words: str) -> None:
    pods = [pod("t-head"), pod("t-worker-1"), pod("t-worker-2")]
    result = plan(alert("RunPodPodIdle", **labels), pods, cfg(min_workers=2))
    assert isinstance(result, Refusal) and result.reason == reason, result
    assert words in result.detail


# -- policy: partitions --------------------------------------------------------------------


def test_any_partition_scales_up_when_partitions_is_empty() -> None:
    assert cfg().partitions == []
    result = plan(alert("SlurmGPUQueueBacklog", partition="cpu"), [pod("t-worker-1")], cfg())
    assert isinstance(result, Plan) and result.workers_after == 2


@pytest.mark.parametrize(
    ("labels", "reason", "words"),
    [
        ({"partition": "cpu"}, "other_partition", "partition 'cpu' is not served by the RunPod workers"),
        ({}, "bad_alert", "no `partition` label"),
        ({"partition": ""}, "bad_alert", "no `partition` label"),
    ],
)
def test_backlog_outside_the_partitions_is_refused(labels: dict[str, str], reason: str, words: str) -> None:
    config = cfg(partitions=["gpu", "runpod"])
    result = plan(alert("SlurmGPUQueueBacklog", **labels), [pod("t-worker-1")], config)
    assert isinstance(result, Refusal) and result.action == "scale_up" and result.reason == reason
    assert words in result.detail and "actions.partitions" in result.detail and "gpu, runpod" in result.detail


def test_listed_partition_scales_up_and_scale_down_ignores_partitions() -> None:
    config = cfg(partitions=["gpu", "runpod"])
    assert isinstance(plan(alert("SlurmGPUQueueBacklog", partition="runpod"), [pod("t-worker-1")], config), Plan)
    # RunPodPodIdle names a pod, not a partition: the list never stops a scale-down.
    down = plan(alert("RunPodPodIdle", name="t-worker-1"), [pod("t-worker-1")], config)
    assert isinstance(down, Plan) and down.remove == ["t-worker-1"]


def test_other_partition_is_refused_without_runpod_recorded_and_counted(tmp_path: Path) -> None:
    """No RunPod API key, no pods: the refusal needs neither, and is recorded and counted."""
    import asyncio

    from agent_webhook.actions import ActionEngine
    from agent_webhook.metrics import AgentMetrics

    metrics = AgentMetrics()

    async def decide() -> dict[str, Any] | None:
        store = Store(tmp_path / "agent.db")
        await store.run(store.open)
        try:
            engine = ActionEngine(cfg(partitions=["gpu"]), store, metrics)
            first = await engine.handle(alert("SlurmGPUQueueBacklog", partition="cpu"))
            assert first is not None and first["reason"] == "other_partition"
            # Recorded like any decision: the same alert again is a duplicate, not a second look.
            again = await engine.handle(alert("SlurmGPUQueueBacklog", partition="cpu"))
            assert again is not None and again["reason"] == "duplicate" and "other_partition" in again["detail"]
            return first
        finally:
            store.shutdown()

    decision = asyncio.run(decide())
    assert decision is not None and decision["outcome"] == "refused" and "'cpu'" in decision["detail"]
    counted = metrics.registry.get_sample_value(
        "agent_webhook_actions_not_taken_total", {"action": "scale_up", "reason": "other_partition"}
    )
    assert counted == 1.0


# -- config ------------------------------------------------------------------------------


def test_actions_are_off_and_dry_run_by_default() -> None:
    actions = build_config({}, Path.cwd()).actions
    assert actions.enabled is False and actions.dry_run is True
    assert actions.playbook == "scale.yml" and actions.spend_cap_dollars_per_hour is None


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"enable": True}, "actions: unknown key(s) enable"),
        ({"enabled": "yes"}, "actions.enabled: expected true or false"),
        ({"enabled": True}, "actions.spend_cap_dollars_per_hour: required when actions are enabled"),
        ({"min_workers": 3, "max_workers": 2}, "actions.min_workers (3) is above actions.max_workers (2)"),
        ({"max_workers": 0}, "actions.max_workers: must be at least 1"),
        ({"scale_up_step": 1.5}, "actions.scale_up_step: expected an integer"),
        ({"cooldown_seconds": -1}, "actions.cooldown_seconds: must be at least 0"),
        ({"spend_cap_dollars_per_hour": 0}, "actions.spend_cap_dollars_per_hour: must be above 0"),
        ({"name_prefix": "a b"}, "actions.name_prefix: expected a pod name prefix"),
        ({"playbook": "scale"}, "actions.playbook: expected a playbook file name"),
        ({"extra_vars": [1]}, "actions.extra_vars: expected a mapping"),
        ({"partitions": "gpu"}, "actions.partitions: expected a list of Slurm partition names"),
        ({"partitions": ["gpu", ""]}, "actions.partitions: expected a list of Slurm partition names"),
        ({"partitions": ["gpu", 3]}, "actions.partitions: expected a list of Slurm partition names"),
        ({"api_key_file": "/nonexistent/key"}, "actions.api_key_file: cannot read"),
        ("on", "actions: expected a mapping"),
    ],
)
def test_bad_actions_config_is_a_clear_error(section: Any, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_config({"actions": section}, Path.cwd())
    assert message in str(err.value)


def test_enabled_actions_need_the_playbook(tmp_path: Path) -> None:
    from agent_webhook.actions import ActionEngine
    from agent_webhook.metrics import AgentMetrics

    actions = cfg(dry_run=False, ansible_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"actions.playbook: no scale.yml in"):
        ActionEngine(actions, Store(tmp_path / "a.db"), AgentMetrics())
    # Dry-run never runs it: no playbook needed.
    ActionEngine(cfg(ansible_dir=str(tmp_path)), Store(tmp_path / "a.db"), AgentMetrics())


# -- the decision store -------------------------------------------------------------------


def test_one_decision_per_alert_survives_a_restart(store_target: str | Path) -> None:
    db = store_target
    store = Store(db)
    store.open()
    assert store.action_claim("fp", "2026-11-23T10:00:00Z", "SlurmGPUQueueBacklog", "scale_up") is None
    # The same startsAt written differently is the same alert.
    again = store.action_claim("fp", "2026-11-23T10:00:00.000Z", "SlurmGPUQueueBacklog", "scale_up")
    assert again is not None and again["outcome"] == "pending"
    assert store.last_action_at(["pending"]) is not None
    assert store.last_action_at(["pending"], exclude=("fp", "2026-11-23T10:00:00Z")) is None
    store.action_record("fp", "2026-11-23T10:00:00Z", "taken", "", {"detail": "x"})
    store.close()
    store = Store(db)
    store.open()
    earlier = store.action_claim("fp", "2026-11-23T10:00:00Z", "SlurmGPUQueueBacklog", "scale_up")
    assert earlier is not None and earlier["outcome"] == "taken" and earlier["decision"] == {"detail": "x"}
    assert store.last_action_at(["taken"]) is not None and store.last_action_at(["failed"]) is None
    store.close()


# -- through the real service, actions disabled --------------------------------------------


def test_disabled_actions_are_recorded_as_refused(
    agent_config: Callable[..., AgentConfig], start_service: Callable[..., ServiceThread]
) -> None:
    svc = start_service(agent_config())
    backlog = make_alert("bk", alertname="SlurmGPUQueueBacklog", node="", gpu="", partition="gpu")
    post_alerts(svc.url, make_payload([backlog, make_alert("xid")]))
    svc.wait_idle()
    by_name = {f["alertname"]: f for f in svc.findings()}
    action = by_name["SlurmGPUQueueBacklog"]["action"]
    assert action["action"] == "scale_up" and action["outcome"] == "refused" and action["reason"] == "disabled"
    assert by_name["GPUXidError"]["action"] is None
    text = full_text("new", by_name["SlurmGPUQueueBacklog"], None)
    assert "Action scale_up: refused [disabled]: actions are disabled" in text
    metrics = get_json(f"{svc.url}/metrics").body.decode()
    assert 'agent_webhook_actions_total{action="scale_up",outcome="refused"} 1.0' in metrics
    assert 'agent_webhook_actions_not_taken_total{action="scale_up",reason="disabled"} 1.0' in metrics


def test_an_interrupted_action_is_never_retried_and_starts_the_cooldown(store_target: str | Path) -> None:
    """kill -9 mid-playbook leaves a `pending` reservation: the re-run must not act again."""
    import asyncio

    from agent_webhook.actions import ActionEngine
    from agent_webhook.metrics import AgentMetrics

    db = store_target
    crashed = Store(db)
    crashed.open()
    assert crashed.action_claim(BACKLOG.fingerprint, BACKLOG.starts_at, BACKLOG.alertname, "scale_up") is None
    crashed.close()  # the process "dies" here, before recording how the action ended

    async def decide(*alerts: Alert) -> list[dict[str, Any] | None]:
        store = Store(db)
        await store.run(store.open)
        try:
            engine = ActionEngine(cfg(cooldown_seconds=600), store, AgentMetrics())
            return [await engine.handle(a) for a in alerts]
        finally:
            store.shutdown()

    other = Alert(
        fingerprint="fp2",
        status="firing",
        labels=dict(BACKLOG.labels),
        annotations={},
        starts_at="2026-11-23T10:30:00Z",
        ends_at=None,
    )
    rerun, newer = asyncio.run(decide(BACKLOG, other))
    assert rerun is not None and rerun["reason"] == "duplicate" and "interrupted" in rerun["detail"]
    assert newer is not None and newer["reason"] == "cooldown", newer
    assert newer["dry_run"] is True and newer["decided_at"]


def test_findings_cli_line_shows_the_decision() -> None:
    from agent_webhook.cli_findings import _line

    finding = {"id": "f-1", "alertname": "RunPodPodIdle", "status": "firing", "summary": "idle"}
    assert "\n" not in _line(finding | {"action": None})
    action = {"action": "scale_down", "outcome": "refused", "reason": "busy_node", "detail": "still runs jobs"}
    assert _line(finding | {"action": action}).endswith("\n    Action scale_down: refused [busy_node]: still runs jobs")
